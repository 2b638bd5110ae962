"""Online machinery: the sampler and its KV-cached decode loop, the per-completion scorers
(:mod:`~prefopt.rollout.scoring`), the reward-source and judge registries
(:mod:`~prefopt.rollout.rewards`, :mod:`~prefopt.rollout.judges`), the rollout source online
objectives train from, and the held-out evaluation that samples from the policy and its reference."""
