"""The commands: ``prefopt-train`` (the Hydra app and its argv precheck), the run's stages from
typed configs to outputs, resume checks, the summary, and best-of-N at inference."""
