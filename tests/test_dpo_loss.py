"""The DPO loss and every loss_type against independent float64 implementations written from their
papers (tests/loss_reference.py): value, and gradient by central finite differences, on random
inputs with padding. Also the label-smoothing edges, weighted sums of losses, BCO's running shift
as checkpointed objective state, DiscoPOP's slope at zero margin, and every loss_type at extremes."""

import io
import math

import pytest
import torch

from loss_reference import (BATCH, FakeScorer, bco_delta, finite_difference_check, paired_inputs,
                            paired_scorer, ref_dpo, ref_losses)
from prefopt.core.errors import UserError
from prefopt.objectives.dpo import DPO, LOSS_TYPES


# ---- sigmoid DPO, one side at a time -------------------------------------------------------------

@pytest.mark.parametrize("beta,eps", [(0.1, 0.0), (0.5, 0.0), (0.1, 0.2), (2.0, 0.45)])
def test_dpo_value_and_gradient_float64(beta, eps):
    """Rafailov et al. eq. 7 (+ cDPO smoothing) on random log-probs with padding."""
    g = torch.Generator().manual_seed(0)
    B, T = 6, 9
    def rand():
        return (-torch.rand(B, T, generator=g, dtype=torch.float64) * 5)
    mw = torch.rand(B, T, generator=g) > 0.3
    ml = torch.rand(B, T, generator=g) > 0.3
    mw[:, 0] = ml[:, 0] = False  # padding / prompt positions
    mw[0, :] = False  # a sequence with no completion tokens at all (edge case)
    pw, pl, rw, rl = rand().requires_grad_(), rand().requires_grad_(), rand(), rand()
    obj = DPO(DPO.Config(beta=beta, label_smoothing=eps))
    sc = FakeScorer({"chosen": (pw, mw.double()), "rejected": (pl, ml.double())},
                    {"chosen": (rw, mw.double()), "rejected": (rl, ml.double())})
    loss_sum, metrics = obj.loss({"chosen_input_ids": torch.zeros(B, T)}, sc)
    expect = ref_dpo(pw.detach(), pl.detach(), rw, rl, mw, ml, beta, eps, "sigmoid")
    assert obj.units({"chosen_input_ids": torch.zeros(B, T)}) == B
    assert abs(loss_sum.item() - sum(expect)) < 1e-10
    # Gradient by central finite differences of the float64 reference, per coordinate; padding never
    # gets gradient.
    finite_difference_check(loss_sum, {"pw": pw, "pl": pl}, {"pw": mw, "pl": ml},
                            lambda x: sum(ref_dpo(x["pw"], x["pl"], rw, rl, mw, ml, beta, eps, "sigmoid")),
                            coords=((1, 3), (2, 5), (0, 4), (4, 1)))


# ---- sigmoid, robust, hinge, ln ------------------------------------------------------------------

@pytest.mark.parametrize("kind,beta,eps", [
    ("sigmoid", 0.1, 0.0), ("sigmoid", 0.5, 0.3), ("robust", 0.1, 0.0), ("robust", 0.5, 0.2), ("robust", 2.0, 0.45),
    ("hinge", 0.1, 0.0), ("hinge", 0.7, 0.0), ("ln", 1.0, 0.0), ("ln", 3.0, 0.1),
])
def test_dpo_variants_value_and_gradient(kind, beta, eps):
    pw, pl, rw, rl, mw, ml = paired_inputs(1)
    obj = DPO(DPO.Config(beta=beta, label_smoothing=eps, loss_type=kind))
    loss_sum, metrics = obj.loss(BATCH, paired_scorer(pw, pl, rw, rl, mw, ml))
    expect = ref_dpo(pw.detach(), pl.detach(), rw, rl, mw, ml, beta, eps, kind)
    assert loss_sum.item() == pytest.approx(sum(expect), abs=1e-10)
    finite_difference_check(loss_sum, {"pw": pw, "pl": pl}, {"pw": mw, "pl": ml},
                            lambda x: sum(ref_dpo(x["pw"], x["pl"], rw, rl, mw, ml, beta, eps, kind)))


def test_dpo_label_smoothing_edges():
    pw, pl, rw, rl, mw, ml = paired_inputs(2)
    sc = paired_scorer(pw, pl, rw, rl, mw, ml)
    plain = DPO(DPO.Config(beta=0.3)).loss(BATCH, sc)[0]
    # ε = 0: cDPO and robust DPO are plain DPO.
    assert DPO(DPO.Config(beta=0.3, loss_type="robust")).loss(BATCH, sc)[0].item() == pytest.approx(plain.item(), abs=1e-12)
    assert DPO(DPO.Config(beta=0.3, label_smoothing=0.0)).loss(BATCH, sc)[0].item() == pytest.approx(plain.item())
    # ε → 1/2: cDPO's loss becomes symmetric in the label (log 2 + |h|-independent gradient 0 at h=0) ...
    h = torch.tensor([0.0], dtype=torch.float64)
    sc0 = FakeScorer({"chosen": (torch.zeros(1, 3, dtype=torch.float64), torch.ones(1, 3, dtype=torch.float64)),
                      "rejected": (torch.zeros(1, 3, dtype=torch.float64), torch.ones(1, 3, dtype=torch.float64))},
                     {"chosen": (torch.zeros(1, 3, dtype=torch.float64), torch.ones(1, 3, dtype=torch.float64)),
                      "rejected": (torch.zeros(1, 3, dtype=torch.float64), torch.ones(1, 3, dtype=torch.float64))})
    for e in (0.0, 0.2, 0.49):
        v = DPO(DPO.Config(beta=1.0, label_smoothing=e)).loss({"chosen_input_ids": h[None]}, sc0)[0]
        assert v.item() == pytest.approx(math.log(2))  # at h = 0 every smoothing gives log 2
    # ... and robust DPO is unbiased under label noise ε (Chowdhury et al., Lemma 3.1): averaged
    # over a label flipped with probability ε, its loss is the clean sigmoid loss.
    eps, beta = 0.2, 0.5
    pw, pl, rw, rl, mw, ml = paired_inputs(3)
    robust = DPO(DPO.Config(beta=beta, label_smoothing=eps, loss_type="robust"))
    as_labelled = robust.loss(BATCH, paired_scorer(pw, pl, rw, rl, mw, ml))[0]
    flipped = robust.loss(BATCH, paired_scorer(pl, pw, rl, rw, ml, mw))[0]
    clean = DPO(DPO.Config(beta=beta)).loss(BATCH, paired_scorer(pw, pl, rw, rl, mw, ml))[0]
    assert ((1 - eps) * as_labelled + eps * flipped).item() == pytest.approx(clean.item(), rel=1e-10)


# ---- the loss types of the peers: EXO, NCA, BCO, SPPO, AOT, APO, DiscoPOP, SFT -------------------

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


def test_a_list_loss_type_composes_from_hydra_overrides():
    from conftest import compose
    from prefopt.core.config import typed

    cfg = compose(["algo=dpo", "algo.loss_type=[sigmoid,bco_pair,sft]", "algo.loss_weights=[0.8,0.2,1.0]"])
    c = typed(DPO.Config, cfg.algo, "algo")
    assert c.loss_types == ["sigmoid", "bco_pair", "sft"] and c.loss_weights == [0.8, 0.2, 1.0]
    with pytest.raises(UserError, match="algo.loss_weights has 1 weights"):
        typed(DPO.Config, compose(["algo=dpo", "algo.loss_type=[sigmoid,sft]", "algo.loss_weights=[1.0]"]).algo, "algo")


# ---- BCO's running shift: objective state --------------------------------------------------------

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


# ---- extremes ------------------------------------------------------------------------------------

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
