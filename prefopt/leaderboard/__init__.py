"""The leaderboard: every registered method on the testbed against a gold reward, over seeds.

- :mod:`~prefopt.leaderboard.suite`: a suite (conf/leaderboard/NAME.yaml) as a typed, checked ``Suite``;
- :mod:`~prefopt.leaderboard.section`: board sections register here; the planner and the renderer call
  their hooks (the built-in ones: :mod:`~prefopt.leaderboard.sections`);
- :mod:`~prefopt.leaderboard.plan`: a suite as jobs, from every section; :mod:`~prefopt.leaderboard.jobs`:
  a job, its identity, the planner's list; :mod:`~prefopt.leaderboard.protocol`: the protocol's jobs;
- :mod:`~prefopt.leaderboard.job`: one job, the task function of each stage's Hydra multirun;
- :mod:`~prefopt.leaderboard.bon`: the best-of-n baseline;
- :mod:`~prefopt.leaderboard.store`: one atomic JSON result per result identity;
- :mod:`~prefopt.leaderboard.select`, :mod:`~prefopt.leaderboard.aggregate`, :mod:`~prefopt.leaderboard.stats`,
  :mod:`~prefopt.leaderboard.fits`, :mod:`~prefopt.leaderboard.checks`: selection on validation numbers,
  means over seeds with 95% bootstrap intervals, Gao et al.'s fits, the sanity checks;
- :mod:`~prefopt.leaderboard.board`: the board, built once from the store; :mod:`~prefopt.leaderboard.render`
  writes it as LEADERBOARD.md, the plots and index.html (:mod:`~prefopt.leaderboard.tables`,
  :mod:`~prefopt.leaderboard.plot`, :mod:`~prefopt.leaderboard.page`);
- :mod:`~prefopt.leaderboard.cli`: ``prefopt-leaderboard run|plan|render``.
"""
