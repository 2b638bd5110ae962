"""AI feedback: judges that compare two completions of one prompt (:mod:`prefopt.label.judges`,
:mod:`prefopt.label.llm_judge`), and the preference rows made from their verdicts
(:mod:`prefopt.label.pairs`) that ``prefopt-label`` (:mod:`prefopt.cli.label`) writes."""
