"""The Jacobian-in-forward route of fused_logprobs (hidden_grad="forward"), for a frozen head.

The forward computes J_i = ∂log p_i/∂h_i alongside the log-probs, and the backward is g·J: no
logit recomputation.  Checked (1) against a float64 reference written from the definitions, value
and gradient, on random inputs with ignored (padding) rows, every logit transform and the tiled /
multi-worker chunkings; (2) equal to the generic op (hidden_grad="recompute") in value and
gradient for every objective that goes through it: the DPO family, IPO, KTO, ORPO, SimPO, SFT and
the policy-gradient loss (GRPO), on a LoRA model, whose head is frozen.
"""

import pytest
import torch

import prefopt_kernels as pk
from prefopt_kernels import _torch_backward, _torch_impl, api
from test_kernels import CASES, CHUNKINGS, _inputs, close, reference

JAC_CASES = ["plain", "V-odd-bias", "T=0.6", "softcap", "softcap-scale-bias", "logit_scale", "vocab-padding",
             "noncontig", "all-negative", "large-magnitude", "no-ignored", "tile-edges", "one-row"]


@pytest.fixture(params=["default", "rows8-tiles", "rows13-tiles-2w", "rows8-tiles-3w"])
def chunking(request, monkeypatch):
    spec = CHUNKINGS[request.param]
    if spec is not None:
        monkeypatch.setattr(_torch_impl, "ROW_CHUNK", spec[0])
        monkeypatch.setattr(_torch_impl, "CHUNK_BYTES", spec[1])
        monkeypatch.setattr(_torch_impl, "WORKERS", spec[2])
    return spec


def _spy(monkeypatch):
    """Counts the generic op's backward calls: the forward route must make none."""
    n = {"bwd": 0}
    orig = _torch_backward.chunked_backward

    def counting(*a, **k):
        n["bwd"] += 1
        return orig(*a, **k)

    monkeypatch.setattr(api, "BACKENDS", dict(api.BACKENDS, torch=lambda d: (_torch_impl.chunked_forward, counting)))
    return n


@pytest.mark.parametrize("case", JAC_CASES)
def test_against_float64(case, chunking, monkeypatch):
    spec = CASES[case]
    h, W, b, t, _ = _inputs(**spec.get("inputs", {}))
    kw = spec.get("kw", {})
    calls = _spy(monkeypatch)
    hh = h.clone().requires_grad_()
    lp = pk.fused_logprobs(hh, W, t, bias=b, hidden_grad="forward", **kw)
    hr = h.clone().double().requires_grad_()
    exp = reference(hr, W, t, bias=b, **kw)["logprobs"]
    close(lp, exp, name=f"{case}/logprobs")
    assert bool((lp[t == -100] == 0).all())
    g = torch.randn(t.shape[0], generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    (lp.double() * g).sum().backward()
    (exp * g).sum().backward()
    close(hh.grad, hr.grad, name=f"{case}/grad_hidden")
    assert bool((hh.grad[t == -100] == 0).all())
    assert calls["bwd"] == 0


@pytest.mark.parametrize("est", ["k1", "k3"])
def test_kl_estimator_upstream_and_bf16(est):
    # the estimated KL is a function of log p, so its gradient rides on J as well
    h, W, b, t, _ = _inputs(bias=True)
    with torch.no_grad():
        r = reference(h, W, t, bias=b)["logprobs"].float() + 0.1
    outs = []
    for mode in ("forward", "recompute"):
        hh = h.clone().bfloat16().requires_grad_()
        out = pk.fused_logprobs(hh, W.bfloat16(), t, bias=b.bfloat16(), ref_logprobs=r, kl_estimator=est,
                                hidden_grad=mode)
        (out.logprobs.sum() + 0.5 * out.kl.sum()).backward()
        assert hh.grad.dtype == torch.bfloat16
        outs.append((out.logprobs, out.kl, hh.grad.float()))
    for a, c in zip(*outs):
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-5 if a.dtype == torch.float32 else 2e-2)


def test_auto_takes_the_route_only_for_a_frozen_head(monkeypatch):
    calls = _spy(monkeypatch)
    h, W, b, t, _ = _inputs(bias=True)
    hh = h.clone().requires_grad_()
    pk.fused_logprobs(hh, W, t, bias=b).sum().backward()  # frozen head: the forward route
    assert calls["bwd"] == 0
    WW = W.clone().requires_grad_()
    pk.fused_logprobs(hh, WW, t, bias=b).sum().backward()  # the head trains: the generic op
    assert calls["bwd"] == 1 and WW.grad is not None
    out = pk.fused_logprobs(hh, W, t, bias=b, return_entropy=True)  # entropy: the generic op
    (out.logprobs.sum() + out.entropy.sum()).backward()
    assert calls["bwd"] == 2
    pk.fused_logprobs(hh, W, t, bias=b, hidden_grad="recompute").sum().backward()
    assert calls["bwd"] == 3
    with pytest.raises(ValueError):
        pk.fused_logprobs(hh, WW, t, hidden_grad="forward")
    with pytest.raises(ValueError):
        pk.fused_logprobs(hh, W, t, hidden_grad="sometimes")


def test_retained_graph_backward_twice():
    h, W, b, t, _ = _inputs()
    hh = h.clone().requires_grad_()
    lp = pk.fused_logprobs(hh, W, t, hidden_grad="forward")
    g1 = torch.autograd.grad(lp.sum(), hh, retain_graph=True)[0]
    g2 = torch.autograd.grad(lp.sum(), hh)[0]
    assert torch.equal(g1, g2)


# ---- every objective that uses it: the same loss and gradients as the generic op -------------

PAD, EOS, V = 0, 3, 97


def _lora_model():
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True,
                      pad_token_id=PAD, eos_token_id=EOS)
    m = get_peft_model(LlamaForCausalLM(cfg).float(),
                       LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, init_lora_weights=False,
                                  target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                  "down_proj"]))
    assert not m.get_output_embeddings().weight.requires_grad  # the head is frozen: the route applies
    return m


def _ids(g, lo, hi):
    return torch.randint(4, V, (int(torch.randint(lo, hi + 1, (1,), generator=g)),), generator=g).tolist()


def _paired(g, B=4):
    return [{"row": i, "prompt_ids": _ids(g, 1, 7), "chosen_ids": _ids(g, 1, 9) + [EOS],
             "rejected_ids": _ids(g, 1, 9) + [EOS]} for i in range(B)]


def _batch(name):
    from prefopt.data.tokenize import collate

    g = torch.Generator().manual_seed(11)
    if name in ("kto",):
        ex = [{"row": i, "prompt_ids": _ids(g, 1, 7), "completion_ids": _ids(g, 1, 9) + [EOS], "label": i % 2 == 0}
              for i in range(4)]
        return ex
    if name == "sft":
        return collate([{"row": i, "prompt_ids": _ids(g, 1, 7), "completion_ids": _ids(g, 1, 9) + [EOS]}
                        for i in range(4)], "demonstrations", PAD)
    if name == "grpo":
        ex = collate([{"row": i, "prompt_ids": _ids(g, 2, 6), "completion_ids": _ids(g, 3, 9)} for i in range(4)],
                     "demonstrations", PAD)
        mask = ex["loss_mask"].float()
        ex["advantages"] = torch.randn(mask.shape, generator=g) * mask
        ex["old_logps"] = (-2.0 + 0.1 * torch.randn(mask.shape, generator=g)) * mask
        ex["norm_tokens"] = int(mask[:, 1:].sum())
        return ex
    return collate(_paired(g), "paired", PAD)


OBJECTIVES = {
    "dpo-sigmoid": ("dpo", dict(beta=0.1)),
    "dpo-ln+sft-rpo": ("dpo", dict(beta=2.0, loss_type=["ln", "sft"], loss_weights=[1.0, 0.5], rpo_alpha=0.3)),
    "dpo-hinge-aot-apo": ("dpo", dict(beta=0.2, loss_type=["hinge", "aot", "apo_zero"])),
    "ipo": ("ipo", dict()),
    "kto": ("kto", dict()),
    "orpo": ("orpo", dict()),
    "simpo": ("simpo", dict()),
    "sft": ("sft", dict()),
    "grpo": ("grpo", dict(kl_coef=0.05, loss_agg="token-mean")),
    "grpo-seq-ratio": ("grpo", dict(kl_coef=0.0, ratio_level="sequence_sum")),
}


@pytest.mark.parametrize("objective", list(OBJECTIVES))
def test_objective_loss_and_gradients_equal_generic_op(objective, monkeypatch):
    from prefopt.models.logprobs import Scorer
    from prefopt.models.load import AdapterDisabledReference
    from prefopt.objectives.registry import get_objective

    name, kw = OBJECTIVES[objective]
    cls = get_objective(name)
    model = _lora_model()
    batch = _batch(name)
    if name == "kto":
        obj = cls(cls.Config(**kw))
        batch = obj.collate(obj.prepare_examples(batch, batch, "test"), "unpaired", PAD)
    results = []
    for mode in ("forward", "recompute"):
        monkeypatch.setattr(api, "HIDDEN_GRAD", mode)
        obj = cls(cls.Config(**kw))
        model.zero_grad()
        loss, metrics = obj.loss(batch, Scorer(model, AdapterDisabledReference(model)))
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        assert grads and all(g.abs().sum() > 0 for g in grads.values())
        results.append((float(loss.detach()), {k: float(v) for k, v in metrics.items()}, grads))
    (l1, m1, g1), (l2, m2, g2) = results
    assert abs(l1 - l2) <= 1e-5 * max(1.0, abs(l2)), (l1, l2)
    for k in m2:
        assert abs(m1[k] - m2[k]) <= 1e-4 * max(1.0, abs(m2[k])), (k, m1[k], m2[k])
    for n in g2:
        torch.testing.assert_close(g1[n], g2[n], rtol=1e-4, atol=1e-6, msg=n)
