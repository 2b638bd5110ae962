"""Offline methods end to end on the testbed: each method and each DPO loss_type moves its own
metric the right way, the reward model beats chance on held-out pairs and saves a plain HF
classifier, precomputed reference log-probs equal a live reference. Their bad input is in
tests/test_bad_input_data.py."""

import json
import os

import pytest
import torch

from conftest import TINY, synthetic_examples, tiny_model
from prefopt.core.config import ModelConfig
from prefopt.models.logprobs import Scorer
from prefopt.models.load import make_reference
from short_runs import TRAIN_ONLY


def metrics(out):
    return [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]


def first_last(rows, key, k=4):
    vals = [r[key] for r in rows if key in r]
    return sum(vals[:k]) / k, sum(vals[-k:]) / k


# ---- precomputed reference == live reference ---------------------------------------------------

@pytest.mark.parametrize("algo", ["dpo", "ipo", "kto"])
def test_precomputed_reference_equals_live_reference(algo, tmp_path, monkeypatch):
    from prefopt.models import reference_cache
    from prefopt.objectives.registry import get_objective

    monkeypatch.setenv("PREFOPT_CACHE", str(tmp_path))
    Obj = get_objective(algo)
    obj = Obj(Obj.Config())
    kind = obj.needs.data
    if kind == "unpaired":
        ex = synthetic_examples("demonstrations", n=12)
        for i, e in enumerate(ex):
            e["label"] = i % 2 == 0
        ex = obj.prepare_examples(ex, None, "synthetic")
    else:
        ex = synthetic_examples(kind, n=12)
    policy = tiny_model(seed=3)
    live = make_reference(policy, ModelConfig(arch=dict(TINY)), vocab_size=50, seed=3)

    def coll(examples, pad):
        return obj.collate(examples, kind, pad)

    key = reference_cache.model_fingerprint(ModelConfig(arch=dict(TINY)), None, 3)
    cached = reference_cache.attach(policy, ex, model_key=key, batch_size=5, device=torch.device("cpu"))
    policy.eval()  # no dropout in the tiny model, but the comparison should not depend on it
    for j in range(0, 12, 4):
        b_live = coll(ex[j : j + 4], 0)
        b_pre = reference_cache.add_to_batch(coll(cached[j : j + 4], 0), cached[j : j + 4])
        assert any(k.endswith("ref_logps") for k in b_pre)
        with torch.no_grad():
            l_live, m_live = obj.loss(b_live, Scorer(policy, live))
            l_pre, m_pre = obj.loss(b_pre, Scorer(policy, None))  # no reference model at all
        assert l_pre.item() == pytest.approx(l_live.item(), rel=1e-5, abs=1e-6)
        for k in m_live:
            if "accuracy" in k:  # sign of a log-ratio that is ~0 at initialization: noise decides
                continue
            assert float(m_pre[k]) == pytest.approx(float(m_live[k]), rel=1e-4, abs=1e-5), k
    # The second run reads the cache file and computes nothing.
    files = [f for f in os.listdir(reference_cache.cache_dir()) if f.endswith(".pt")]
    assert len(files) == 1
    monkeypatch.setattr(reference_cache, "compute", lambda *a, **k: pytest.fail("recomputed a cached entry"))
    again = reference_cache.attach(policy, ex, model_key=key, batch_size=5, device=torch.device("cpu"))
    assert all(torch.equal(a[f], b[f]) for a, b in zip(again, cached) for f in a if f.endswith("_ref_logps"))
    # Other data is another entry, never a stale read.
    other = [dict(e, prompt_ids=[7] + list(e["prompt_ids"])) for e in ex]
    monkeypatch.undo()
    monkeypatch.setenv("PREFOPT_CACHE", str(tmp_path))
    reference_cache.attach(policy, other, model_key=key, batch_size=5, device=torch.device("cpu"))
    assert len([f for f in os.listdir(reference_cache.cache_dir()) if f.endswith(".pt")]) == 2


def test_precompute_ref_run_matches_live_run_and_holds_no_reference(run_cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("PREFOPT_CACHE", os.environ["PREFOPT_CACHE"])  # the suite's testbed cache
    import prefopt.run.stages as M  # the run's stages build the reference

    common = ["algo=kto", "data.num_rows=96", "trainer.max_steps=2", "trainer.examples_per_step=32",
              "trainer.examples_per_device=16", *TRAIN_ONLY]
    live, out_live = run_cfg(*common, out=tmp_path / "live")
    built = []
    monkeypatch.setattr(M, "make_reference", lambda *a, **k: built.append(1) or pytest.fail("reference model built"))
    pre, out_pre = run_cfg(*common, "algo.precompute_ref=true", out=tmp_path / "pre")
    a, b = metrics(out_live), metrics(out_pre)
    assert [r["loss"] for r in b] == pytest.approx([r["loss"] for r in a], rel=1e-5)
    assert b[0]["kl"] == pytest.approx(a[0]["kl"], rel=1e-4, abs=1e-6)
    assert pre["params"]["precompute_ref"] is True


# ---- each method moves its own metric --------------------------------------------------------

TINY_ARCH = ("model.arch={model_type:llama,hidden_size:32,intermediate_size:64,num_hidden_layers:1,"
             "num_attention_heads:2,num_key_value_heads:2,max_position_embeddings:128}")


@pytest.mark.parametrize("algo,extra,metric,direction", [
    ("dpo", ["algo.precompute_ref=true"], "rewards/margin", +1),
    ("dpo", ["algo.loss_type=robust", "algo.label_smoothing=0.1"], "rewards/margin", +1),
    ("ipo", [], "logratio_gap", +1),
    ("kto", [], "rewards/signed", +1),
    ("orpo", [], "log_odds_ratio", +1),
    ("simpo", [], "rewards/margin", +1),
    ("sft", [TINY_ARCH], "nll", -1),
])
def test_each_method_moves_its_metric(run_cfg, outcome, algo, extra, metric, direction):
    # 64 examples, 2 steps per epoch, 5 epochs: the first and the last epoch see the same examples,
    # so comparing their averages measures training, not which batch came up.
    s, out = run_cfg(f"algo={algo}", "data.num_rows=64", "trainer.max_steps=10", "trainer.lr=1e-3", *TRAIN_ONLY, *extra)
    before, after = first_last(metrics(out), metric, k=2)
    outcome(f"{metric}: last − first epoch (signed {direction:+d})", direction * (after - before), ">", 0,
            (before, after))
    assert s["steps"] == 10 and s["algo"] == algo


# Each DPO loss_type's own target: the margin for the pairwise losses, the chosen NLL for sft, the
# chosen reward for NCA / APO-zero (they push π(y_w) up), the rejected reward down for APO-down.
DPO_LOSS_TYPES = [
    (["algo.loss_type=exo_pair", "algo.label_smoothing=0.001"], "rewards/margin", +1),
    (["algo.loss_type=nca_pair"], "rewards/margin", +1),
    (["algo.loss_type=bco_pair"], "rewards/margin", +1),
    (["algo.loss_type=sppo_hard"], "rewards/margin", +1),
    (["algo.loss_type=aot"], "rewards/margin", +1),
    (["algo.loss_type=aot_unpaired"], "rewards/margin", +1),
    (["algo.loss_type=apo_zero"], "rewards/margin", +1),
    (["algo.loss_type=apo_down"], "rewards/rejected", -1),
    # τ = 0.3: at the paper's 0.05 the loss pushes margins *down* from π = π_ref
    # (tests/test_dpo_loss.py::test_discopop_slope_at_zero_margin)
    (["algo.loss_type=discopop", "algo.discopop_tau=0.3"], "rewards/margin", +1),
    (["algo.loss_type=[sigmoid,bco_pair,sft]", "algo.loss_weights=[0.8,0.2,1.0]"], "rewards/margin", +1),
    (["algo.rpo_alpha=1.0"], "nll", -1),
]


@pytest.mark.parametrize("extra,metric,direction", DPO_LOSS_TYPES, ids=[t[0][0].split("=", 1)[1] for t in DPO_LOSS_TYPES])
def test_each_loss_type_moves_its_metric(run_cfg, outcome, extra, metric, direction):
    # 64 pairs, 2 steps per epoch, 5 epochs: the first and the last epoch see the same pairs.
    s, out = run_cfg("algo=dpo", "data.num_rows=64", "trainer.max_steps=10", "trainer.lr=1e-3", *TRAIN_ONLY, *extra)
    before, after = first_last(metrics(out), metric, k=2)
    outcome(f"{metric}: last − first epoch (signed {direction:+d})", direction * (after - before), ">", 0, (before, after))
    assert s["steps"] == 10


# ---- reward model ----------------------------------------------------------------------------

def test_reward_model_beats_chance_and_saves_a_plain_classifier(run_cfg, outcome):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from prefopt.leaderboard.suite import load_suite

    # The leaderboard's own stage-1 recipe (120 cosine steps from 1e-3 after 5 warm-up steps), so
    # the test checks the reward model the online rows are trained against. A shorter, hotter
    # recipe (40 steps at a constant 3e-3, no warm-up) moves every weight matrix by 55-85% of its
    # norm while the loss sits at log 2: noise-driven Adam steps overwrite the SFT features before
    # the new score head learns anything, and the CPU's rounding decides whether it escapes (0.53
    # held-out gold accuracy on AVX-512 and on AVX2).
    s, out = run_cfg("algo=reward", *load_suite("standard").stage1, "trainer.log_every_steps=1")
    ev = s["eval"]
    assert 150 < ev["num_pairs"] < 260  # 10% of the testbed's ~2000 pairs, held out
    outcome("held-out pairwise accuracy", ev["pairwise_accuracy"], ">", 0.65, ev)
    outcome("held-out accuracy against the gold ordering", ev["pairwise_accuracy_gold"], ">", 0.70, ev)
    assert ev["gold_reward"] is None and ev["kl_to_ref"] is None
    before, after = first_last(metrics(out), "accuracy", k=8)
    assert after > before
    # model/ is a standard sequence classifier that scores the last non-pad token.
    model = AutoModelForSequenceClassification.from_pretrained(os.path.join(out, "model")).eval()
    tok = AutoTokenizer.from_pretrained(os.path.join(out, "model"))
    assert model.config.num_labels == 1 and model.config.pad_token_id == tok.pad_token_id
    texts = ["<|user|> the film <|assistant|> a great movie . </s>", "<|user|> the film <|assistant|> dull . </s>"]
    enc = tok(texts, padding=True, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        batched = model(**enc).logits[:, 0]
        alone = torch.stack([model(**tok([t], return_tensors="pt", add_special_tokens=False)).logits[0, 0] for t in texts])
    torch.testing.assert_close(batched, alone, rtol=1e-4, atol=1e-5)


def test_reward_model_lora_keeps_score_head_trainable_and_saves_merged(tmp_path):
    from transformers import AutoModelForSequenceClassification

    from prefopt.core.config import LoraConfig
    from prefopt.models.load import load_reward_model, save_model
    from prefopt.testbed.world import load_tokenizer

    tok = load_tokenizer()
    cfg = ModelConfig(arch=dict(TINY), lora=LoraConfig(r=4))
    m = load_reward_model(cfg, vocab_size=len(tok), seed=0, pad_token_id=tok.pad_token_id)
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert any("score" in n for n in trainable) and any("lora_" in n for n in trainable)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "lora_B" in n or "score" in n:
                p.add_(0.05)  # as if trained
    ids = torch.tensor([[4, 9, 12, 3, 0, 0]])
    am = (ids != 0).long()
    with torch.no_grad():
        expect = m(input_ids=ids, attention_mask=am).logits[:, 0]
    save_model(m, tok, str(tmp_path / "model"))
    plain = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "model")).eval()
    with torch.no_grad():
        got = plain(input_ids=ids, attention_mask=am).logits[:, 0]
    torch.testing.assert_close(got, expect, rtol=1e-4, atol=1e-5)
