"""The commands: ``prefopt-train`` (the Hydra app and its argv precheck), ``prefopt-label`` and
best-of-N at inference. Each is a thin shell over the run API (:mod:`prefopt.run`)."""
