"""Sweeps over the offline methods: one run directory and summary per job, sequentially and with
Hydra's joblib launcher in parallel (jobs sharing the testbed and reference caches safely)."""

import json
import os
import subprocess
import sys

import pytest

QUICK = ["data.num_rows=64", "trainer.max_steps=1", "trainer.progress=false", "trainer.eval_at_end=false",
         "trainer.save_model=false", "trainer.examples_per_step=16", "trainer.examples_per_device=16"]


def sweep(tmp_path, *args):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    p = subprocess.run([sys.executable, "-m", "prefopt.cli.train", "-m", *args, *QUICK], cwd=tmp_path,
                       capture_output=True, text=True, env=env, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def summaries(root):
    out = {}
    for dirpath, _, files in os.walk(root):
        if "summary.json" in files:
            s = json.load(open(os.path.join(dirpath, "summary.json")))
            assert os.path.exists(os.path.join(dirpath, "metrics.jsonl"))
            out[dirpath] = s
    return out


@pytest.mark.slow
def test_sweep_over_offline_methods_from_a_clean_state(tmp_path):
    # Default sweep directory (multirun/DATE/STAMP/N_ALGO_sSEED), nothing passed but the sweep.
    sweep(tmp_path, "algo=dpo,ipo,kto,orpo,simpo", "seed=0,1")
    found = summaries(tmp_path / "multirun")
    assert len(found) == 10 and len(set(found)) == 10
    assert {(s["algo"], s["seed"]) for s in found.values()} == {(a, k) for a in ("dpo", "ipo", "kto", "orpo", "simpo")
                                                                 for k in (0, 1)}
    assert len({os.path.dirname(d) for d in found}) == 1  # one sweep directory


@pytest.mark.slow
def test_joblib_launcher_runs_jobs_in_parallel_without_clobbering(tmp_path, monkeypatch):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    # A fresh reference cache: both jobs want the same entry at the same time (lock + atomic rename).
    cache = tmp_path / "cache"
    os.makedirs(cache / "testbed")
    src = os.path.join(os.environ["PREFOPT_CACHE"], "testbed")
    for name in os.listdir(src):  # reuse the suite's testbed world (read-only links)
        if not name.endswith(".lock"):
            os.symlink(os.path.join(src, name), cache / "testbed" / name)
    monkeypatch.setenv("PREFOPT_CACHE", str(cache))
    sweep(tmp_path, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "algo=dpo", "algo.precompute_ref=true",
          "seed=0,1")
    found = summaries(tmp_path / "multirun")
    assert sorted(s["seed"] for s in found.values()) == [0, 1]
    ref = [f for f in os.listdir(cache / "reference_logps") if f.endswith(".pt")]
    assert len(ref) == 1 and not [f for f in os.listdir(cache / "reference_logps") if ".tmp-" in f]
    # The one entry is complete: both sides of every pair.
    import torch

    entry = torch.load(cache / "reference_logps" / ref[0])
    assert set(entry) == {"chosen", "rejected"}
