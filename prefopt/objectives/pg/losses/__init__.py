"""Policy-loss families (``algo.policy_loss``), one file each, registered in
:data:`~prefopt.objectives.pg.losses.base.POLICY_LOSSES`; importing this package registers them all."""

from prefopt.objectives.pg.losses.base import POLICY_LOSSES, PGTerms, PolicyLoss, log_ratio  # noqa: F401
from prefopt.objectives.pg.losses import clip, cispo, sapo, gmpo, dppo, vespo  # noqa: F401,E402
