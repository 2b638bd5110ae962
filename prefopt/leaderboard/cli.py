"""``prefopt-leaderboard``: run the protocol (reward models → tuning grid → report seeds), render the board.

    prefopt-leaderboard run suite=quick|standard [hydra/launcher=joblib hydra.launcher.n_jobs=2]
    prefopt-leaderboard plan suite=standard          # list the jobs and which are done, run nothing
    prefopt-leaderboard render                       # leaderboard/LEADERBOARD.md, frontier.png, index.html

Options (key=value): ``suite`` (a name in conf/leaderboard/ or a YAML path), ``dir`` (default
``leaderboard``: results/ and the rendered files; scratch under work/), ``seeds=[0,1]`` (report seeds) and
``tasks=[reviews]`` (replace the suite's), ``only='[*dpo*,*-s0-*]'`` (job-id patterns; a job's reward
model comes along), ``threads`` (torch threads per job; default: cores / jobs
under the joblib launcher). ``hydra/…`` and ``hydra.…`` overrides go to the Hydra multirun of each
stage; any other ``key=value`` is a conf/train.yaml override added to every run of the suite.
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys

from prefopt.core.errors import UserError

USAGE = "usage: prefopt-leaderboard {run,plan,render} [suite=NAME] [dir=DIR] [key=value ...]"
OWN = ("suite", "dir", "seeds", "tasks", "threads", "only")


def parse(argv: list) -> tuple[str, dict, list, list]:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        raise SystemExit(0)
    cmd, rest = argv[0], argv[1:]
    if cmd not in ("run", "plan", "render"):
        raise UserError(f"unknown command '{cmd}'; accepted: run, plan, render")
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    own, hydra_ovr, train_ovr = {}, [], []
    parser = OverridesParser.create()
    for a in rest:
        if "=" not in a:
            raise UserError(f"'{a}' is not key=value; {USAGE}")
        k, v = a.split("=", 1)
        if k in OWN:
            own[k] = v
            continue
        # Passed on to Hydra in a child process: a value it cannot parse would fail there, in a traceback.
        try:
            parser.parse_overrides([a])
        except OverrideParseException as e:
            raise UserError(f"cannot parse the override '{a}' ({str(e).splitlines()[0]}); accepted: key=value "
                            "(quote values with spaces or brackets)") from None
        if k.startswith(("hydra/", "hydra.")):
            hydra_ovr.append(a)
        else:
            train_ovr.append(a)
    _check_own(own)
    return cmd, own, hydra_ovr, train_ovr


def _check_own(own: dict) -> None:
    """The values of prefopt-leaderboard's own options, each checked before anything runs."""
    if "threads" in own:
        _int(own["threads"], "threads", "a whole number of torch threads per job, >= 0 (0: torch's default)", lo=0)
    if "seeds" in own:
        for s in _list(own["seeds"], "seeds"):
            _int(s, "seeds", "a list of whole numbers, e.g. seeds=[0,1]", lo=0)
    for key in ("tasks", "only"):
        if key in own:
            vals = _list(own[key], key)
            if not vals or not all(isinstance(t, str) and t for t in vals):
                raise UserError(f"{key}={own[key]}: accepted: a list of names, e.g. {key}=[reviews]")


def _int(v, key: str, accepted: str, lo: int) -> int:
    try:
        if isinstance(v, bool) or (isinstance(v, float) and not v.is_integer()):
            raise ValueError
        n = int(v)
    except (TypeError, ValueError):
        raise UserError(f"{key}: {v!r} is not a whole number; accepted: {accepted}") from None
    if n < lo:
        raise UserError(f"{key}: {n} is below {lo}; accepted: {accepted}")
    return n


def _list(v: str, key: str = "value") -> list:
    import yaml

    try:
        out = yaml.safe_load(v)
    except yaml.YAMLError:
        raise UserError(f"{key}={v} is not a list; accepted: e.g. {key}=[a,b]") from None
    return out if isinstance(out, list) else [out]


def _threads(own: dict, hydra_ovr: list) -> int:
    if "threads" in own:
        return int(own["threads"])
    if not any(o.startswith("hydra/launcher=") and "joblib" in o for o in hydra_ovr):
        return 0
    n = os.cpu_count() or 1
    for o in hydra_ovr:
        if o.startswith("hydra.launcher.n_jobs="):
            j = _int(o.split("=", 1)[1], "hydra.launcher.n_jobs", "a whole number of parallel jobs (-1: one per core)",
                     lo=-n)
            if j == 0:
                raise UserError("hydra.launcher.n_jobs: 0; accepted: a positive number of jobs, or -1 for one per core")
            n_jobs = j if j > 0 else max(1, n + 1 + j)
            return max(1, n // n_jobs)
    return 1  # joblib's default n_jobs=-1: one job per core


def suite_for(own: dict, train_ovr: list) -> dict:
    from prefopt.leaderboard.plan import load_suite

    suite = load_suite(own.get("suite", "quick"))
    if "seeds" in own:
        suite["seeds"] = [int(s) for s in _list(own["seeds"], "seeds")]
    if "tasks" in own:
        suite["tasks"] = [str(t) for t in _list(own["tasks"], "tasks")]
    suite["common"] = list(suite["common"]) + train_ovr
    d = own.get("dir", "leaderboard")
    suite["_results_dir"], suite["_work_dir"] = os.path.join(d, "results"), os.path.join(d, "work")
    return suite


def _filter_only(jobs: list, only: str) -> list:
    import fnmatch

    pats = [p.strip() for p in only.strip("[]").split(",") if p.strip()]
    keep = {j.id for j in jobs if any(fnmatch.fnmatch(j.id, p) for p in pats)}
    # a kept stage-2/3 job brings its reward model along
    rms = {j.meta.get("rm_hash") for j in jobs if j.id in keep}
    return [j for j in jobs if j.id in keep or (j.stage == 1 and j.hash in rms)]


def cmd_run(own, hydra_ovr, train_ovr, dry: bool = False) -> int:
    from prefopt.leaderboard import store
    from prefopt.leaderboard.plan import plan, write_manifest

    threads = _threads(own, hydra_ovr)  # a bad value must stop the run before the plan is written
    suite = suite_for(own, train_ovr)
    res, work = suite["_results_dir"], suite["_work_dir"]
    print(f"prefopt-leaderboard: suite {suite['name']}: tasks {suite['tasks']}, report seeds {suite['seeds']}, "
          f"tuning seeds {suite['tuning_seeds']}; planning…", flush=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    rc, shown_notes = 0, set()
    # The report stage depends on the tuning stage's validation numbers: plan again before each stage.
    for stage in (1, 2, 3):
        jobs, notes = plan(suite, work, res)
        for n in notes:
            if n not in shown_notes and (dry or stage == 3 or not n.endswith(" in)")):
                print(f"  note: {n}")
                shown_notes.add(n)
        if "only" in own:
            jobs = _filter_only(jobs, own["only"])
        manifest = os.path.join(work, "plans", f"{suite['name']}-{stamp}-stage{stage}.json")
        write_manifest(manifest, suite, jobs)
        done = {j.id for j in jobs if store.has_result(res, j.hash)}
        if dry:
            print(f"  {len(jobs)} jobs planned now ({len(done)} already have a result); plan: {manifest}")
            for j in jobs:
                print(f"  [{'done' if j.id in done else 'todo'}] stage {j.stage} {j.id} {j.hash}")
            return 0
        todo = [j for j in jobs if j.stage == stage and j.id not in done]
        blocked = [j for j in todo if j.meta.get("rm_hash") and not store.has_result(res, j.meta["rm_hash"]) and stage > 1]
        todo = [j for j in todo if j not in blocked]
        for j in blocked:
            print(f"  stage {stage}: {j.id} skipped: its reward model ({j.meta['rm_hash']}) has no result")
        if not todo:
            print(f"  stage {stage}: nothing to run ({sum(j.stage == stage for j in jobs)} jobs, all done)")
            continue
        cmd = [sys.executable, "-m", "prefopt.leaderboard.job", "-m", f"manifest={manifest}",
               f"job={','.join(j.id for j in todo)}", f"threads={threads}",
               f"hydra.sweep.dir={os.path.join(work, 'multirun', suite['name'] + f'-{stamp}-stage{stage}')}",
               "hydra.sweep.subdir=${job}", *hydra_ovr]
        shown = " ".join(cmd[1:5] + [f"job=<{len(todo)} ids>"] + cmd[6:])
        print(f"  stage {stage}: {len(todo)} jobs: python {shown}", flush=True)
        p = subprocess.run(cmd)
        rc = rc or p.returncode
        ok = sum(store.has_result(res, j.hash) for j in todo)
        print(f"  stage {stage}: {ok}/{len(todo)} succeeded", flush=True)
        if ok < len(todo):
            rc = rc or 1
    return rc


def cmd_render(own) -> int:
    from prefopt.leaderboard.render import render

    d = own.get("dir", "leaderboard")
    report = render(d)
    for line in report:
        print(line)
    return 0


def main(argv=None):
    from hydra.errors import HydraException

    argv = sys.argv[1:] if argv is None else argv
    try:
        cmd, own, hydra_ovr, train_ovr = parse(argv)
        if cmd == "render":
            rc = cmd_render(own)
        else:
            rc = cmd_run(own, hydra_ovr, train_ovr, dry=cmd == "plan")
    except UserError as e:
        print(f"prefopt-leaderboard: error: {e}", file=sys.stderr)
        sys.exit(2)
    except HydraException as e:
        # An override that composes for some runs of the suite and not for others (planning composes
        # every run's config before anything runs).
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"prefopt-leaderboard: error: a key=value override does not fit every run of the suite: {first}; "
              "accepted: keys of conf/train.yaml that every run has", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("prefopt-leaderboard: interrupted; finished results are kept, `run` again continues", file=sys.stderr)
        sys.exit(130)
    sys.exit(rc)


if __name__ == "__main__":
    main()
