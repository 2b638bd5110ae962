"""The roofline of ``python -m prefopt.bench``: FLOP and byte counts against a hand count from the
architecture, the fraction arithmetic, the phase clock, the tables, and the rates subcommand at tiny
sizes. No timing is asserted (speed is the benchmark's business)."""

import json
import math

import pytest

from prefopt.bench import phases, roofline

# A tiny Llama: 2 layers, hidden 8, intermediate 24, 4 query heads and 2 key-value heads of size 2,
# 40-token vocabulary, tied embeddings; LoRA rank 2 on q_proj and v_proj.
CFG = dict(model_type="llama", num_hidden_layers=2, hidden_size=8, intermediate_size=24, num_attention_heads=4,
           num_key_value_heads=2, vocab_size=40, tie_word_embeddings=True)
LORA = {"r": 2, "target_modules": ["q_proj", "v_proj"]}
L, D, I, H, HKV, HD, V, R = 2, 8, 24, 4, 2, 2, 40, 2


def _hand_decoder_params():
    # per layer: q [8→8], k [8→4], v [8→4], o [8→8], gate and up [8→24], down [24→8]
    return L * (D * H * HD + 2 * D * HKV * HD + H * HD * D + 3 * D * I)


def _hand_lora_params():
    # LoRA on a linear in→out: A [r, in] and B [out, r]
    return L * (R * (D + H * HD) + R * (D + HKV * HD))


def _hand_keys(items):
    """Σ over every query position of the keys it attends to (causal; a branch sees the trunk and itself)."""
    n = 0
    for P, branches in items:
        n += sum(q + 1 for q in range(P))
        for b in branches:
            n += sum(P + q + 1 for q in range(b))
    return n


def test_parameter_counts_match_the_architecture():
    s = roofline.ModelShape.from_config(CFG, LORA)
    assert s.head_dim == HD and s.kv_heads == HKV and s.tied
    assert s.decoder_matmul_params == _hand_decoder_params() == 1536
    assert s.head_params == D * V == 320
    assert s.lora_params == _hand_lora_params() == 112
    assert s.kv_elements_per_token() == 2 * L * HKV * HD


def test_parameter_counts_match_a_built_model():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(**{k: v for k, v in CFG.items() if k != "model_type"}, head_dim=HD)
    model = transformers.LlamaForCausalLM(cfg)
    linears = sum(m.weight.numel() for m in model.model.layers.modules() if isinstance(m, torch.nn.Linear))
    s = roofline.ModelShape.from_config(cfg.to_dict(), LORA)
    assert s.decoder_matmul_params == linears
    assert s.head_params == model.lm_head.weight.numel()


def test_forward_and_backward_flops_against_a_hand_count():
    s = roofline.ModelShape.from_config(CFG, LORA)
    items, scored = [[3, [2, 4]], [5, []]], 7  # a DPO-like pair (prompt 3, completions 2 and 4) and a plain sequence
    T = 3 + 2 + 4 + 5
    keys = _hand_keys(items)
    assert roofline.attention_pairs(items) == keys == (6 + 9 + 22) + 15
    lin, lora = 2 * _hand_decoder_params() * T, 2 * _hand_lora_params() * T
    attn = 2 * 2 * H * HD * L * keys  # QKᵀ and AV, 2·H·h FLOPs each per (query, key) pair and layer
    head = 2 * D * V * scored
    f = roofline.pass_flops(s, items, scored, "lora")
    assert f["tokens"] == T
    assert f["forward"] == lin + lora + attn + head
    # LoRA: frozen base and head → input gradients only (1×); LoRA and attention products → 2×
    assert f["backward"] == lin + 2 * lora + 2 * attn + head
    full = roofline.pass_flops(roofline.ModelShape.from_config(CFG), items, scored, "full")
    assert full["backward"] == 2 * full["forward"] == 2 * (lin + attn + head)
    assert "backward" not in roofline.pass_flops(s, items, scored)
    with pytest.raises(ValueError, match="accepted"):
        roofline.pass_flops(s, items, scored, "qlora")


def test_generation_passes_against_a_hand_count():
    s = roofline.ModelShape.from_config(CFG, LORA)
    call = {"prompts": [3, 5], "samples_per_prompt": 2, "completions": [2, 3, 1, 0]}
    e_w, e_kv = 4, 2
    passes = roofline.generation_passes(s, call, e_w, e_kv)
    w = (_hand_decoder_params() + _hand_lora_params() + D * V) * e_w
    prefill = 2 * (_hand_decoder_params() + _hand_lora_params()) * 8 + 4 * H * HD * L * _hand_keys([[3, []], [5, []]]) \
        + 2 * D * V * 2
    assert passes[0] == (prefill, w)
    # decode step j feeds the sequences with c − 1 ≥ j at context P + j: step 1 → the two samples of
    # prompt 0 (contexts 4, 4); step 2 → its second sample only (context 5); prompt 1's samples end in the prefill
    per_tok = 2 * (_hand_decoder_params() + _hand_lora_params()) + 2 * D * V
    kv = 2 * L * HKV * HD * e_kv
    assert passes[1] == (2 * per_tok + 4 * H * HD * L * 8, w + kv * 8)
    assert passes[2] == (per_tok + 4 * H * HD * L * 5, w + kv * 5)
    assert len(passes) == 3


def test_fractions():
    assert roofline.fraction(50.0, 100.0) == 0.5
    assert math.isnan(roofline.fraction(1.0, 0.0))
    assert math.isnan(roofline.fraction(float("nan"), 1.0))
    assert math.isnan(roofline.fraction(1.0, None))
    # 2 steps, 1.0 s in the phase out of 4.0 s of steps, 100 GFLOP at a 100 GFLOP/s bound, 10 GB at 20 GB/s
    r = roofline._row("x", 1.0, 2, 4.0, flops=100e9, nbytes=10e9, bound_s=0.5, gemm=100e9, bw=20e9)
    assert r["s_per_step"] == 0.5 and r["share"] == 0.25
    assert r["gflop_per_step"] == 50 and r["gflop_per_s"] == 100 and r["gemm_fraction"] == 1.0
    assert r["gbyte_per_step"] == 5 and r["gbyte_per_s"] == 10 and r["bandwidth_fraction"] == 0.5
    assert r["bound_s_per_step"] == 0.25 and r["bound_fraction"] == 0.5


def _rates(gflop=100.0, gbyte=20.0):
    cpu = {"avx512_bf16": True, "amx_bf16": False, "cpu_capability": "AVX512", "torch_avx512_bf16": True,
           "torch_amx_tile": False, "native_bf16": True}
    gemm = {d: {"dtype": d, "shapes": [{"m": 4, "k": 4, "n": 4, "gflop_per_s": g}], "best_gflop_per_s": g, "native": True}
            for d, g in (("float32", gflop), ("bfloat16", 2 * gflop))}
    return {"torch_threads": 2, "cpu": cpu, "gemm": gemm, "seconds": 0.1,
            "copy": {"tensor_bytes": 2**20, "bytes_per_s": gbyte * 1e9, "repeats": 3, "l3_bytes": None,
                     "tensor_over_l3": None}}


def _synthetic_phases(compute="float32"):
    """Two steps of an online LoRA workload: generation, a reference pass, the loss, the optimizer."""
    gen = {"calls": [{"prompts": [3, 5], "samples_per_prompt": 2, "completions": [2, 3, 1, 0]}]}
    step = {"s": {"generation": 1.0, "logprob": 0.25, "loss_forward": 0.5, "loss_backward": 1.0, "optimizer": 0.05},
            "work": {"generation": gen, "logprob": {"items": [[3, [2]]], "scored": 2, "calls": 1},
                     "loss_forward": {"items": [[3, [2]]], "scored": 2, "calls": 1}}}
    return {"steps": [step, json.loads(json.dumps(step))], "model": CFG, "lora": LORA, "trainable_params": 112,
            "weight_bytes_per_element": 4, "compute_dtype": compute, "compute_bytes_per_element": 4}


def test_phase_roofline_on_synthetic_timings():
    rates = _rates()
    rf = roofline.phase_roofline(_synthetic_phases(), [3.0, 3.0], rates)
    rows = {r["phase"]: r for r in rf["rows"]}
    assert list(rows) == ["generation", "logprob", "loss", "optimizer", "other", "step"]
    assert rows["step"]["share"] == 1.0 and rows["step"]["s_per_step"] == 3.0
    assert sum(r["share"] for p, r in rows.items() if p != "step") == pytest.approx(1.0)
    assert rows["other"]["s_per_step"] == pytest.approx(3.0 - 2.8)
    s = roofline.ModelShape.from_config(CFG, LORA)
    R, BW = 100e9, 20e9
    f = roofline.pass_flops(s, [[3, [2]]], 2, "lora")
    assert rows["loss"]["gflop_per_step"] == pytest.approx((f["forward"] + f["backward"]) / 1e9)
    assert rows["loss"]["s_per_step"] == 1.5
    assert rows["loss"]["gemm_fraction"] == pytest.approx((f["forward"] + f["backward"]) / 1.5 / R)
    assert rows["logprob"]["gflop_per_s"] == pytest.approx(f["forward"] / 0.25 / 1e9)
    passes = roofline.generation_passes(s, _synthetic_phases()["steps"][0]["work"]["generation"]["calls"][0], 4, 4)
    bound = sum(max(fl / R, b / BW) for fl, b in passes)
    assert rows["generation"]["bound_fraction"] == pytest.approx(bound / 1.0)
    assert rows["generation"]["bandwidth_fraction"] == pytest.approx(sum(b for _, b in passes) / 1.0 / BW)
    assert rows["generation"]["decode_steps_per_call"] == 2 and rows["generation"]["sequences_per_call"] == 4
    # AdamW: parameter, gradient and two moments read, parameter and moments written: 7 × 4 bytes each
    assert rows["optimizer"]["gbyte_per_step"] == pytest.approx(7 * 112 * 4 / 1e9)
    assert rows["optimizer"]["bound_fraction"] == pytest.approx(7 * 112 * 4 / BW / 0.05)
    # bf16 runs are measured against the bf16 rate
    bf = roofline.phase_roofline(_synthetic_phases("bfloat16"), [3.0, 3.0], rates)
    assert bf["gemm_bound_gflop_per_s"] == 200.0
    assert {r["phase"]: r for r in bf["rows"]}["loss"]["gemm_fraction"] == pytest.approx(rows["loss"]["gemm_fraction"] / 2)


def test_tables_render():
    rates = _rates()
    rf = roofline.phase_roofline(_synthetic_phases(), [3.0, 3.0], rates)
    text = roofline.roofline_table("smol-grpo-lora", rf)
    lines = text.splitlines()
    assert "smol-grpo-lora" in lines[0] and "GEMM 100.0 GFLOP/s" in lines[0] and "copy 20.0 GB/s" in lines[0]
    body = [x for x in lines if x.startswith("| ")]
    assert len(body) == 1 + 6  # header + one row per phase
    assert all(x.count("|") == body[0].count("|") for x in body)
    assert any(x.startswith("| loss forward + backward | 1.500 | 50% |") for x in body)
    assert "(bandwidth)" in text and "(GEMM)" in text
    rt = roofline.rates_table(rates)
    assert "**float32 GEMM bound**" in rt and "**copy bandwidth**" in rt and "avx512_bf16 yes" in rt
    assert "not computed (KeyError: x)" in roofline.roofline_table("w", {"error": "KeyError: x"})


def test_workload_rooflines_pool_rounds():
    runs = [{"step_s": [3.0, 3.0], "phases": _synthetic_phases()}, {"error": "timed out"}]
    out = roofline.workload_rooflines({"w": {"prefopt": {"runs": runs}}, "dpo": {"trl": {"runs": []}}}, _rates())
    assert list(out) == ["w"] and out["w"]["steps"] == 2


def test_best_rates_takes_each_best():
    a, b = _rates(100, 20), _rates(120, 10)
    best = roofline.best_rates(a, b, None)
    assert best["gemm"]["float32"]["best_gflop_per_s"] == 120
    assert best["copy"]["bytes_per_s"] == 20e9
    assert a["gemm"]["float32"]["best_gflop_per_s"] == 100  # the inputs are left as they were


def test_rates_subcommand_at_tiny_sizes(tmp_path, capsys):
    from prefopt.bench.__main__ import main

    out = tmp_path / "rates.json"
    main(["roofline", "--shapes", "16x16x16,8x32x16", "--copy-mib", "1", "--repeats", "1", "--out", str(out)])
    text = capsys.readouterr().out
    assert "float32 GEMM bound" in text and "copy bandwidth" in text
    rep = json.loads(out.read_text())
    r = rep["rates"]
    assert r["torch_threads"] >= 1 and set(r["gemm"]) == {"float32", "bfloat16"}
    assert [(x["m"], x["k"], x["n"]) for x in r["gemm"]["float32"]["shapes"]] == [(16, 16, 16), (8, 32, 16)]
    assert r["gemm"]["float32"]["best_gflop_per_s"] > 0 and r["copy"]["bytes_per_s"] > 0
    assert r["copy"]["tensor_bytes"] == 2**20
    assert isinstance(r["cpu"]["native_bf16"], bool) and "cpu_capability" in r["cpu"]
    assert "machine" in rep and "load_average_before" in rep


# ---- the phase clock ---------------------------------------------------------------------------

class _FakeTime:
    """A perf_counter that advances only when told to."""

    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_phase_clock_times_are_exclusive(monkeypatch):
    fake = _FakeTime()
    monkeypatch.setattr(phases.time, "perf_counter", fake)
    clock = phases.PhaseClock()

    def ref():
        fake.t += 2.0

    inner = clock.timed("logprob", ref)

    def loss():
        fake.t += 1.0
        inner()
        fake.t += 0.5

    outer = clock.timed("loss_forward", loss)
    clock.begin_step()
    outer()
    st = clock.end_step()
    assert st["s"]["logprob"] == 2.0 and st["s"]["loss_forward"] == 1.5
    clock.begin_step()
    st = clock.end_step(generation_s=0.7)  # the pipeline's own generation timer is taken as given
    assert st["s"]["generation"] == 0.7 and st["s"]["loss_forward"] == 0.0
    tot = phases.totals(clock.steps)
    assert tot["s"]["logprob"] == 2.0 and tot["s"]["generation"] == 0.7


def test_phase_clock_counts_the_outermost_call_once():
    torch = pytest.importorskip("torch")
    clock = phases.PhaseClock()
    seq = lambda a, kw: ([[a[0], []]], a[0] - 1)  # noqa: E731
    single = clock.counted(lambda n: n, seq, "logprob")
    both = clock.counted(lambda n: single(n) + single(n), lambda a, kw: ([[a[0], [1, 1]]], 2), "logprob")
    clock.begin_step()
    both(4)
    single(3)
    with torch.no_grad():
        clock.counted(lambda n: n, seq)(5)  # no autograd: a log-prob pass
    clock.counted(lambda n: n, seq)(6)  # autograd recording: the loss's forward
    st = clock.end_step()
    assert st["work"]["logprob"] == {"items": [[4, [1, 1]], [3, []], [5, []]], "scored": 2 + 2 + 4, "calls": 3}
    assert st["work"]["loss_forward"] == {"items": [[6, []]], "scored": 5, "calls": 1}


def test_pair_items_share_the_prompt():
    torch = pytest.importorskip("torch")
    # prompt [5, 6, 7]; chosen adds 2 tokens, rejected 3; right padding with 0
    batch = {"chosen_input_ids": torch.tensor([[5, 6, 7, 1, 2, 0]]),
             "chosen_attention_mask": torch.tensor([[1, 1, 1, 1, 1, 0]]),
             "chosen_loss_mask": torch.tensor([[0, 0, 0, 1, 1, 0]]),
             "rejected_input_ids": torch.tensor([[5, 6, 7, 1, 3, 4]]),
             "rejected_attention_mask": torch.tensor([[1, 1, 1, 1, 1, 1]]),
             "rejected_loss_mask": torch.tensor([[0, 0, 0, 1, 1, 1]])}
    # the sides agree on token 1 after the prompt, but the loss masks put the prompt's end at 3
    assert phases._pair_items(batch) == ([[3, [2, 3]]], 5)
    items, scored = phases._sequence_items(batch["rejected_input_ids"], batch["rejected_attention_mask"],
                                           batch["rejected_loss_mask"])
    assert items == [[6, []]] and scored == 3


# ---- the workers' phases, in this process at a tiny real shape -----------------------------------

@pytest.mark.parametrize("workload", ["real-dpo-lora", "real-grpo-lora"])
def test_workers_record_phases_the_roofline_reads(tmp_path, workload):
    torch = pytest.importorskip("torch")
    pytest.importorskip("peft")
    from prefopt.bench import gpu
    from prefopt.bench.workers import WORKERS, workload_spec
    from prefopt.bench.world import REAL_ARCH, build_world

    world = build_world(str(tmp_path / "w"), n_rows=16, shape="real", arch=dict(REAL_ARCH, **gpu.TINY_ARCH), vocab=1000)
    spec = workload_spec(workload)
    backward = torch.Tensor.backward
    res = WORKERS[("prefopt", spec["kind"])](world, 0, 1, spec)
    assert torch.Tensor.backward is backward  # the process-wide wrapper is gone after the run
    ph = res["phases"]
    assert ph["lora"]["r"] > 0 and ph["compute_dtype"] == "float32" and ph["trainable_params"] > 0
    st = ph["steps"][0]
    assert st["s"]["loss_forward"] > 0 and st["s"]["loss_backward"] > 0 and st["s"]["optimizer"] > 0
    assert sum(st["s"].values()) <= res["step_s"][0]
    loss = st["work"]["loss_forward"]
    if spec["kind"] == "dpo":  # the reference pass inside the loss is its own phase, prompt counted once
        assert st["s"]["logprob"] > 0 and st["work"]["logprob"]["items"] == loss["items"]
        assert all(len(br) == 2 for _, br in loss["items"]) and len(loss["items"]) == spec["hp"]["pairs_per_step"]
    else:  # π_old comes from the sampler and there is no KL term: no log-prob pass
        calls = st["work"]["generation"]["calls"]
        n = spec["hp"]["prompts_per_step"] * spec["hp"]["samples_per_prompt"]
        assert len(calls) == 1 and len(calls[0]["completions"]) == n and st["s"]["generation"] == res["gen_s"][0]
        assert st["s"]["logprob"] == 0 and len(loss["items"]) == n
        # every completion token is scored
        assert loss["scored"] == sum(calls[0]["completions"])
    rf = roofline.phase_roofline(ph, res["step_s"], _rates())
    assert rf["train"] == "lora" and rf["rows"][-1]["phase"] == "step"


def test_throughput_run_prints_the_roofline_after_its_table(tmp_path, monkeypatch, capsys):
    # the wiring of ``python -m prefopt.bench`` with the world, the workers and the rates stubbed
    import prefopt.bench.throughput as bench

    def run_one(world, provider, workload, warmup, steps, spec=None, timeout=None):
        return {"step_s": [3.0, 3.0], "cpu_s": [3.0, 3.0], "tokens": [100, 100], "completions": [8, 8],
                "gen_s": [1.0, 1.0], "peak_rss_mb": 1000.0, "step_mem_mb": 100.0, "rss_before_first_step_mb": 900.0,
                "phases": _synthetic_phases()}

    monkeypatch.setattr(bench, "build_world", lambda root, shape: {"shape": shape})
    monkeypatch.setattr(bench, "run_one", run_one)
    monkeypatch.setattr(bench.roofline, "measure_rates", lambda: _rates())
    out = tmp_path / "b.json"
    bench.main(["--workloads", "smol-grpo-lora,dpo", "--providers", "prefopt", "--rounds", "1", "--out", str(out)])
    text = capsys.readouterr().out
    assert text.index("| smol-grpo-lora | prefopt |") < text.index("float32 GEMM bound") < text.index(
        "roofline of smol-grpo-lora")
    assert "roofline of dpo" not in text  # auto: the real-model workloads only
    rep = json.loads(out.read_text())
    assert set(rep["roofline"]) == {"smol-grpo-lora"} and rep["rates"]["bounds"]["copy"]["bytes_per_s"] == 20e9
    bench.main(["--workloads", "smol-grpo-lora", "--providers", "prefopt", "--rounds", "1", "--roofline", "off",
                "--out", str(out)])
    assert "roofline of" not in capsys.readouterr().out and json.loads(out.read_text())["roofline"] == {}
