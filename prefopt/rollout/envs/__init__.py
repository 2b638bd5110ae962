"""Multi-turn environments (config group ``env``, conf/env/*.yaml), one file per kind, each registering
itself (:mod:`~prefopt.rollout.envs.base`); episodes are run by :mod:`prefopt.rollout.episodes`.

    env=none           single-turn rollouts (the default): every run exactly as without environments
    env=arith_retry    data=arith over several turns: a wrong sum gets the question again; R = solved
    env=calculator     arithmetic questions with a calculate(expression) tool (tools.py); R = exact answer
"""

from prefopt.rollout.envs.base import (ENVS, EnvConfig, Environment, StepResult, build_env, env_config,  # noqa: F401
                                       register)
from prefopt.rollout.envs.arith_retry import ArithRetry, ArithRetryConfig  # noqa: F401
from prefopt.rollout.envs.calculator import Calculator, CalculatorConfig, calculate  # noqa: F401
