"""``prefopt-leaderboard``: run the protocol (reward models → tuning grid → report seeds), render the board.

    prefopt-leaderboard run suite=quick               # every stage at toy scale (minutes)
    prefopt-leaderboard run suite=standard hydra/launcher=joblib hydra.launcher.n_jobs=2   # the published board
    prefopt-leaderboard run suite=quick only='[*dpo*,*-s0-*]' stages=[1,2]   # some jobs, some stages
    prefopt-leaderboard plan suite=standard           # list the jobs and which are done, run nothing
    prefopt-leaderboard render                        # leaderboard/: LEADERBOARD.md, *.png, index.html, MANIFEST.json
    prefopt-leaderboard verify                        # the board against its results (exit 1: one missing or changed)

Options (key=value): ``suite`` (a name in conf/leaderboard/ or a YAML path), ``dir`` (default
``leaderboard``: results/ and the rendered files; scratch under work/), ``seeds=[0,1]`` (report seeds) and
``tasks=[reviews]`` (replace the suite's), ``only='[*dpo*,*-s0-*]'`` (job-id patterns, shell-style; the
reward model of a kept job comes along, trained before it), ``stages=[1,2]`` (run only those stages: 1 the
reward models, 2 the tuning grid, then its grid-edge extensions, 3 the report runs; ``plan`` lists only
their jobs), ``threads`` (torch threads per job; default: cores / jobs under the joblib launcher). A list
is ``[a,b]`` or a bare ``a``, read without YAML (``*dpo*`` would be a YAML alias); quotes around it or its
items are dropped. ``hydra/…`` and ``hydra.…`` overrides go to the Hydra multirun of each stage; any other
``key=value`` is a conf/train.yaml override added to every run of the suite.

``render`` also writes MANIFEST.json (every result it read, with the sha256 of its file) and says which results
of the previous manifest are missing or changed; ``verify`` (option ``dir`` only) checks a committed board
against results/: exit 0 when every result of its manifest is there with its sha256, 1 with one line per missing
or changed result.
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys

from prefopt.core.errors import UserError
from prefopt.leaderboard.suite import SEED_LIMIT, SEEDS_ACCEPTED

USAGE = "usage: prefopt-leaderboard {run,plan,render,verify} [suite=NAME] [dir=DIR] [key=value ...]"
COMMANDS = ("run", "plan", "render", "verify")
OWN = ("suite", "dir", "seeds", "tasks", "threads", "only", "stages")
# What each list option accepts, for its error messages.
LISTS = {"seeds": "a list of whole numbers 0 <= seed < 2**32, e.g. seeds=[0,1]",
         "tasks": "a list of task names, e.g. tasks=[reviews,arith] or tasks=reviews",
         "stages": "a list of stages among 1, 2, 3, e.g. stages=[1,2]",
         "only": "a list of job-id patterns, e.g. only=[*dpo*,*-s0-*] or only=*dpo*"}


def parse(argv: list) -> tuple[str, dict, list, list]:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        raise SystemExit(0)
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        raise UserError(f"unknown command '{cmd}'; accepted: {', '.join(COMMANDS)}")
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
    if cmd == "verify" and (set(own) - {"dir"} or hydra_ovr or train_ovr):
        other = next(iter(sorted(set(own) - {"dir"})), None) or (hydra_ovr + train_ovr)[0].split("=", 1)[0]
        raise UserError(f"verify: '{other}' does not apply (it checks a rendered board against its results); "
                        "accepted: dir=DIR")
    return cmd, own, hydra_ovr, train_ovr


def _check_own(own: dict) -> None:
    """The values of prefopt-leaderboard's own options, each checked before anything runs."""
    if "threads" in own:
        _int(own["threads"], "threads", "a whole number of torch threads per job, >= 0 (0: torch's default)", lo=0)
    for s in _items(own, "seeds"):
        if _int(s, "seeds", LISTS["seeds"], lo=0) >= SEED_LIMIT:
            raise UserError(f"seeds: {s} is too large; accepted: {SEEDS_ACCEPTED}")
    for s in _items(own, "stages"):
        if _int(s, "stages", LISTS["stages"], lo=1) > 3:
            raise UserError(f"stages: {s} is not a stage; accepted: {LISTS['stages']}")
    _items(own, "tasks")
    _items(own, "only")


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


def _items(own: dict, key: str) -> list:
    """The items of the list option ``key`` ([] when not given): ``[a,b]`` or a bare ``a``. Not YAML: it reads
    ``*dpo*`` as an alias. Shells and Hydra habits leave quotes in (``only=['*-rloo-*']``, ``only="[*dpo*]"``
    through a launcher that passes them on): quotes around the whole or an item would make a glob match
    nothing, so they are dropped."""
    if key not in own:
        return []
    v = own[key]
    s = _unquote(v.strip())
    if s.startswith("[") and s.endswith("]"):
        s = s[1:-1]
    elif s.startswith("["):
        raise UserError(f"{key}={v}: no closing ']'; accepted: {LISTS[key]}")
    items = [_unquote(x.strip()) for x in s.split(",")]
    if not all(items):
        raise UserError(f"{key}={v}: an empty list or item; accepted: {LISTS[key]}")
    return items


def _unquote(s: str) -> str:
    return s[1:-1].strip() if len(s) >= 2 and s[0] == s[-1] and s[0] in "'\"" else s


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


def suite_for(own: dict, train_ovr: list):
    """(suite, results dir, work dir): the suite with the command line's seeds=, tasks= and train overrides."""
    import dataclasses

    from prefopt.leaderboard.suite import check_tasks, load_suite

    suite = load_suite(own.get("suite", "quick"))
    changes = {"common": list(suite.common) + train_ovr}
    if "seeds" in own:
        changes["seeds"] = [int(s) for s in _items(own, "seeds")]
    if "tasks" in own:
        changes["tasks"] = _items(own, "tasks")
        check_tasks(changes["tasks"], "tasks", listed=suite.tasks)
    d = own.get("dir", "leaderboard")
    return dataclasses.replace(suite, **changes), os.path.join(d, "results"), os.path.join(d, "work")


def _matches(job_id: str, pats: list) -> bool:
    import fnmatch

    return any(fnmatch.fnmatchcase(job_id, p) for p in pats)


def _filter_only(jobs: list, only: str) -> list:
    """The jobs whose id matches a pattern of ``only``, and the reward models they train against (the stage-1
    job whose identity is a kept job's ``rm_hash``, in any role the job serves), whatever their ids."""
    pats = _items({"only": only}, "only")
    kept = [j for j in jobs if _matches(j.id, pats)]
    rms = {m.get("rm_hash") for j in kept for m in (j.meta, *(j.meta.get("also") or []))} - {None}
    keep = {j.id for j in kept} | {j.id for j in jobs if j.stage == 1 and j.hash in rms}
    return [j for j in jobs if j.id in keep]


def _unmatched(jobs: list, only: str) -> list:
    """The patterns of ``only`` that match no job (a typo shows before anything runs)."""
    return [p for p in _items({"only": only}, "only") if not any(_matches(j.id, [p]) for j in jobs)]


def cmd_run(own, hydra_ovr, train_ovr, dry: bool = False) -> int:
    from prefopt.leaderboard import plan as planning
    from prefopt.leaderboard import store
    from prefopt.leaderboard.jobs import write_manifest

    threads = _threads(own, hydra_ovr)  # a bad value must stop the run before the plan is written
    suite, res, work = suite_for(own, train_ovr)
    print(f"prefopt-leaderboard: suite {suite.name}: tasks {suite.tasks}, report seeds {suite.seeds}, "
          f"tuning seeds {suite.tuning_seeds}; planning…", flush=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    rc, shown_notes, launched = 0, set(), set()
    wanted = {int(s) for s in _items(own, "stages")} or {1, 2, 3}

    def launch(name: str, manifest: str, todo: list) -> int:
        cmd = [sys.executable, "-m", "prefopt.leaderboard.job", "-m", f"manifest={manifest}",
               f"job={','.join(j.id for j in todo)}", f"threads={threads}",
               f"hydra.sweep.dir={os.path.join(work, 'multirun', suite.name + f'-{stamp}-{name}')}",
               "hydra.sweep.subdir=${job}", *hydra_ovr]
        shown = " ".join(cmd[1:5] + [f"job=<{len(todo)} ids>"] + cmd[6:])
        print(f"  {name}: {len(todo)} jobs: python {shown}", flush=True)
        launched.update(j.id for j in todo)
        p = subprocess.run(cmd, check=False)  # a failed job is counted below, by its missing result
        ok = sum(store.has_result(res, j.hash) for j in todo)
        print(f"  {name}: {ok}/{len(todo)} succeeded", flush=True)
        return p.returncode or int(ok < len(todo))

    # The report stage depends on the tuning stage's validation numbers: plan again before each stage.
    # Stage 2 twice: its second pass runs the grid-edge extensions its first pass's results call for.
    for stage, name in ((1, "stage1"), (2, "stage2"), (2, "stage2-ext"), (3, "stage3")):
        if stage not in wanted and not dry:
            continue
        jobs, notes = planning.plan(suite, work, res)
        for n in notes:
            if n not in shown_notes and (dry or stage == 3 or not n.endswith(" in)")):
                print(f"  note: {n}")
                shown_notes.add(n)
        if "only" in own:
            for pat in _unmatched(jobs, own["only"]):
                if ("only", pat) not in shown_notes:
                    later = " (report runs join the plan once their tuning results are in)" if any(
                        n.endswith(" in)") for n in notes) else ""
                    print(f"  note: only=[{pat}]: matches none of the {len(jobs)} jobs planned now{later}")
                    shown_notes.add(("only", pat))
            jobs = _filter_only(jobs, own["only"])
        manifest = os.path.join(work, "plans", f"{suite.name}-{stamp}-{name}.json")
        write_manifest(manifest, suite, jobs, res, work)
        done = {j.id for j in jobs if store.has_result(res, j.hash)}
        if dry:
            listed = [j for j in jobs if j.stage in wanted]
            print(f"  {len(listed)} jobs planned now ({sum(j.id in done for j in listed)} already have a result); "
                  f"plan: {manifest}")
            for j in listed:
                print(f"  [{'done' if j.id in done else 'todo'}] stage {j.stage} {j.id} {j.hash}")
            return 0
        todo = [j for j in jobs if j.stage == stage and j.id not in done]
        if stage > 1 and 1 in wanted:
            # A reward model no earlier pass listed: under only=, a report run's or an ablation run's (planned
            # only once the grid's results are in). It trains first, here.
            need = {m.get("rm_hash") for j in todo for m in (j.meta, *(j.meta.get("also") or []))}
            rms = [j for j in jobs if j.stage == 1 and j.hash in need and j.id not in done and j.id not in launched]
            if rms:
                rc = launch(f"{name}-rm", manifest, rms) or rc
        blocked = [j for j in todo
                   if stage > 1 and j.meta.get("rm_hash") and not store.has_result(res, j.meta["rm_hash"])]
        todo = [j for j in todo if j not in blocked]
        for j in blocked:
            print(f"  stage {stage}: {j.id} skipped: its reward model ({j.meta['rm_hash']}) has no result"
                  + ("" if 1 in wanted else "; stages= leaves out stage 1"))
        if not todo:
            rest = f"{len(blocked)} skipped, the rest done" if blocked else "all done"
            print(f"  {name}: nothing to run ({sum(j.stage == stage for j in jobs)} jobs, {rest})")
            continue
        rc = launch(name, manifest, todo) or rc
    return rc


def cmd_render(own) -> int:
    from prefopt.leaderboard.render import render

    d = own.get("dir", "leaderboard")
    report = render(d)
    for line in report:
        print(line)
    return 0


def cmd_verify(own) -> int:
    from prefopt.leaderboard import manifest

    bad, summary = manifest.verify(own.get("dir", "leaderboard"))
    for line in bad:
        print(line)
    print(summary, file=sys.stderr if bad else sys.stdout)
    return 1 if bad else 0


def main(argv=None):
    from hydra.errors import HydraException

    argv = sys.argv[1:] if argv is None else argv
    try:
        cmd, own, hydra_ovr, train_ovr = parse(argv)
        if cmd == "render":
            rc = cmd_render(own)
        elif cmd == "verify":
            rc = cmd_verify(own)
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
