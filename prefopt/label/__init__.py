"""AI feedback: judges that compare two completions of one prompt (:mod:`prefopt.label.judges`,
:mod:`prefopt.label.llm_judge`) and ``prefopt-label``, which samples completions from a policy and
writes the judge's verdicts as a TRL-format preference file (:mod:`prefopt.label.cli`)."""
