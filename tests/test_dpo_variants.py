"""The DPO loss types the peers have, each against an independent float64 implementation written
from its paper (value, and gradient by central finite differences, on random inputs with padding),
and against TRL 1.16's own DPOTrainer._compute_loss on identical inputs; weighted sums of losses;
BCO's running shift as checkpointed objective state; each trains on the testbed."""

import io
import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from prefopt.core.errors import UserError
from prefopt.objectives.dpo import DPO, LOSS_TYPES
from test_offline_losses import (BATCH, _len, _logsig, _seq, finite_difference_check, paired_inputs,
                                 paired_scorer)

NEW = ["exo_pair", "nca_pair", "bco_pair", "sppo_hard", "aot", "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft"]


def _sig(x):
    return 1 / (1 + math.exp(-x))


def ref_losses(pw, pl, rw, rl, mw, ml, kind, beta, eps=0.0, tau=0.05, delta=0.0):
    """Per-pair losses, float64, one scalar at a time, from each paper's equation."""
    B = pw.shape[0]
    lw = [_seq(pw, mw, i) for i in range(B)]
    ll = [_seq(pl, ml, i) for i in range(B)]
    ρw = [lw[i] - _seq(rw, mw, i) for i in range(B)]
    ρl = [ll[i] - _seq(rl, ml, i) for i in range(B)]
    out = []
    if kind in ("aot", "aot_unpaired"):
        if kind == "aot":  # Melnyk et al.: sorted policy margins against sorted reference margins
            u = sorted(lw[i] - ll[i] for i in range(B))
            v = sorted(_seq(rw, mw, i) - _seq(rl, ml, i) for i in range(B))
        else:  # sorted chosen log-ratios against sorted rejected log-ratios
            u, v = sorted(ρw), sorted(ρl)
        return [-(1 - eps) * _logsig(beta * (a - b)) - eps * _logsig(-beta * (a - b)) for a, b in zip(u, v)]
    for i in range(B):
        h = beta * (ρw[i] - ρl[i])
        a, b = beta * ρw[i], beta * ρl[i]
        if kind == "exo_pair":  # Ji et al. eq. 16, K = 2: KL(softmax(h, 0) ‖ (1−ε, ε))
            pw_, pl_ = _sig(h), _sig(-h)
            out.append(pw_ * math.log(pw_ / (1 - eps)) + pl_ * math.log(pl_ / eps))
        elif kind == "nca_pair":  # Chen et al. eq. 12, K = 2
            out.append(-_logsig(a) - 0.5 * _logsig(-a) - 0.5 * _logsig(-b))
        elif kind == "bco_pair":  # Jung et al. eq. 8 with the shift δ
            out.append(-_logsig(a - delta) - _logsig(-(b - delta)))
        elif kind == "sppo_hard":  # Wu et al. eq. 4.7, P̂ = 1 | 0, η = 1/β
            out.append((ρw[i] - (1 / beta) * (1 - 0.5)) ** 2 + (ρl[i] - (1 / beta) * (0 - 0.5)) ** 2)
        elif kind == "apo_zero":  # D'Oosterlinck et al. eq. 7
            out.append((1 - _sig(a)) + _sig(b))
        elif kind == "apo_down":  # eq. 8
            out.append(_sig(a) + (1 - _sig(a - b)))
        elif kind == "discopop":  # Lu et al. eq. 5
            m = _sig(h / tau)
            out.append((1 - m) * -_logsig(h) + m * math.exp(-h))
        elif kind == "sft":
            out.append(-lw[i] / _len(mw, i))
        elif kind == "sigmoid":
            out.append(-(1 - eps) * _logsig(h) - eps * _logsig(-h))
        else:
            raise KeyError(kind)
    return out


def bco_delta(pw, pl, rw, rl, mw, ml, beta):
    B = pw.shape[0]
    return sum(beta * ((_seq(pw, mw, i) - _seq(rw, mw, i)) + (_seq(pl, ml, i) - _seq(rl, ml, i))) / 2
               for i in range(B)) / B


CASES = [("exo_pair", 0.1, 1e-3), ("exo_pair", 0.5, 0.2), ("nca_pair", 0.1, 0.0), ("nca_pair", 1.0, 0.0),
         ("bco_pair", 0.1, 0.0), ("bco_pair", 0.7, 0.0), ("sppo_hard", 0.1, 0.0), ("sppo_hard", 2.0, 0.0),
         ("aot", 0.1, 0.0), ("aot", 0.5, 0.2), ("aot_unpaired", 0.1, 0.0), ("aot_unpaired", 0.5, 0.3),
         ("apo_zero", 0.1, 0.0), ("apo_zero", 1.0, 0.0), ("apo_down", 0.1, 0.0), ("apo_down", 1.0, 0.0),
         ("discopop", 0.1, 0.0), ("discopop", 0.05, 0.0), ("sft", 0.1, 0.0)]


@pytest.mark.parametrize("kind,beta,eps", CASES)
def test_loss_type_value_and_gradient_float64(kind, beta, eps):
    pw, pl, rw, rl, mw, ml = paired_inputs(5)
    obj = DPO(DPO.Config(beta=beta, label_smoothing=eps, loss_type=kind))
    loss_sum, metrics = obj.loss(BATCH, paired_scorer(pw, pl, rw, rl, mw, ml))
    # BCO's δ here: this batch is the first, so the running mean is the batch's own mean (held fixed
    # in the gradient: it is a statistic, sg[·]).
    δ = bco_delta(pw.detach(), pl.detach(), rw, rl, mw, ml, beta) if kind == "bco_pair" else 0.0
    expect = ref_losses(pw.detach(), pl.detach(), rw, rl, mw, ml, kind, beta, eps, delta=δ)
    assert loss_sum.item() == pytest.approx(sum(expect), rel=1e-10, abs=1e-10)
    if kind == "bco_pair":
        assert float(metrics["bco/shift"]) / pw.shape[0] == pytest.approx(δ, rel=1e-10)
    # sft reads the chosen side only: the rejected log-probs get no gradient at all.
    tensors = {"pw": pw} if kind == "sft" else {"pw": pw, "pl": pl}
    finite_difference_check(loss_sum, tensors, {"pw": mw, "pl": ml},
                            lambda x: sum(ref_losses(x["pw"], x.get("pl", pl.detach()), rw, rl, mw, ml, kind, beta, eps,
                                                     delta=δ)))


def test_weighted_sum_and_rpo_nll_term():
    pw, pl, rw, rl, mw, ml = paired_inputs(6)
    types, weights, α = ["sigmoid", "bco_pair", "sft"], [0.8, 0.2, 1.0], 0.5  # MPO's mix, plus RPO's α
    obj = DPO(DPO.Config(beta=0.2, loss_type=types, loss_weights=weights, rpo_alpha=α))
    loss_sum, metrics = obj.loss(BATCH, paired_scorer(pw, pl, rw, rl, mw, ml))
    δ = bco_delta(pw.detach(), pl.detach(), rw, rl, mw, ml, 0.2)

    def ref(x):
        parts = [ref_losses(x["pw"], x["pl"], rw, rl, mw, ml, k, 0.2, delta=δ) for k in types]
        nll = ref_losses(x["pw"], x["pl"], rw, rl, mw, ml, "sft", 0.2)
        return sum(sum(w * p[i] for w, p in zip(weights, parts)) + α * nll[i] for i in range(pw.shape[0]))

    assert loss_sum.item() == pytest.approx(ref({"pw": pw.detach(), "pl": pl.detach()}), rel=1e-10)
    assert float(metrics["nll"]) > 0
    finite_difference_check(loss_sum, {"pw": pw, "pl": pl}, {"pw": mw, "pl": ml}, ref)


# ---- TRL 1.16's own loss on identical inputs -------------------------------------------------


def trl_dpo_loss(pw, pl, rw, rl, mw, ml, loss_types, loss_weights, beta, eps, tau):
    """DPOTrainer._compute_loss with a stand-in trainer: its model returns our per-token log-probs
    (TRL's layout: [chosen; rejected], shifted by one), the reference log-probs are precomputed."""
    from trl import DPOTrainer

    B, T = pw.shape
    lp = torch.cat([pw * mw, pl * ml])[:, 1:]
    zeros = torch.zeros_like(lp)
    out = SimpleNamespace(log_probs=lp, entropy=zeros.detach(), mean_logits=zeros.detach(),
                          is_top1=torch.zeros_like(lp, dtype=torch.bool))
    acc = SimpleNamespace(device=torch.device("cpu"), gather=lambda x: x, gather_for_metrics=lambda x: x)
    fake = SimpleNamespace(model=SimpleNamespace(training=True), accelerator=acc, aux_loss_enabled=False, ld_alpha=None,
                           precompute_ref_logps=True, f_divergence_type="reverse_kl", loss_types=loss_types,
                           loss_weights=loss_weights, beta=beta, label_smoothing=eps,
                           args=SimpleNamespace(discopop_tau=tau), use_weighting=False,
                           _metrics={"train": defaultdict(list)}, _total_train_tokens=0, _tp_size=1)
    inputs = {"input_ids": torch.zeros(2 * B, T, dtype=torch.long), "attention_mask": torch.ones(2 * B, T, dtype=torch.long),
              "completion_mask": torch.cat([mw, ml]).long(),
              "ref_chosen_logps": (rw * mw).sum(-1), "ref_rejected_logps": (rl * ml).sum(-1)}
    return DPOTrainer._compute_loss(fake, lambda **kw: out, inputs, return_outputs=False)


TRL_CASES = [("exo_pair", 0.1, 1e-3), ("nca_pair", 0.3, 0.0), ("sppo_hard", 0.5, 0.0), ("aot", 0.2, 0.1),
             ("aot_unpaired", 0.2, 0.1), ("apo_zero", 0.3, 0.0), ("apo_down", 0.3, 0.0), ("discopop", 0.1, 0.0),
             ("robust", 0.2, 0.2), ("hinge", 0.3, 0.0), ("sigmoid", 0.2, 0.0)]


@pytest.mark.parametrize("kind,beta,eps", TRL_CASES)
def test_loss_type_matches_trl(kind, beta, eps):
    pw, pl, rw, rl, mw, ml = paired_inputs(7)
    obj = DPO(DPO.Config(beta=beta, label_smoothing=eps, loss_type=kind))
    s, _ = obj.loss(BATCH, paired_scorer(pw, pl, rw, rl, mw, ml))
    mine = s / obj.units(BATCH)
    mine.backward()
    g_mine = (pw.grad.clone(), pl.grad.clone())
    pw.grad = pl.grad = None
    trl = trl_dpo_loss(pw, pl, rw, rl, mw, ml, [kind], [1.0], beta, eps, 0.05)
    trl.backward()
    # TRL builds EXO's ε as a float32 tensor (log(1−ε), log ε rounded to float32): 1e-7 there.
    tol = 1e-7 if kind == "exo_pair" else 1e-12
    assert mine.item() == pytest.approx(trl.item(), rel=tol, abs=1e-12)
    torch.testing.assert_close(g_mine, (pw.grad, pl.grad), rtol=max(tol, 1e-10), atol=1e-13)


def test_bco_pair_is_trls_when_the_shift_is_zero_and_weighted_sums_match_trl():
    """TRL 1.16's DPOTrainer bco_pair has no shift (δ = 0): with a running mean pinned at 0 by a huge
    count, prefopt's loss is TRL's. The MPO mix (sigmoid, bco_pair, sft) with weights matches TRL's
    loss_weights when all chosen completions have the same length (where TRL's batch token mean of
    the sft term equals prefopt's per-pair mean)."""
    pw, pl, rw, rl, mw, ml = paired_inputs(8)
    ml[:, :] = ml
    mw[:, :] = 0
    mw[:, 1:5] = 1  # every chosen completion: 4 tokens
    types, weights = ["sigmoid", "bco_pair", "sft"], [0.8, 0.2, 1.0]
    obj = DPO(DPO.Config(beta=0.3, loss_type=types, loss_weights=weights))
    obj.load_state_dict({"bco_shift": 0.0, "bco_count": 10**18})
    s, m = obj.loss(BATCH, paired_scorer(pw, pl, rw, rl, mw, ml))
    mine = s / obj.units(BATCH)
    assert abs(float(m["bco/shift"])) < 1e-12
    mine.backward()
    g_mine = (pw.grad.clone(), pl.grad.clone())
    pw.grad = pl.grad = None
    trl = trl_dpo_loss(pw, pl, rw, rl, mw, ml, types, weights, 0.3, 0.0, 0.05)
    trl.backward()
    assert mine.item() == pytest.approx(trl.item(), rel=1e-10)
    torch.testing.assert_close(g_mine, (pw.grad, pl.grad), rtol=1e-9, atol=1e-13)


# ---- BCO's running shift: objective state ----------------------------------------------------


def test_bco_shift_is_a_running_mean_and_resumes_from_its_state_dict():
    batches = [paired_inputs(s) for s in range(10, 14)]
    beta = 0.4
    full = DPO(DPO.Config(beta=beta, loss_type="bco_pair"))
    losses = [full.loss(BATCH, paired_scorer(*b))[0].item() for b in batches]
    # δ after k batches: the mean of sg[(r_w + r_l)/2] over every pair seen (equal batch sizes: the mean of batch means)
    deltas = [bco_delta(*(x.detach() for x in b[:2]), *b[2:], beta) for b in batches]
    assert full.state_dict()["bco_shift"] == pytest.approx(sum(deltas) / 4, rel=1e-12)
    assert full.state_dict()["bco_count"] == 4 * batches[0][0].shape[0]
    # Interrupted after two batches, checkpointed (torch.save, as the trainer does), resumed in a new objective.
    first = DPO(DPO.Config(beta=beta, loss_type="bco_pair"))
    for b in batches[:2]:
        first.loss(BATCH, paired_scorer(*b))
    buf = io.BytesIO()
    torch.save({"objective": first.state_dict()}, buf)
    buf.seek(0)
    resumed = DPO(DPO.Config(beta=beta, loss_type="bco_pair"))
    resumed.load_state_dict(torch.load(buf)["objective"])
    assert [resumed.loss(BATCH, paired_scorer(*b))[0].item() for b in batches[2:]] == pytest.approx(losses[2:], rel=1e-14)
    # Without the state, the third batch would use a different δ.
    fresh = DPO(DPO.Config(beta=beta, loss_type="bco_pair"))
    assert fresh.loss(BATCH, paired_scorer(*batches[2]))[0].item() != pytest.approx(losses[2], rel=1e-6)


def test_discopop_slope_at_zero_margin():
    """The docstring's claim: dL/dh at h = 0 is +0.784 for τ = 0.05 and −0.494 for τ = 0.3, from
    eq. 5 differentiated by hand: dL/dh = m'·(e^{−h} + log σ(h)) − (1−m)σ(−h) − m e^{−h}, m' = m(1−m)/τ."""
    for tau, want in ((0.05, 0.25 / 0.05 * (1 - math.log(2)) - 0.25 - 0.5), (0.3, 0.25 / 0.3 * (1 - math.log(2)) - 0.75)):
        pw = torch.zeros(1, 2, dtype=torch.float64, requires_grad=True)
        m = torch.tensor([[0.0, 1.0]], dtype=torch.float64)
        z = torch.zeros(1, 2, dtype=torch.float64)
        obj = DPO(DPO.Config(beta=1.0, loss_type="discopop", discopop_tau=tau))
        obj.loss({"chosen_input_ids": z}, paired_scorer(pw, z.clone().requires_grad_(), z, z, m, m))[0].backward()
        assert float(pw.grad[0, 1]) == pytest.approx(want, rel=1e-9)


# ---- edge cases and bad config ---------------------------------------------------------------


@pytest.mark.parametrize("kind", [k for k in LOSS_TYPES if k != "exo_pair"])
def test_every_loss_type_is_finite_at_extremes_and_padding_gets_no_gradient(kind):
    # Huge log-ratio gaps both ways, an empty completion, a one-pair batch.
    B, T = 3, 5
    mw = torch.tensor([[0, 1, 1, 0, 0], [0, 0, 0, 0, 0], [0, 1, 1, 1, 1]], dtype=torch.float64)
    ml = torch.tensor([[0, 1, 0, 0, 0], [0, 1, 1, 0, 0], [0, 1, 1, 1, 0]], dtype=torch.float64)
    pw = torch.tensor([[0, -1, -2, 0, 0], [0, 0, 0, 0, 0], [0, -90, -80, -70, -60.0]], dtype=torch.float64).requires_grad_()
    pl = torch.tensor([[0, -80, 0, 0, 0], [0, -0.1, -0.2, 0, 0], [0, -0.1, -0.1, -0.1, 0]], dtype=torch.float64).requires_grad_()
    zeros = torch.zeros(B, T, dtype=torch.float64)
    obj = DPO(DPO.Config(beta=1.0, loss_type=kind))
    s, _ = obj.loss({"chosen_input_ids": zeros}, paired_scorer(pw, pl, zeros, zeros, mw, ml))
    s.backward()
    assert math.isfinite(s.item())
    if pl.grad is None:  # sft: the rejected side is not read
        pl.grad = torch.zeros_like(pl)
    assert torch.isfinite(pw.grad).all() and torch.isfinite(pl.grad).all()
    assert torch.all(pw.grad[mw == 0] == 0) and torch.all(pl.grad[ml == 0] == 0)
    one = DPO(DPO.Config(beta=1.0, loss_type=kind))
    assert math.isfinite(one.loss({"chosen_input_ids": zeros[:1]}, paired_scorer(pw[:1], pl[:1], zeros[:1], zeros[:1], mw[:1], ml[:1]))[0].item())


def test_bad_loss_configs_are_one_line_user_errors():
    with pytest.raises(UserError, match="accepted: sigmoid, robust.*discopop, sft"):
        DPO.Config(loss_type="nca")
    with pytest.raises(UserError, match="'apo'"):
        DPO.Config(loss_type=["sigmoid", "apo"])
    with pytest.raises(UserError, match="2 weights for 3 loss types"):
        DPO.Config(loss_type=["sigmoid", "bco_pair", "sft"], loss_weights=[0.5, 0.5])
    with pytest.raises(UserError, match="exo_pair needs algo.label_smoothing > 0"):
        DPO.Config(loss_type="exo_pair")
    with pytest.raises(UserError, match="no meaning for loss_type=nca_pair"):
        DPO.Config(loss_type="nca_pair", label_smoothing=0.1)
    with pytest.raises(UserError, match="rpo_alpha"):
        DPO.Config(rpo_alpha=-1)
    with pytest.raises(UserError, match="discopop_tau"):
        DPO.Config(loss_type="discopop", discopop_tau=0)
    assert DPO.Config(loss_type=["sigmoid"]).loss_type == "sigmoid"  # a one-entry list is that loss


def test_a_list_loss_type_composes_from_hydra_overrides():
    from conftest import compose
    from prefopt.core.config import typed

    cfg = compose(["algo=dpo", "algo.loss_type=[sigmoid,bco_pair,sft]", "algo.loss_weights=[0.8,0.2,1.0]"])
    c = typed(DPO.Config, cfg.algo, "algo")
    assert c.loss_types == ["sigmoid", "bco_pair", "sft"] and c.loss_weights == [0.8, 0.2, 1.0]
    with pytest.raises(UserError, match="algo.loss_weights has 1 weights"):
        typed(DPO.Config, compose(["algo=dpo", "algo.loss_type=[sigmoid,sft]", "algo.loss_weights=[1.0]"]).algo, "algo")


# ---- each trains on the testbed ----------------------------------------------------------------

SHORT = ["trainer.log_every_steps=1", "trainer.eval_at_end=false", "trainer.save_model=false",
         "trainer.warmup_steps=0", "trainer.lr_schedule=constant"]


def _first_last(out, key, k=2):
    import json
    import os

    vals = [json.loads(l)[key] for l in open(os.path.join(out, "metrics.jsonl")) if key in json.loads(l)]
    return sum(vals[:k]) / k, sum(vals[-k:]) / k


# Each loss's own target: the margin for the pairwise losses, the chosen NLL for sft, the chosen
# reward for NCA / APO-zero (they push π(y_w) up), the rejected reward down for APO-down.
TRAIN = [
    (["algo.loss_type=exo_pair", "algo.label_smoothing=0.001"], "rewards/margin", +1),
    (["algo.loss_type=nca_pair"], "rewards/margin", +1),
    (["algo.loss_type=bco_pair"], "rewards/margin", +1),
    (["algo.loss_type=sppo_hard"], "rewards/margin", +1),
    (["algo.loss_type=aot"], "rewards/margin", +1),
    (["algo.loss_type=aot_unpaired"], "rewards/margin", +1),
    (["algo.loss_type=apo_zero"], "rewards/margin", +1),
    (["algo.loss_type=apo_down"], "rewards/rejected", -1),
    # τ = 0.3: at the paper's 0.05 the loss pushes margins *down* from π = π_ref (see the next test)
    (["algo.loss_type=discopop", "algo.discopop_tau=0.3"], "rewards/margin", +1),
    (["algo.loss_type=[sigmoid,bco_pair,sft]", "algo.loss_weights=[0.8,0.2,1.0]"], "rewards/margin", +1),
    (["algo.rpo_alpha=1.0"], "nll", -1),
]


@pytest.mark.parametrize("extra,metric,direction", TRAIN, ids=[t[0][0].split("=", 1)[1] for t in TRAIN])
def test_each_loss_type_moves_its_metric(run_cfg, outcome, extra, metric, direction):
    # 64 pairs, 2 steps per epoch, 5 epochs: the first and the last epoch see the same pairs.
    s, out = run_cfg("algo=dpo", "data.num_rows=64", "trainer.max_steps=10", "trainer.lr=1e-3", *SHORT, *extra)
    before, after = _first_last(out, metric)
    outcome(f"{metric}: last − first epoch (signed {direction:+d})", direction * (after - before), ">", 0, (before, after))
    assert s["steps"] == 10
