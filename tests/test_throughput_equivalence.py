"""Every throughput optimization leaves the numbers unchanged (timings are the benchmark's job,
``python -m prefopt.bench``; no test here asserts one):

- padding-free packed log-probs equal the padded ones;
- chosen and rejected through one shared-prompt forward equal two separate forwards (values and
  gradients), and a DPO loss computed either way is the same;
- the decode loop with its KV cache samples the same tokens as recomputing every step, for the same
  seed, and its log-probs are the scorer's;
- prefopt's first-step DPO loss equals TRL's DPOTrainer's on the same weights and batch (skipped
  when trl is not installed).
"""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from prefopt.models.logprobs import Scorer, pair_token_stats, packed_token_stats, token_stats
from prefopt.models.load import FrozenReference
from prefopt.objectives.dpo import DPO
from prefopt.models.packing import pack, shared_prompt_lengths
from prefopt.rollout.sampler import DecodeLoop, HFSampler, SamplingConfig, Samples

PAD, EOS, V = 0, 3, 64


def tiny(seed=0, kv_heads=2):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=kv_heads, max_position_embeddings=128, tie_word_embeddings=False,
                      pad_token_id=PAD, eos_token_id=EOS)
    return LlamaForCausalLM(cfg).float()


def paired_batch(seed=0, B=5):
    from prefopt.data.tokenize import collate

    g = torch.Generator().manual_seed(seed)
    r = lambda lo, hi: torch.randint(4, V, (int(torch.randint(lo, hi + 1, (1,), generator=g)),), generator=g).tolist()  # noqa: E731
    ex = [{"row": i, "prompt_ids": r(1, 9), "chosen_ids": r(1, 12) + [EOS], "rejected_ids": r(1, 12) + [EOS]}
          for i in range(B)]
    return collate(ex, "paired", PAD)


def sides(b):
    return [tuple(b[f"{s}_{k}"] for k in ("input_ids", "attention_mask", "loss_mask")) for s in ("chosen", "rejected")]


@pytest.mark.parametrize("row_tokens", [8, 40, 256])
def test_packed_logprobs_equal_padded(row_tokens):
    model = tiny()
    a, b = sides(paired_batch())
    for ids, am, lm in (a, b):
        ref = token_stats(model, ids, am, lm)
        got = packed_token_stats(model, ids, am, lm, row_tokens=row_tokens)
        assert torch.equal(got.mask, ref.mask)
        torch.testing.assert_close(got.logps, ref.logps, atol=1e-5, rtol=0)


def test_pack_layout():
    items = [(torch.tensor([5, 6, 7]), [torch.tensor([8, 9]), torch.tensor([10])]), (torch.tensor([11, 12]), [])]
    pk = pack(items, PAD, row_tokens=16)
    assert pk.real_tokens == 8 and pk.input_ids.shape[0] == 1
    m = pk.attention_mask[0, 0]
    flat = pk.input_ids.view(-1).tolist()
    where = {t: flat.index(t) for t in range(5, 13)}
    assert not m[where[10], where[8]] and not m[where[10], where[9]]  # branches do not see each other
    assert m[where[10], where[7]] and m[where[9], where[5]]  # both see the shared prompt
    assert not m[where[11], where[7]]  # items do not see each other
    assert pk.position_ids.view(-1)[where[10]] == 3 and pk.position_ids.view(-1)[where[9]] == 4


@pytest.mark.parametrize("row_tokens", [8, 256])
def test_shared_prompt_equals_two_forwards_values_and_gradients(row_tokens):
    model = tiny()
    a, b = sides(paired_batch(1))
    sep = [token_stats(model, *a), token_stats(model, *b)]
    (sum(s.logps.sum() * (k + 1) for k, s in enumerate(sep))).backward()
    g_sep = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    shared = pair_token_stats(model, a, b, row_tokens=row_tokens)
    (sum(s.logps.sum() * (k + 1) for k, s in enumerate(shared))).backward()
    for s, t in zip(shared, sep):
        assert torch.equal(s.mask, t.mask)
        torch.testing.assert_close(s.logps, t.logps, atol=1e-5, rtol=0)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, g_sep[n], atol=1e-5, rtol=1e-4)


def test_dpo_loss_same_with_and_without_shared_prompt():
    model = tiny()
    ref = FrozenReference(tiny(seed=1))
    batch = paired_batch(2)
    obj = DPO(DPO.Config(beta=0.1))
    l1, m1 = obj.loss(batch, Scorer(model, ref, shared_prompt=True))
    l2, m2 = obj.loss(batch, Scorer(model, ref, shared_prompt=False))
    assert abs(float(l1) - float(l2)) < 1e-5
    assert abs(float(m1["logps/chosen"]) - float(m2["logps/chosen"])) < 1e-4


def test_different_prompts_fall_back_to_separate_forwards():
    a, b = sides(paired_batch(3))
    b = (b[0].clone(), b[1], b[2])
    b[0][0, 0] = (b[0][0, 0] + 1) % V  # row 0's prompts now differ
    assert shared_prompt_lengths(*a, *b) is None
    assert pair_token_stats(tiny(), a, b) is None


def _decode(model, prompts, seed, use_cache, cfg, group=1):
    s = HFSampler(PAD, EOS)
    out = Samples(completions=[], finished=[], logprobs=[])
    s._batch(model, prompts, cfg, torch.device("cpu"), out, "loop", torch.Generator().manual_seed(seed), use_cache,
             group=group)
    return out


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_shared_prefill_samples_what_each_row_would(kv_heads):
    """A prompt prefilled once for its group of samples: the same tokens and log-probs as every row
    prefilled on its own (left padding differs between the groups)."""
    model = tiny(kv_heads=kv_heads)
    prompts = [[5, 6, 7, 8], [9, 10], [11, 12, 13, 14, 15, 16]]
    K = 3
    flat = [p for p in prompts for _ in range(K)]
    cfg = SamplingConfig(temperature=0.9, max_new_tokens=10, samples_per_prompt=K)
    for seed in (0, 1):
        shared = _decode(model, flat, seed, True, cfg, group=K)
        alone = _decode(model, flat, seed, True, cfg, group=1)
        assert shared.completions == alone.completions and shared.finished == alone.finished
        for x, y in zip(shared.logprobs, alone.logprobs):
            torch.testing.assert_close(torch.tensor(x), torch.tensor(y), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kv_heads", [4, 2])
@pytest.mark.parametrize("top_k,top_p", [(0, 1.0), (8, 0.9)])
def test_cached_decoding_samples_the_same_tokens_as_uncached(kv_heads, top_k, top_p):
    model = tiny(kv_heads=kv_heads)
    assert DecodeLoop.supports(model)
    prompts = [[5, 6, 7, 8], [9, 10], [11, 12, 13, 14, 15, 16], [17]]
    cfg = SamplingConfig(temperature=0.9, top_k=top_k, top_p=top_p, max_new_tokens=12)
    for seed in (0, 1):
        c = _decode(model, prompts, seed, True, cfg)
        u = _decode(model, prompts, seed, False, cfg)
        assert c.completions == u.completions and c.finished == u.finished
        for x, y in zip(c.logprobs, u.logprobs):
            torch.testing.assert_close(torch.tensor(x), torch.tensor(y), atol=1e-5, rtol=0)


def test_decode_loop_logprobs_are_the_scorers_and_stop_at_eos():
    from prefopt.data.tokenize import pad_batch as build_sequences

    model = tiny()
    prompts = [[5, 6, 7], [9, 10, 11, 12, 13]]
    cfg = SamplingConfig(temperature=1.0, max_new_tokens=16, samples_per_prompt=3)
    s = HFSampler(PAD, EOS).sample(model, prompts, cfg, seed=3, return_logprobs=True)
    flat = [p for p in prompts for _ in range(3)]
    for c, f in zip(s.completions, s.finished):
        assert (c[-1] == EOS) == f and EOS not in c[:-1]
    b = build_sequences(flat, s.completions, PAD)
    ts = token_stats(model, b["input_ids"], b["attention_mask"], b["loss_mask"])
    for i, lp in enumerate(s.logprobs):
        torch.testing.assert_close(ts.logps[i][ts.mask[i]], torch.tensor(lp), atol=1e-5, rtol=0)
    again = HFSampler(PAD, EOS).sample(model, prompts, cfg, seed=3)
    assert again.completions == s.completions


@pytest.mark.skipif(importlib.util.find_spec("trl") is None, reason="trl is not installed (the bench extra)")
def test_dpo_first_step_loss_equals_trl(tmp_path):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from prefopt.data.tokenize import collate
    from worlds import pair_world, perturb

    from prefopt.bench.world import tokenize_pairs  # what the benchmark and TRL both feed: the thing under test

    tok, model, rows = pair_world(n_rows=32)
    ref = copy.deepcopy(model)
    perturb(model)
    n = 16
    args = DPOConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=n, beta=0.1, max_length=128,
                     report_to=[], use_cpu=True, bf16=False, save_strategy="no", disable_tqdm=True)
    tr = DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)
    first = [tr.train_dataset[i] for i in range(n)]
    ours_examples = tokenize_pairs(tok, rows)[:n]
    for x, y in zip(first, ours_examples):  # the same token ids on both sides
        assert x["prompt_ids"] == y["prompt_ids"] and x["chosen_ids"] == y["chosen_ids"]
    model.train()
    with torch.no_grad():
        trl_loss = float(tr.compute_loss(model, tr.data_collator(first)))
        loss, _ = DPO(DPO.Config(beta=0.1)).loss(collate(ours_examples, "paired", tok.pad_token_id),
                                                 Scorer(model, FrozenReference(ref)))
    ours = float(loss) / n
    assert abs(trl_loss - 0.6931) > 1e-3  # the policy differs from the reference: not trivially log 2
    assert abs(ours - trl_loss) < 1e-5


def test_bench_reports_trl_not_installed(tmp_path, monkeypatch, capsys):
    import json

    import prefopt.bench.throughput as bench

    monkeypatch.setattr(bench, "trl_available", lambda: False)
    out = tmp_path / "b.json"
    bench.main(["--providers", "trl", "--workloads", "dpo", "--out", str(out)])
    rep = json.loads(out.read_text())
    assert rep["results"]["dpo"]["trl"] == {"error": "not installed"}
    assert rep["ratios"] == {} and rep["machine"]["cores"] and "load_average_before" in rep
    assert "not installed" in capsys.readouterr().out
