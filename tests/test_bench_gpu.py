"""``python -m prefopt.bench gpu-check --dry``: the GPU check's own code at tiny shapes on CPU.

What the CPU can check of it: the float64 reference it judges the kernels by (against autograd),
that every section runs and reports, that the report says it is not a GPU measurement, and, through
the same workers as the CPU benchmark, that a LoRA DPO step's first loss equals TRL's.  No timing
is asserted.
"""

import importlib.util
import json

import pytest
import torch

from prefopt.bench import gpu as bench_gpu


def test_reference64_matches_autograd():
    # the chunked float64 reference's closed-form gradient against float64 autograd
    h, w, b, t, g_lp, g_ent = bench_gpu.random_problem(50, 12, 77, torch.float64, torch.device("cpu"), True, seed=3)
    lp, ent, gh, gw = bench_gpu.reference64(h, w, b, t, g_lp, g_ent, temperature=0.7, rows=16)
    hh, ww = h.clone().requires_grad_(), w.clone().requires_grad_()
    logp = torch.log_softmax((hh @ ww.T + b) / 0.7, -1)
    valid = t != -100
    tt = torch.where(valid, t, 0)
    lp2 = torch.where(valid, logp.gather(1, tt[:, None]).squeeze(1), 0.0)
    ent2 = torch.where(valid, -(logp.exp() * logp).sum(-1), 0.0)
    (lp2 * g_lp + ent2 * g_ent).sum().backward()
    for a, e in ((lp, lp2), (ent, ent2), (gh, hh.grad), (gw, ww.grad)):
        torch.testing.assert_close(a, e.detach(), rtol=1e-10, atol=1e-12)


def test_dry_run_writes_json_and_markdown(tmp_path, capsys):
    rc = bench_gpu.main(["--dry", "--skip-trainer", "--out-dir", str(tmp_path)])
    rep = json.loads((tmp_path / "gpu_check.json").read_text())
    md = (tmp_path / "gpu_check.md").read_text()
    assert rc == 0 and rep["dry"] and rep["all_correct"] and not rep["errors"]
    assert "dry run, not a GPU" in rep["device"] and "not GPU figures" in md
    ran = [r for r in rep["correctness"] if "errors" in r]
    assert {(r["dtype"], r["impl"]) for r in ran} == {("float32", "torch"), ("bfloat16", "torch")}
    assert all(r["passed"] for r in ran)
    assert all("skipped" in r for r in rep["correctness"] if r["impl"] == "triton")  # no CUDA, no interpreter
    provs = {r["provider"]: r for r in rep["timing"]}
    assert {"naive", "ours (auto)", "ours (torch path)", "Liger fused linear CE"} <= set(provs)
    for name in ("naive", "ours (auto)"):
        assert provs[name]["fwd_bwd_s"] > 0 and 0 < provs[name]["fraction_of_matmul_rate"]
    assert rep["matmul"]["tflops"] > 0 and rep["device"] in md


@pytest.mark.skipif(importlib.util.find_spec("trl") is None, reason="trl is not installed (the bench extra)")
def test_dry_trainer_steps_lora_dpo_loss_equals_trl(tmp_path):
    # the DPO pair through gpu-check's section (c) as it runs on CUDA: one subprocess per provider
    rep = bench_gpu.trainer_steps(torch.device("cpu"), bench_gpu.DRY, str(tmp_path), workloads=("real-dpo-lora",))
    dpo = rep["results"]["real-dpo-lora"]
    assert "error" not in dpo["prefopt"] and "error" not in dpo["trl"], dpo
    # LoRA on both sides, the same adapters, the reference = adapters disabled: the same first-step loss
    assert abs(dpo["prefopt"]["first_loss"] - 0.693147) > 1e-3
    assert abs(dpo["prefopt"]["first_loss"] - dpo["trl"]["first_loss"]) < 1e-5
    assert rep["model"]["vocab_size"] == 1000 and rep["ratios"]["real-dpo-lora"]["step_mem"] > 0


def test_lora_grpo_worker_at_a_tiny_real_shape(tmp_path):
    # the GRPO worker of section (c) in this process (its subprocess would spend its time on imports)
    from prefopt.bench.workers import REAL_GRPO, prefopt_grpo, workload_spec
    from prefopt.bench.world import REAL_ARCH, build_world

    arch = dict(REAL_ARCH, **bench_gpu.TINY_ARCH)
    world = build_world(str(tmp_path / "w"), n_rows=16, shape="real", arch=arch, vocab=1000)
    res = prefopt_grpo(world, 0, 1, workload_spec("real-grpo-lora"))
    n = REAL_GRPO["prompts_per_step"] * REAL_GRPO["samples_per_prompt"]
    assert res["completions"] == [n] and res["tokens"][0] > n and res["gen_s"][0] > 0
    assert res["rss_before_first_step_mb"] > 0
