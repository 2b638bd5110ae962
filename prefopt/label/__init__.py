"""AI feedback: the preference rows made from a judge's verdicts (:mod:`prefopt.label.pairs`) that
``prefopt-label`` (:mod:`prefopt.cli.label`) writes. The judges themselves are reward machinery
(``reward=judge`` labels online too) and live in :mod:`prefopt.rollout.judges`."""
