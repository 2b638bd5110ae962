"""Bad config values, keys and overrides, on the command line or composed: each run is refused before
any model loads, with one line that names the key and what would be accepted, and no traceback."""

import os

import pytest

from conftest import compose
from prefopt.run import train as run
from prefopt.core.errors import UserError
from prefopt.objectives.dpo import DPO
from prefopt.rollout.rewards import RewardConfig, build_reward
from prefopt.rollout.source import RolloutFields, plan_batches
from short_runs import cli, one_line_error


# ---- unknown groups, keys and types --------------------------------------------------------------

def test_unknown_group_options_list_the_available_ones(tmp_path):
    one_line_error(cli("algo=nope", cwd=tmp_path), "unknown algo 'nope'", "dpo", "sft")
    one_line_error(cli("model=gpt9", cwd=tmp_path), "unknown model 'gpt9'", "llama3", "tiny")
    one_line_error(cli("data=nope", cwd=tmp_path), "unknown data 'nope'", "reviews", "arith", "hf")
    one_line_error(cli("-m", "algo=dpo,nope", cwd=tmp_path), "unknown algo 'nope'")


def test_wrong_type_or_unknown_key_fails_before_loading(tmp_path):
    one_line_error(cli("algo.beta=abc", cwd=tmp_path), "algo.beta")
    one_line_error(cli("+algo.bogus=1", cwd=tmp_path), "algo.bogus")
    one_line_error(cli("trainer.max_steps=many", cwd=tmp_path), "trainer.max_steps")
    one_line_error(cli("trainer.examples_per_step=10", "trainer.examples_per_device=4", cwd=tmp_path),
                   "examples_per_step=10")
    assert not os.path.exists(tmp_path / "outputs") or not any(
        os.path.exists(os.path.join(r, "metrics.jsonl")) for r, _, _ in os.walk(tmp_path / "outputs"))


def test_unknown_key_lists_the_valid_keys_of_its_section():
    from prefopt.cli.train import precheck_argv

    for argv, needles in ((["algo.betta=0.1"], ("algo.betta", "beta", "label_smoothing")),
                          (["+algo.betta=0.1"], None), (["model.lora.rank=2"], ("model.lora.rank", "alpha, dropout, r")),
                          (["algo=ipo", "algo.betta=1"], ("algo.betta", "beta")), (["evl.num_prompts=1"], ("evl", "eval")),
                          (["algo.beta=["], ("cannot parse", "algo.beta=["))):
        if needles is None:  # Hydra's own hint; the typed config rejects it with the same list
            with pytest.raises(UserError, match="valid keys of 'algo': beta"):
                run(compose(argv), "/nonexistent/never-written")
            continue
        with pytest.raises(UserError) as e:
            precheck_argv(argv)
        for n in needles:
            assert n in str(e.value), str(e.value)


# ---- values: every section before any model loads ------------------------------------------------

@pytest.mark.parametrize("overrides,needles", [
    ("eval.num_prompts=0", "eval.num_prompts=0"), ("eval.samples_per_prompt=0", "eval.samples_per_prompt"),
    ("eval.prompts_per_batch=0", "eval.prompts_per_batch"), ("eval.temperature=0", "eval.temperature"),
    ("eval.max_new_tokens=0", "eval.max_new_tokens"), ("model.lora.r=-4", "model.lora.r=-4"),
    ("trainer.keep_checkpoints=0", "trainer.keep_checkpoints"), ("trainer.lr=0", "trainer.lr"),
    ("algo=grpo reward.kind=bogus", "reward.kind auto function model sum"),
])
def test_every_section_is_checked_before_any_model_loads(tmp_path, monkeypatch, overrides, needles):
    # Every section is checked up front: a bad eval.* value found after training would lose the
    # trained model. Each case: its overrides, and the words its one-line refusal names (both
    # space-separated).
    import prefopt.run.stages
    import prefopt.models.load

    def no_loading(*a, **k):
        raise AssertionError("a model was loaded before the config was checked")

    monkeypatch.setattr(prefopt.models.load, "load_policy", no_loading)
    monkeypatch.setattr(prefopt.run.stages, "load_policy", no_loading)  # the name the run's stages call
    with pytest.raises(UserError) as e:
        run(compose(overrides.split()), str(tmp_path / "run"))
    msg = str(e.value)
    assert all(n in msg for n in needles.split()) and "accepted" in msg and "\n" not in msg, msg
    assert not os.path.exists(tmp_path / "run")


# ---- batch splits --------------------------------------------------------------------------------

def test_impossible_batch_split_is_a_user_error():
    from prefopt.core.config import TrainerConfig, check_trainer

    with pytest.raises(UserError, match="examples_per_step=10 is not a multiple"):
        check_trainer(TrainerConfig(examples_per_step=10, examples_per_device=4))
    assert check_trainer(TrainerConfig(examples_per_step=16, examples_per_device=4), world_size=2) == 2


@pytest.mark.parametrize("kw,world,msg", [
    (dict(prompts_per_step=6), 4, "does not split over 4 processes"),
    (dict(prompts_per_step=4, samples_per_prompt=3, minibatches_per_rollout=5), 1, "minibatches_per_rollout=5"),
    (dict(prompts_per_step=4, samples_per_prompt=3, sequences_per_device=5), 1, "sequences_per_device=5"),
    (dict(samples_per_prompt=0), 1, "samples_per_prompt=0"),
])
def test_impossible_split_is_a_user_error(kw, world, msg):
    with pytest.raises(UserError, match=msg):
        plan_batches(RolloutFields(**kw), world_size=world)


@pytest.mark.parametrize("algo", ["grpo", "rloo", "dr_grpo", "dapo"])
def test_group_size_one_fails_before_training(algo):
    from conftest import compose
    from prefopt.core.config import typed
    from prefopt.objectives.registry import get_objective

    cfg = compose([f"algo={algo}", "algo.samples_per_prompt=1"])
    with pytest.raises(UserError, match="samples_per_prompt >= 2"):
        typed(get_objective(algo).Config, cfg.algo, "algo")


# ---- a method's own settings: DPO's loss, the reward source --------------------------------------

def test_dpo_bad_loss_type_and_label_smoothing_are_user_errors():
    with pytest.raises(UserError, match="loss_type"):
        DPO.Config(loss_type="nope")
    with pytest.raises(UserError, match="label_smoothing"):
        DPO.Config(label_smoothing=0.7)


def test_dpo_bad_config_is_one_line():
    with pytest.raises(UserError, match="loss_type"):
        DPO.Config(loss_type="nope")
    with pytest.raises(UserError, match="label_smoothing"):
        DPO.Config(loss_type="robust", label_smoothing=0.5)
    with pytest.raises(UserError, match="hinge"):
        DPO.Config(loss_type="hinge", label_smoothing=0.1)


def test_bad_loss_configs_are_one_line_user_errors():
    with pytest.raises(UserError, match="accepted: sigmoid, robust.*discopop, sft"):
        DPO.Config(loss_type="nca")
    with pytest.raises(UserError, match="'apo'"):
        DPO.Config(loss_type=["sigmoid", "apo"])
    with pytest.raises(UserError, match="2 weights for 3 loss types"):
        DPO.Config(loss_type=["sigmoid", "bco_pair", "sft"], loss_weights=[0.5, 0.5])
    with pytest.raises(UserError, match="exo_pair needs algo.label_smoothing > 0"):
        DPO.Config(loss_type="exo_pair")
    with pytest.raises(UserError, match="no meaning for loss_type=nca_pair"):
        DPO.Config(loss_type="nca_pair", label_smoothing=0.1)
    with pytest.raises(UserError, match="rpo_alpha"):
        DPO.Config(rpo_alpha=-1)
    with pytest.raises(UserError, match="discopop_tau"):
        DPO.Config(loss_type="discopop", discopop_tau=0)
    assert DPO.Config(loss_type=["sigmoid"]).loss_type == "sigmoid"  # a one-entry list is that loss


@pytest.mark.parametrize("cfg,msg", [
    (RewardConfig(kind="function", function="no_such_module_xyz:f"), "cannot import module"),
    (RewardConfig(kind="function", function="prefopt.testbed.rewards:nope"), "has no function 'nope'"),
    (RewardConfig(kind="function", function="prefopt.testbed.rewards"), "expected MODULE:FUNCTION"),
    (RewardConfig(kind="model"), "reward.path"),
    (RewardConfig(kind="model", path="/does/not/exist"), "is not a model directory"),
    (RewardConfig(kind="bogus"), "accepted: auto, function, model, sum"),
    (RewardConfig(kind="auto"), "needs a reward"),
])
def test_bad_reward_config_is_one_line_user_error(cfg, msg):
    with pytest.raises(UserError) as e:
        build_reward(cfg)
    assert msg in str(e.value) and "\n" not in str(e.value)


# ---- prefopt-leaderboard -------------------------------------------------------------------------

@pytest.mark.parametrize("argv,needle", [
    (["run", "threads=abc"], "threads: 'abc'"), (["plan", "seeds=[a]"], "seeds: 'a'"),
    (["plan", "algo.beta=["], "cannot parse the override 'algo.beta=['"), (["plan", "only=["], "only=["),
    (["run", "hydra/launcher=joblib", "hydra.launcher.n_jobs=x"], "hydra.launcher.n_jobs"),
])
def test_leaderboard_bad_values_are_one_line(tmp_path, capsys, argv, needle):
    # Values that reach Python unchecked would end in a traceback.
    from prefopt.leaderboard.cli import main

    with pytest.raises(SystemExit) as e:
        main([*argv, f"dir={tmp_path}/lb"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and needle in err[0], err
    assert not os.path.exists(tmp_path / "lb")
