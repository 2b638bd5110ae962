"""One leaderboard job, the task function of the Hydra multirun that `prefopt-leaderboard run` starts:

    python -m prefopt.leaderboard.job -m manifest=PLAN.json job=ID1,ID2,... [hydra/launcher=joblib]

A job reads its overrides from the plan, composes conf/train.yaml with them, checks the config hash,
skips if ``results/<hash>.json`` already holds a successful result, otherwise runs
:class:`prefopt.run.Run` into ``work/runs/<hash>/`` and writes the result atomically. A failure is
recorded as ``status: failed`` with its error (shown by ``render``, retried by the next ``run``);
the sweep goes on.
"""

from __future__ import annotations

import datetime
import os
import shutil
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Optional

from prefopt.leaderboard import store
from prefopt.leaderboard.identity import code_version
from prefopt.run.summary import cpu_capability


@dataclass
class JobAppConfig:
    manifest: str = "???"
    job: str = "???"
    threads: int = 0  # torch threads per job; 0: leave torch's default


def _git_commit() -> Optional[str]:
    """HEAD of the checkout prefopt runs from, "+dirty" when its tracked files differ (None outside git)."""
    import subprocess

    here = os.path.dirname(os.path.abspath(__file__))
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head.stdout.strip()[:12] + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # Linux ≥ 4.0: reset the peak RSS (VmHWM) to the current RSS
        return True
    except OSError:
        return False


def _peak_rss_mb() -> Optional[float]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def run_job(manifest_path: str, job_id: str, threads: int = 0, console=None) -> dict:
    """Run (or skip) one job of a plan; returns {"status": ..., "hash": ...}."""
    from filelock import FileLock

    from prefopt.leaderboard.jobs import read_manifest

    m = read_manifest(manifest_path)
    if job_id not in m["jobs"]:
        raise SystemExit(f"prefopt-leaderboard: job '{job_id}' is not in {manifest_path}")
    job = m["jobs"][job_id]
    results_dir, work_dir = m["results_dir"], m["work_dir"]
    if store.has_result(results_dir, job.hash):
        print(f"[leaderboard] {job_id}: result {job.hash} exists, skipped", flush=True)
        return {"status": "skipped", "hash": job.hash}
    os.makedirs(os.path.join(work_dir, "locks"), exist_ok=True)
    with FileLock(os.path.join(work_dir, "locks", f"{job.hash}.lock")):
        if store.has_result(results_dir, job.hash):
            return {"status": "skipped", "hash": job.hash}
        return _run_locked(job, results_dir, work_dir, threads, console)


def _run_locked(job, results_dir, work_dir, threads, console) -> dict:
    import torch

    from prefopt.core.errors import UserError

    if threads > 0:
        torch.set_num_threads(threads)
    run_dir = os.path.join(work_dir, "runs", job.hash)
    if os.path.exists(run_dir):
        shutil.rmtree(run_dir)  # an earlier attempt that left no result
    os.makedirs(run_dir)
    base = {"result_id": job.hash, "leaderboard": {**job.meta, "job": job.id, "stage": job.stage,
                                                       "kind": job.kind, "overrides": job.overrides,
                                                       "threads": torch.get_num_threads()},
            "result_version": store.RESULT_VERSION, "git_commit": _git_commit(), "cpu_capability": cpu_capability(),
            "code_version": code_version()}
    print(f"[leaderboard] {job.id}: running → {run_dir}", flush=True)
    t0 = time.perf_counter()
    _reset_peak_rss()
    try:
        if job.kind == store.BEST_OF_N:
            from prefopt.leaderboard.bon import run_best_of_n
            from prefopt.run.summary import versions

            from prefopt.leaderboard.jobs import spec_hash

            summary = run_best_of_n(job.spec, run_dir, console)
            summary.update(config_hash=spec_hash(job.spec), versions=versions(), peak_mem_mb=None, testbed=job.spec["testbed"])
        else:
            summary = _train(job, run_dir, console)
        rec = {**summary, **base, "status": "ok"}
        # Peak memory of this run alone: RSS high-water mark since the job started (the process-
        # lifetime figure of summary.json would carry over between jobs of one worker process).
        rec["peak_mem_mb_process"] = summary.get("peak_mem_mb")
        rec["peak_mem_mb"] = _peak_rss_mb() if not torch.cuda.is_available() else summary.get("peak_mem_mb")
    except (Exception, SystemExit) as e:  # noqa: BLE001 — recorded and shown, the sweep goes on
        msg = str(e) if isinstance(e, UserError) else "".join(traceback.format_exception_only(type(e), e)).strip()
        print(f"[leaderboard] {job.id}: FAILED: {msg}", file=sys.stderr, flush=True)
        if not isinstance(e, UserError):
            traceback.print_exc()
        rec = {**base, "config_hash": None, "status": "failed", "error": msg[-2000:],
               "wall_time_s": round(time.perf_counter() - t0, 3)}
    rec["finished_at"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    store.write_result(results_dir, rec)
    print(f"[leaderboard] {job.id}: {rec['status']} in {time.perf_counter() - t0:.1f}s", flush=True)
    return {"status": rec["status"], "hash": job.hash}


def _train(job, run_dir, console) -> dict:
    from omegaconf import OmegaConf

    from prefopt.leaderboard.identity import result_id
    from prefopt.leaderboard.jobs import compose
    from prefopt.run.api import Run
    from prefopt.run.resume import config_hash

    cfg = compose(job.overrides)
    h = config_hash(cfg)
    if result_id(h, code_version(), cpu_capability()) != job.hash:
        # conf/ changed while the suite ran (a new key, a new default). The result is filed under the
        # plan's hash (dependants find it there) and keeps the hash it really ran under; the next
        # `run` plans the new hash, finds no result for it, and runs it again.
        print(f"[leaderboard] {job.id}: warning: identity of config {h} differs from the plan's {job.hash} (conf/, the "
              "code or the machine changed since planning)", file=sys.stderr, flush=True)
    # The run writes .hydra/ (config, resolved config, the job's overrides) once its checks pass.
    summary = Run(job.overrides, cfg=cfg, out_dir=run_dir, console=console).train().summary
    summary["run_config_hash"] = h
    summary["trajectory"], summary["train_first_last"] = read_curves(os.path.join(run_dir, "metrics.jsonl"))
    if summary["trajectory"] and isinstance(summary.get("eval_periodic"), dict):
        # Step 0 is π_SFT itself: KL 0, its own gold (and proxy) reward on the same validation prompts.
        ep = summary["eval_periodic"]
        summary["trajectory"].insert(0, {"step": 0, "gold_reward": ep.get("gold_reward_ref"), "kl_to_ref": 0.0,
                                         "proxy_reward": ep.get("proxy_reward_ref"),
                                         "mean_length": ep.get("mean_length_ref")})
    tb = cfg.data.get("testbed") if "data" in cfg else None
    summary["testbed"] = OmegaConf.to_container(tb, resolve=True) if tb is not None else None
    return summary


# Training metrics whose first and last values the board's sanity checks read (DPO-family margins and
# chosen log-probs); the rest of metrics.jsonl stays in the run directory.
TRACKED = ("loss", "logps/chosen", "logps/rejected", "rewards/margin", "rewards/accuracy", "kl")
CURVE = ("gold_reward", "kl_to_ref", "proxy_reward", "proxy_reward_ref", "gold_reward_ref", "mean_length",
         "win_rate_vs_ref",
         # with eval.periodic_test: the same step on the test prompts (reported only at a step chosen on validation)
         "test/gold_reward", "test/kl_to_ref")


def read_curves(path: str) -> tuple[list, dict]:
    """(validation trajectory [{step, gold_reward, kl_to_ref, ...}], {metric: [first, last]}) from metrics.jsonl."""
    import json

    traj, first, last = [], {}, {}
    if not os.path.exists(path):
        return traj, {}
    with open(path) as f:
        for line in f:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if any(k.startswith("eval/") for k in row):
                pt = {"step": row.get("step")}
                pt.update({k: row.get(f"eval/{k}") for k in CURVE if f"eval/{k}" in row})
                if traj and traj[-1]["step"] == pt["step"]:
                    traj[-1] = pt
                else:
                    traj.append(pt)
                continue
            for k in TRACKED:
                v = row.get(k)
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    first.setdefault(k, v)
                    last[k] = v
    return traj, {k: [first[k], last[k]] for k in first}


def main():
    import hydra
    from hydra.core.config_store import ConfigStore
    from omegaconf import DictConfig

    from prefopt.run.prepare import quiet_libraries

    ConfigStore.instance().store(name="leaderboard_job", node=JobAppConfig)

    @hydra.main(config_path="pkg://prefopt.conf", config_name="leaderboard_job", version_base=None)
    def app(cfg: DictConfig):
        quiet_libraries()
        return run_job(cfg.manifest, cfg.job, int(cfg.threads))

    app()


if __name__ == "__main__":
    main()
