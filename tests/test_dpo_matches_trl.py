"""DPO's loss types against TRL 1.16's own DPOTrainer._compute_loss on identical inputs: value and
gradient, one loss type at a time and as a weighted sum."""

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from loss_reference import BATCH, paired_inputs, paired_scorer
from prefopt.objectives.dpo import DPO


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
