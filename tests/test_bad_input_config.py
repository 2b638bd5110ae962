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
    # a group's own keys are checked against the chosen option, for every group of conf/train.yaml (env too)
    precheck_argv(["algo=grpo", "data=arith", "env=arith_retry", "env.max_turns=2", "env.max_episode_tokens=24"])
    with pytest.raises(UserError, match="env.max_turnz"):
        precheck_argv(["env=arith_retry", "env.max_turnz=2"])


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


# ---- leaderboard suite files: every key's type and range before any job is planned -----------------------------

def _suite_file(tmp_path, change: dict, extra: str = ""):
    import yaml

    data = {"name": "bad", "seeds": [0], "tasks": ["reviews"], "lr_grid": {"default": [1.0e-4]}, **change}
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(data) + extra)
    return p


@pytest.mark.parametrize("change,extra,needle", [
    ({"lr_grid": {"reviews": 3}}, "", "lr_grid.reviews: 3 is not a list of numbers"),  # was 'int' object is not iterable
    ({"lr_grid": {"default": [1.0e-4, "fast"]}}, "", "lr_grid.default[1]: 'fast' is not a number"),
    ({"lr_grid": {"default": [-1.0e-4]}}, "", "lr_grid.default[0]: -0.0001 is not a learning rate; accepted: numbers > 0"),
    ({"online_task": {"reviews": 3}}, "", "online_task.reviews: 3 is not a list of strings"),
    ({"common_task": {"arith": ["model=tiny"]}}, "", "common_task.arith: not one of the suite's tasks; accepted: reviews"),
    ({"algo": {"ppo": "algo.kl_target=null"}}, "", "algo.ppo: 'algo.kl_target=null' is not a list of strings"),
    ({"common": [5]}, "", "common[0]: 5 is not a string"),
    ({"exact_reward": {"arith": 3}}, "", "exact_reward.arith: 3 is not a string"),
    ({"kl_budgets": ["lots"]}, "", "kl_budgets[0]: 'lots' is not a number"),
    ({"best_of_n": {"ns": ["a"], "samples": 4}}, "", "best_of_n.ns[0]: 'a' is not a whole number"),
    ({"divergence": {"gold_drop": {"reviews": "x"}}}, "", "divergence.gold_drop.reviews: 'x' is not a number"),
    ({"pick_kl_budget": float("nan")}, "", "pick_kl_budget: nan is not a finite number"),
    ({"tasks": ["reviews", "bogus"]}, "", "tasks: unknown task 'bogus'; accepted: available tasks"),
    ({"seeds": [99999999999999999999]}, "", "seeds[0]: 99999999999999999999 is out of range; accepted: whole numbers "
                                            "0 <= seed < 2**32"),
    ({"tuning_seeds": [-1]}, "", "tuning_seeds[0]: -1 is out of range"),
    ({}, "budget_note: ${oc.env:PREFOPT_NO_SUCH_VARIABLE}\n", "budget_note: cannot resolve its ${...} interpolation"),
])
def test_leaderboard_suite_with_wrong_types_is_one_line(tmp_path, capsys, change, extra, needle):
    # Each of these reached Python unchecked (a TypeError or AttributeError traceback, or a bad seed that
    # crashed prefopt-train later); now one line naming the file, the key and what it accepts, before planning.
    from prefopt.leaderboard.cli import main

    p = _suite_file(tmp_path, change, extra)
    with pytest.raises(SystemExit) as e:
        main(["plan", f"suite={p}", f"dir={tmp_path}/lb"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and f"suite {p}: " in err[0] and needle in err[0], err
    assert not os.path.exists(tmp_path / "lb")


@pytest.mark.parametrize("argv,needles", [
    (["plan", "tasks=[bogus]"], ("tasks: unknown task 'bogus'", "the suite's tasks reviews", "arith, reviews")),
    (["plan", "seeds=[99999999999999999999]"], ("seeds: 99999999999999999999 is too large",
                                                 "accepted: whole numbers 0 <= seed < 2**32")),
])
def test_leaderboard_unknown_task_and_huge_seed_are_named(tmp_path, capsys, argv, needles):
    # tasks=[bogus] was reported as a bad "key=value override"; a seed beyond int64 passed `plan` and crashed
    # prefopt-train (torch.manual_seed of the seeds derived from it)
    from prefopt.leaderboard.cli import main

    with pytest.raises(SystemExit) as e:
        main([*argv, "suite=quick", f"dir={tmp_path}/lb"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and all(n in err[0] for n in needles), err
    assert "override" not in err[0] and not os.path.exists(tmp_path / "lb")


def test_the_largest_accepted_seed_fits_every_consumer():
    # prefopt-train derives torch generator seeds as ((seed·1_000_003 + r·1_009 + q)·31 + rank) (the online
    # sampler's), the largest multiplier of the seed: at the limit it must stay below torch's 2**64.
    import torch

    from prefopt.leaderboard.suite import SEED_LIMIT

    top = SEED_LIMIT - 1
    torch.Generator().manual_seed(((top * 1_000_003 + 10_000 * 1_009 + 10_000) * 31 + 64))
    with pytest.raises((RuntimeError, ValueError)):
        torch.Generator().manual_seed(99999999999999999999)  # the seed: beyond what torch accepts


@pytest.mark.parametrize("value", [None, [1, 2], "reviews", {"suite": "standard", "also": [None]}])
def test_a_result_whose_leaderboard_field_is_not_a_mapping_is_skipped_and_named(tmp_path, capsys, value):
    # `leaderboard: null` ended render in "'NoneType' object has no attribute 'get'": it is a corrupt file,
    # reported in render's output and on the board's Notes, and the board is built from the rest.
    import json

    from test_leaderboard_render import fixture_results

    from prefopt.leaderboard.cli import main

    fixture_results(str(tmp_path / "results"))
    (tmp_path / "results" / "nulled.json").write_text(json.dumps(
        {"config_hash": "nulled", "status": "ok", "eval": {"gold_reward": 1.0}, "leaderboard": value}))
    with pytest.raises(SystemExit) as e:
        main(["render", f"dir={tmp_path}"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "skipped nulled.json: field leaderboard" in out, out
    notes = (tmp_path / "LEADERBOARD.md").read_text().split("## Notes")[1]
    assert "skipped file nulled.json: field leaderboard" in notes


def test_render_does_not_rank_a_row_that_lost_a_report_seed(tmp_path):
    # A deleted result, and a NaN test gold, used to leave a row ranked on fewer seeds without a word, and a row
    # with a NaN averaged different seeds in different columns. Now the row is not compared, its "vs best" says
    # why, the Notes name it, and every column of a row is over the seeds of its test gold.
    from test_leaderboard_render import fixture_results

    from prefopt.leaderboard import board as boards
    from prefopt.leaderboard import store
    from prefopt.leaderboard.render import render
    from prefopt.leaderboard.suite import load_suite

    res = tmp_path / "results"
    fixture_results(str(res))
    s0, s1, s2 = load_suite("standard").seeds[:3]
    recs = {(r["leaderboard"]["method"], r["leaderboard"]["seed"]): r for r in store.load_results(str(res)).ok
            if r["leaderboard"].get("role") == "report" and r.get("code_version") == "c1"}
    os.remove(res / f"{recs[('dpo', s1)]['result_id']}.json")  # a deleted result
    nan = recs[("grpo", s2)]
    nan["eval"]["gold_reward"] = float("nan")  # written as null: no usable test gold, its other values remain
    store.write_result(str(res), nan)
    gap = recs[("grpo", s0)]
    gap["eval"]["kl_to_ref"] = float("nan")  # one metric missing on a seed that has its gold
    store.write_result(str(res), gap)
    report = render(str(tmp_path))
    assert "  not compared (short of a report seed; see the board's Notes): standard reviews dpo, 2 of 3 seeds" in report
    md = (tmp_path / "LEADERBOARD.md").read_text()
    main_table = md.split("### reviews: tuning")[0]
    lines = {l.split(" | ")[1]: l for l in main_table.splitlines() if l.startswith("| ") and l.count(" | ") > 3}
    assert lines["dpo"].startswith("| not compared: 2 of 3 seeds |") and lines["grpo"].startswith("| not compared: 2 of 3")
    assert "| best |" in main_table  # the rows that kept every seed are still ranked
    notes = md.split("## Notes")[1]
    assert f"dpo: not compared, 2 of 3 seeds (no usable test gold on seed(s) {s1}" in notes
    assert f"grpo: seed(s) {s2} have results but no usable test gold, and are left out of every column" in notes
    assert f"grpo: KL has no usable value on seed(s) {s0}; its column is the mean of the other 1" in notes
    task = boards.build(store.load_results(str(res)), "standard").main.agg["tasks"]["reviews"]
    grpo = next(r for r in task["rows"] if r.method == "grpo")
    assert grpo.best.est["gold"].n == 2 and grpo.best.est["win"].n == 2 and grpo.best.est["kl"].n == 1
    assert grpo.vs_best == "not compared" and not any("grpo" in pair for pair in task["comparison"]["pairs"])


def test_board_manifest_names_missing_and_changed_results_and_verify_checks_them(tmp_path, capsys):
    # A result deleted from results/ vanished silently (the board was rebuilt from one result fewer) and nothing
    # recorded what a committed board was built from. Now render writes MANIFEST.json (every result id with the
    # sha256 of its file, and the code version), says what is missing or changed since the last one, and verify
    # checks a board against results/.
    import json

    from test_leaderboard_render import fixture_results

    from prefopt.core.files import sha256_file
    from prefopt.leaderboard.cli import main

    def cli(*argv):
        with pytest.raises(SystemExit) as e:
            main([*argv, f"dir={tmp_path}"])
        out, err = capsys.readouterr()
        return e.value.code, out.strip().splitlines(), err.strip().splitlines()

    res = tmp_path / "results"
    fixture_results(str(res))
    rc, _, err = cli("verify")
    assert rc == 2 and len(err) == 1 and "MANIFEST.json: no board manifest; accepted: " in err[0], err
    assert cli("render")[0] == 0
    m = json.loads((tmp_path / "MANIFEST.json").read_text())
    assert m["code_version"] == "c1" and list(m["results"]) == sorted(m["results"]) and len(m["results"]) == 15
    assert all(sha256_file(res / f"{i}.json") == h for i, h in m["results"].items())
    assert cli("verify")[0] == 0

    gone, edited = sorted(m["results"])[:2]
    os.remove(res / f"{gone}.json")
    rec = json.loads((res / f"{edited}.json").read_text())
    rec["wall_time_s"] = 1.0
    (res / f"{edited}.json").write_text(json.dumps(rec))
    rc, out, err = cli("verify")
    assert rc == 1 and out == [f"missing: {res / gone}.json (result {gone} of the board)",
                               next(l for l in out if l.startswith(f"changed: {res / edited}.json (sha256 "))], out
    assert len(err) == 1 and "2 of 15 result(s) of the board" in err[0]
    rc, out, _ = cli("render")
    assert rc == 0 and "  Since the previous board's MANIFEST.json: 1 result(s) missing, 1 changed, 0 new." in out
    assert f"  Missing since the previous board (deleted or now unreadable): {gone}." in out
    notes = (tmp_path / "LEADERBOARD.md").read_text().split("## Notes")[1]
    assert f"Changed since the previous board (rewritten: a rerun or an edit): {edited}." in notes
    assert "Built from 14 result file(s), listed with the sha256 of each in MANIFEST.json" in notes
    assert cli("verify")[0] == 0  # the new board is what the results now are

    (tmp_path / "MANIFEST.json").write_text('{"results": [1]}')
    rc, _, err = cli("verify")
    assert rc == 2 and len(err) == 1 and "MANIFEST.json: not a board manifest" in err[0]
    rc, out, _ = cli("render")  # a damaged manifest does not stop the board: it is replaced, and says so
    assert rc == 0 and any("not a board manifest" in l and l.endswith("; replaced") for l in out)
    assert cli("verify")[0] == 0
    assert cli("verify", "suite=quick")[2] == ["prefopt-leaderboard: error: verify: 'suite' does not apply (it checks a "
                                               "rendered board against its results); accepted: dir=DIR"]
