"""The leaderboard: every registered method on the testbed against a gold reward, over seeds.

- :mod:`~prefopt.leaderboard.plan`: the protocol as jobs, from the registry and a suite
  (conf/leaderboard/NAME.yaml);
- :mod:`~prefopt.leaderboard.job`: one job, the task function of each stage's Hydra multirun;
- :mod:`~prefopt.leaderboard.bon`: the best-of-n baseline;
- :mod:`~prefopt.leaderboard.store`: one atomic JSON result per config hash;
- :mod:`~prefopt.leaderboard.stats`: means over seeds with 95% percentile-bootstrap intervals;
- :mod:`~prefopt.leaderboard.render`: LEADERBOARD.md, frontier.png, index.html;
- :mod:`~prefopt.leaderboard.cli`: ``prefopt-leaderboard run|plan|render``.
"""
