"""Every ``prefopt-leaderboard`` example runs as written: the commands of the CLI's module docstring and of
README.md's code blocks, read from those texts (a new example is tested without editing this file). They run
cheaply: ``run`` as ``plan`` (the quick suite's real run is tests/test_leaderboard_e2e.py), everything in a
temporary ``dir=``, ``render`` over a few fixture results. Also: ``only=`` reads globs and quotes, brings a
kept job's reward model along, and ``run`` trains a report run's reward model before it."""

import json
import os
import re
import shlex
import types
from pathlib import Path

import pytest
from test_leaderboard_render import fixture_results

import prefopt.leaderboard.plan as plan_mod
from prefopt.core.errors import UserError
from prefopt.leaderboard import cli, store
from prefopt.leaderboard.jobs import Job, read_manifest
from prefopt.leaderboard.render import render

README = Path(__file__).resolve().parents[1] / "README.md"


def commands(text: str, code_blocks_only: bool) -> list:
    """The ``prefopt-leaderboard`` commands of a text as argv lists (without the program name), each line read
    as a shell reads it: quotes removed, a trailing ``# comment`` dropped, ``&&`` chains split."""
    out, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if (code_blocks_only and not fenced) or not line.strip().startswith("prefopt-leaderboard "):
            continue
        words, part = shlex.split(line, comments=True) + ["&&"], []
        for w in words:
            if w != "&&":
                part.append(w)
                continue
            assert part and part[0] == "prefopt-leaderboard", f"not a prefopt-leaderboard command: {line!r}"
            out.append(part[1:])
            part = []
    return out


def examples() -> list:
    found = [("cli", a) for a in commands(cli.__doc__, code_blocks_only=False)]
    found += [("README", a) for a in commands(README.read_text(), code_blocks_only=True)]
    seen, params = set(), []
    for where, argv in found:
        if tuple(argv) in seen:  # the same command documented twice runs once
            continue
        seen.add(tuple(argv))
        slow = [pytest.mark.slow] if "suite=standard" in argv else []  # planning it composes ~700 configs (~1 min)
        params.append(pytest.param(argv, id=f"{where}: {' '.join(argv)}", marks=slow))
    return params


def test_examples_are_found():
    argvs = [p.values[0] for p in examples()]
    assert ["render"] in argvs and ["verify"] in argvs and ["run", "suite=quick"] in argvs
    assert ["run", "suite=standard", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"] in argvs
    assert any("only=[*dpo*,*-s0-*]" in a for a in argvs)  # the shell has removed the docstring's quotes


_plans = {}


@pytest.fixture(scope="module")
def lb_dir(tmp_path_factory):
    """One dir for every example: the same suite in the same dir plans the same jobs (no results ever land
    here), so each suite is planned once."""
    return tmp_path_factory.mktemp("lb")


@pytest.fixture
def cached_plan(monkeypatch):
    real = plan_mod.plan

    def plan(suite, work_dir, results_dir=None):
        assert not store.load_results(results_dir).ok  # the cache is exact only while no result exists
        key = json.dumps([suite, work_dir, results_dir], sort_keys=True, default=str)
        if key not in _plans:
            _plans[key] = real(suite, work_dir, results_dir)
        jobs, notes = _plans[key]
        return list(jobs), list(notes)

    monkeypatch.setattr(plan_mod, "plan", plan)


@pytest.mark.parametrize("argv", examples())
def test_documented_example_runs(argv, lb_dir, tmp_path, cached_plan, capsys):
    cmd, rest = argv[0], [a for a in argv[1:] if not a.startswith("dir=")]
    if cmd in ("render", "verify"):
        fixture_results(str(tmp_path / "results"))
        d = tmp_path
        if cmd == "verify":  # a rendered board to check
            render(str(tmp_path))
    else:
        cmd, d = "plan", lb_dir  # `run` trains (minutes): its plan is what the example decides
    with pytest.raises(SystemExit) as e:
        cli.main([cmd, *rest, f"dir={d}"])
    out, err = capsys.readouterr()
    assert e.value.code == 0, err
    if cmd == "render":
        assert (tmp_path / "LEADERBOARD.md").exists() and (tmp_path / "index.html").exists()
        assert (tmp_path / "MANIFEST.json").exists()
        return
    if cmd == "verify":
        assert "matches its" in out
        return
    listed = re.findall(r"^  \[(?:done|todo)\] stage (\d) (\S+) (\S+)$", out, re.MULTILINE)
    assert listed and "jobs planned now" in out
    own = dict(a.split("=", 1) for a in rest if a.split("=", 1)[0] in cli.OWN)
    if "stages" in own:
        assert {int(s) for s, _, _ in listed} <= {int(s) for s in cli._items(own, "stages")}
    if "only" in own:
        manifest = re.search(r"plan: (\S+)$", out, re.MULTILINE).group(1)
        assert_only(list(read_manifest(manifest)["jobs"].values()), cli._items(own, "only"))


def assert_only(jobs: list, pats: list) -> None:
    """Each job matches a pattern or is the reward model of one that does."""
    import fnmatch

    kept = [j for j in jobs if any(fnmatch.fnmatchcase(j.id, p) for p in pats)]
    rms = {j.meta.get("rm_hash") for j in kept}
    assert kept
    for j in jobs:
        assert j in kept or (j.stage == 1 and j.hash in rms), j.id


def test_plan_only_dpo_lists_dpo_and_its_reward_models(lb_dir, cached_plan, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["plan", "suite=quick", "only=[*dpo*]", f"dir={lb_dir}"])
    out = capsys.readouterr().out
    assert e.value.code == 0
    listed = re.findall(r"^  \[(?:done|todo)\] stage (\d) (\S+) (\S+)$", out, re.MULTILINE)
    assert any("dpo" in i for _, i, _ in listed)
    jobs = read_manifest(re.search(r"plan: (\S+)$", out, re.MULTILINE).group(1))["jobs"]
    rms = {j.meta.get("rm_hash") for j in jobs.values() if "dpo" in j.id}
    for stage, jid, h in listed:
        assert "dpo" in jid or (stage == "1" and h in rms), jid


def J(jid, stage, h, rm=None, also=None):
    meta = {"rm_hash": rm, **({"also": also} if also else {})}
    return Job(id=jid, stage=stage, kind="train", overrides=[], meta=meta, hash=h)


def test_only_brings_the_reward_models_of_kept_jobs_of_any_stage():
    jobs = [J("reviews-s100-reward", 1, "rm100"), J("reviews-s0-reward", 1, "rm0"), J("reviews-s1-reward", 1, "rm1"),
            J("reviews-s0-reward-pairs256", 1, "rmp"), J("reviews-s100-rloo-lr0.001", 2, "t", rm="rm100"),
            J("reviews-s0-rloo-lr0.001-kl0.05", 3, "r0", rm="rm0"), J("reviews-s0-dpo-lr0.001", 3, "d0"),
            J("reviews-s0-rloo-lr0.001-kl0.01-rmpairs256", 3, "a0", rm="rmp"),
            # a run serving two roles: the second's reward model comes along too
            J("reviews-s1-rloo-lr0.001-kl0.05", 3, "r1", also=[{"role": "ablation", "rm_hash": "rm1"}])]
    kept = [j.id for j in cli._filter_only(jobs, "[*rloo*]")]
    assert kept == ["reviews-s100-reward", "reviews-s0-reward", "reviews-s1-reward", "reviews-s0-reward-pairs256",
                    "reviews-s100-rloo-lr0.001", "reviews-s0-rloo-lr0.001-kl0.05",
                    "reviews-s0-rloo-lr0.001-kl0.01-rmpairs256", "reviews-s1-rloo-lr0.001-kl0.05"]
    assert [j.id for j in cli._filter_only(jobs, "[*-dpo-*]")] == ["reviews-s0-dpo-lr0.001"]
    # quotes a shell or a Hydra habit leaves in are not part of the pattern
    for only in ("['*-dpo-*']", '"[*-dpo-*]"', "'*-dpo-*'", "[ *-dpo-* ]", "*-dpo-*"):
        assert [j.id for j in cli._filter_only(jobs, only)] == ["reviews-s0-dpo-lr0.001"], only
    assert cli._unmatched(jobs, "[*dpo*,*foo*]") == ["*foo*"]


@pytest.mark.parametrize("value,items", [
    ("[*dpo*,*-s0-*]", ["*dpo*", "*-s0-*"]), ("['*-rloo-*']", ["*-rloo-*"]), ('"[*dpo*]"', ["*dpo*"]),
    ("*dpo*", ["*dpo*"]), ("[ a , 'b' ,\"c\"]", ["a", "b", "c"]), ("reviews", ["reviews"]),
])
def test_list_options_read_globs_and_quotes(value, items):
    assert cli._items({"only": value}, "only") == items


@pytest.mark.parametrize("argv,needle", [
    (["plan", "only=[]"], "only=[]: an empty list or item; accepted: a list of job-id patterns"),
    (["plan", "only=[*dpo*,]"], "only=[*dpo*,]: an empty list or item"),
    (["plan", "tasks=[reviews"], "tasks=[reviews: no closing ']'"),
    (["plan", "seeds=['a']"], "seeds: 'a' is not a whole number"),
    (["run", "stages=[1,4]"], "stages: 4 is not a stage"),
])
def test_bad_list_values_are_one_line(argv, needle, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([*argv, f"dir={tmp_path}/lb"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and needle in err[0], err
    assert not os.path.exists(tmp_path / "lb")


def test_check_accepts_what_the_docs_show():
    cli._check_own({"only": "[*dpo*,*-s0-*]", "stages": "[1,2]", "seeds": "[0,1]", "tasks": "[reviews]"})
    with pytest.raises(UserError):
        cli._check_own({"stages": "[0]"})


@pytest.mark.parametrize("stages", ["[1,2,3]", "[2,3]"])
def test_run_trains_a_report_runs_reward_model_first(stages, tmp_path, monkeypatch, capsys):
    """Under only=, the report runs (planned once the grid's results are in) need reward models that no
    earlier pass listed: `run` trains them before the report runs, or says why not."""
    res = str(tmp_path / "results")
    if stages == "[2,3]":  # stage 1 ran before, for the tuning seed only
        store.write_result(res, {"config_hash": "rm100", "status": "ok", "leaderboard": {}, "eval": {}})

    def plan(suite, work_dir, results_dir=None):
        jobs = [J("reviews-s100-reward", 1, "rm100"), J("reviews-s0-reward", 1, "rm0"), J("reviews-s0-dpo", 2, "d"),
                J("reviews-s100-rloo", 2, "t", rm="rm100")]
        if store.has_result(results_dir, "t"):
            return jobs + [J("reviews-s0-rloo-pick", 3, "r0", rm="rm0")], []
        return jobs, ["reviews/rloo: report runs wait for its tuning results (0/1 in)"]

    launches = []

    def fake_run(cmd, **kw):
        manifest = read_manifest(next(a for a in cmd if a.startswith("manifest=")).split("=", 1)[1])
        ids = next(a for a in cmd if a.startswith("job=")).split("=", 1)[1].split(",")
        launches.append(ids)
        for i in ids:
            store.write_result(res, {"config_hash": manifest["jobs"][i].hash, "status": "ok", "leaderboard": {},
                                     "eval": {}})
        return types.SimpleNamespace(returncode=0)

    monkeypatch.setattr(plan_mod, "plan", plan)
    monkeypatch.setattr(cli.subprocess, "run", fake_run)
    own = {"suite": "quick", "dir": str(tmp_path), "only": "[*rloo*,*foo*]", "stages": stages}
    rc = cli.cmd_run(own, [], [])
    out = capsys.readouterr().out
    assert out.count("only=[*foo*]: matches none of the 4 jobs planned now") == 1
    if stages == "[1,2,3]":
        assert rc == 0 and "skipped" not in out
        assert launches == [["reviews-s100-reward"], ["reviews-s100-rloo"], ["reviews-s0-reward"],
                            ["reviews-s0-rloo-pick"]]
    else:
        assert launches == [["reviews-s100-rloo"]]
        assert "reviews-s0-rloo-pick skipped: its reward model (rm0) has no result; stages= leaves out stage 1" in out


def test_common_task_overrides_every_run_of_its_task_only(tmp_path):
    """A suite's common_task.TASK is added to every run of TASK (after common), and to no other task's runs."""
    import yaml

    from prefopt.leaderboard.jobs import Planner
    from prefopt.leaderboard.suite import load_suite

    data = {"name": "ct", "seeds": [0], "tasks": ["reviews", "arith"], "lr_grid": {"default": [1.0e-4]},
            "methods": ["dpo"], "tune_coefficients": False, "best_of_n": None, "proxy_tasks": [],
            "common": ["trainer.max_steps=3"], "common_task": {"arith": ["eval.greedy=true"]}}
    p = tmp_path / "ct.yaml"
    p.write_text(yaml.safe_dump(data))
    planner = Planner(load_suite(str(p)), str(tmp_path / "board"), None, "code", "AVX2")
    assert planner.base("arith", 0)[-2:] == ["trainer.max_steps=3", "eval.greedy=true"]
    assert "eval.greedy=true" not in planner.base("reviews", 0)
