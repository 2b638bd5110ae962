"""Environments (env= config group): the registry's errors, env=none leaving runs as they were, an
environment that raises, and every online preset training one step on multi-turn episodes."""

import glob
import json
import os

import pytest
import torch

from prefopt.core.errors import UserError
from prefopt.objectives.registry import OBJECTIVES
from prefopt.rollout.envs import ENVS, build_env, env_config
from prefopt.run.resume import config_hash

ONLINE = sorted(n for n, cls in OBJECTIVES.items() if cls.needs.rollouts)
# One rollout of 4 arith prompts × 2 episodes and no evaluation: seconds per run.
ONE_STEP = ["trainer.progress=false", "eval.num_prompts=4", "eval.max_new_tokens=4", "data=arith", "env=arith_retry",
            "trainer.max_steps=1", "algo.prompts_per_step=4", "algo.samples_per_prompt=2", "trainer.save_model=false",
            "trainer.eval_at_end=false"]


def _compose(*overrides):
    from conftest import compose

    return compose(list(overrides))


def test_unknown_env_lists_the_valid_names():
    with pytest.raises(UserError, match=r"env='nope' is not known; accepted: none, .*arith_retry"):
        env_config({"name": "nope"})


def test_env_keys_fail_early_with_one_line():
    with pytest.raises(UserError, match=r"env.max_turns=0 must be a positive integer"):
        env_config({"name": "arith_retry", "max_turns": 0})
    with pytest.raises(UserError, match=r"env\.colour"):
        env_config({"name": "arith_retry", "colour": "red"})
    assert env_config({"name": "none"}).name == "none" and build_env(env_config(None)) is None
    cfg = env_config(_compose("env=arith_retry").env)
    assert (cfg.name, cfg.max_turns) == ("arith_retry", 2) and build_env(cfg).name == "arith_retry"


def test_env_none_hashes_as_a_config_without_the_env_group():
    from omegaconf import OmegaConf

    cfg = _compose("algo=grpo", "data=arith")
    bare = OmegaConf.create({k: v for k, v in OmegaConf.to_container(cfg).items() if k != "env"})
    assert cfg.env.name == "none" and config_hash(cfg) == config_hash(bare)
    assert config_hash(_compose("algo=grpo", "data=arith", "env=arith_retry")) != config_hash(cfg)


def test_env_with_an_offline_algo_is_refused_before_anything_loads():
    from prefopt.run.stages import configs

    with pytest.raises(UserError, match=r"env=arith_retry runs multi-turn episodes.*algo=dpo samples none"):
        configs(_compose("algo=dpo", "data=arith", "env=arith_retry"))


def test_gae_chains_across_the_environments_tokens():
    """A gap in the mask (the environment's turn) is skipped: the advantages equal those of the
    same rewards and values with the gap removed; contiguous masks give the plain recursion."""
    from prefopt.objectives.pg.advantages import gae

    g = torch.Generator().manual_seed(0)
    r, v = torch.randn(3, 12, generator=g, dtype=torch.float64), torch.randn(3, 12, generator=g, dtype=torch.float64)
    mask = torch.zeros(3, 12, dtype=torch.bool)
    mask[0, 2:5] = mask[0, 7:10] = True  # two policy turns around an environment turn
    mask[1, 3:11] = True  # one contiguous completion
    mask[2, 1:2] = mask[2, 4:6] = mask[2, 9:12] = True
    A, R = gae(r, v, mask, gamma=0.9, lam=0.8)
    for b in range(3):
        m = mask[b]
        Ac, Rc = gae(r[b, m][None], v[b, m][None], torch.ones(1, int(m.sum()), dtype=torch.bool), 0.9, 0.8)
        torch.testing.assert_close(A[b, m], Ac[0])
        torch.testing.assert_close(R[b, m], Rc[0])
        assert (A[b, ~m] == 0).all()


# Registered in the subprocess before prefopt-train's main(): an environment whose step raises once
# the first rollout (4 prompts) is over, i.e. at optimizer step 2.
FLAKY = """
from prefopt.rollout.envs import ENVS, EnvConfig, Environment, StepResult

@ENVS.register("flaky")
class Flaky(Environment):
    Config = EnvConfig
    resets = 0

    def reset(self, row):
        self.resets += 1
        return [{"role": "user", "content": "".join(row["prompt_text"].split())}]

    def step(self, messages):
        if self.resets > 4:
            raise ZeroDivisionError("the simulator fell over\\nsecond line of its message")
        return StepResult(None, 1.0)
"""


def test_an_environment_that_raises_stops_with_one_line_and_keeps_the_checkpoint(tmp_path):
    from short_runs import cli_main, one_line_error

    out = tmp_path / "run"
    p = cli_main("algo=grpo", *ONE_STEP, "trainer.max_steps=3", "trainer.save_every_steps=1", "env.name=flaky",
                 f"hydra.run.dir={out}", pre=FLAKY, cwd=tmp_path)
    assert p.returncode == 2
    line = one_line_error(p, "env 'flaky' raised in step() at optimizer step 2 (rollout 1), turn 0, data row ",
                          "ZeroDivisionError: the simulator fell over")
    assert "second line" not in line
    assert glob.glob(str(out / "checkpoints" / "*")), os.listdir(out)  # step 1's checkpoint survives
    rows = [json.loads(x) for x in open(out / "metrics.jsonl")]
    assert [r["step"] for r in rows if "rollout/env_turns" in r] == [1]


def test_an_environments_own_user_error_is_kept_and_located(tmp_path):
    from prefopt.run import train

    with pytest.raises(UserError, match=r"^env 'arith_retry' raised in reset\(\) at optimizer step 1 \(rollout 0\), "
                                        r"turn 0, data row \d+: env=arith_retry needs addition prompts"):
        train(_compose("algo=grpo", *ONE_STEP, "data=reviews"), str(tmp_path / "run"))


def test_online_presets_are_all_listed():
    assert {"grpo", "dr_grpo", "dapo", "rloo", "ppo", "reinforce_pp", "remax", "cispo", "gspo", "sapo", "gmpo", "dppo",
            "online_dpo", "rejection_sampling", "iterative_dpo"} <= set(ONLINE)


@pytest.mark.parametrize("algo", ONLINE)
def test_every_online_preset_trains_one_step_on_episodes(algo, tmp_path):
    from prefopt.run import train

    out = str(tmp_path / "run")
    s = train(_compose(f"algo={algo}", *ONE_STEP), out)
    assert s["steps"] == 1
    rows = [json.loads(x) for x in open(os.path.join(out, "metrics.jsonl"))]
    first = next(r for r in rows if "rollout/env_turns" in r)
    assert 1 <= first["rollout/env_turns"] <= 2
    assert first["rollout/env_policy_tokens"] > 0
    assert all(torch.isfinite(torch.tensor(float(v))) for k, v in first.items() if k.startswith("loss"))


def test_every_env_yaml_states_its_configs_defaults():
    """conf/env/NAME.yaml composes to NAME's Config() exactly, and every registered env has one."""
    import dataclasses
    import pathlib

    from omegaconf import OmegaConf

    env_names = sorted(ENVS)
    names = sorted(p.stem for p in (pathlib.Path(__file__).resolve().parents[1] / "conf" / "env").glob("*.yaml"))
    assert names == sorted(["none", *env_names])
    for name in env_names:
        composed = OmegaConf.to_container(_compose(f"env={name}").env)
        assert composed == dataclasses.asdict(ENVS[name].Config()), name


def test_an_environments_run_needs_no_reward_source():
    """The episodes' rewards are the scores: reward= is neither checked nor built (reward=model without
    a path would otherwise be refused)."""
    from prefopt.run.stages import configs

    with pytest.raises(UserError, match=r"reward"):
        configs(_compose("algo=grpo", "data=arith", "reward=model"))
    assert configs(_compose("algo=grpo", "data=arith", "reward=model", "env=arith_retry")).envcfg.name == "arith_retry"
