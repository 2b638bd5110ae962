"""The policy-gradient axes that :mod:`prefopt.objectives.policy_gradient` composes: advantage
estimators, KL estimators and the adaptive KL controller, and the value model (critic or value head)."""
