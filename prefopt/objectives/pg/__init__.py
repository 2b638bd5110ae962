"""The policy-gradient axes that :mod:`prefopt.objectives.policy_gradient` composes: advantage
estimators, KL estimators and the adaptive KL controller, the value model (critic or value head), and
three registries of one-file kinds: the policy losses (:mod:`~prefopt.objectives.pg.losses`), the
sampler corrections (:mod:`~prefopt.objectives.pg.rollout_is`) and the entropy controls
(:mod:`~prefopt.objectives.pg.entropy_controls`)."""
