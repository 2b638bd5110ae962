"""The 2025–26 policy losses against TRL 1.16's own code on identical inputs (value and gradient):
``GRPOTrainer._compute_loss`` with ``loss_type`` sapo / luspo / vespo, ``importance_sampling_level="sequence"``
(GSPO), ``top_entropy_quantile``; the experimental ``GMPOTrainer``. TRL's trainer is called with a stand-in
for itself: the model's per-token log-probs and entropies are given, the accelerator is one process, no
gradient accumulation.

Shared options not compared here, with the reason:
- DPPO: TRL 1.16 has no DPPO (verl and prime-rl do); tests/test_pg_losses.py checks it against the paper.
- Clip-Cov / KL-Cov: not in TRL (verl's); checked against the paper's definition in tests/test_pg_losses.py.
- IcePop / geometric masking: TRL 1.16's ``vllm_importance_sampling_mode`` has token/sequence truncate/mask
  only; ``token_mask`` is IcePop's weight and is compared in tests/test_pg_variants.py's float64 reference.
- GSPO-token: TRL has the sequence form only.
"""

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from prefopt.objectives.policy_gradient import GMPO, GRPO, GSPO, LUSPO, SAPO, VESPO
from test_pg_losses import batch_inputs, run

pytest.importorskip("trl")


def _acc():
    return SimpleNamespace(gather=lambda x: x, reduce=lambda x, reduction="sum": x, gather_for_metrics=lambda x: x,
                           pad_across_processes=lambda x, dim=0, pad_index=0: x, num_processes=1)


def trl_loss(trainer_cls, per_token_logps, entropies, mask, old, advantages, **kw):
    """``trainer_cls._compute_loss`` on a stand-in trainer; ``kw`` sets its options (loss_type, epsilon_low, ...)."""
    from trl import GRPOTrainer

    B, C = per_token_logps.shape
    args = SimpleNamespace(use_bias_correction_kl=False, delta=None, sapo_temperature_pos=1.0, sapo_temperature_neg=1.05,
                           vespo_k_pos=2.0, vespo_lambda_pos=3.0, vespo_k_neg=3.0, vespo_lambda_neg=2.0,
                           steps_per_generation=1)
    for k in list(kw):
        if hasattr(args, k):
            setattr(args, k, kw.pop(k))
    fake = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (per_token_logps, entropies, None),
        aux_loss_enabled=False, accelerator=_acc(), model=SimpleNamespace(training=True),
        _metrics={"train": defaultdict(list)}, current_gradient_accumulation_steps=1, top_entropy_quantile=1.0,
        off_policy_mask_threshold=None, importance_sampling_level="token", beta=0.0, args=args, use_vllm=False,
        vllm_importance_sampling_correction=False, _entropy_bonus_enabled=False, max_completion_length=C,
        epsilon_low=0.2, epsilon_high=0.2, get_gamma_weights=GRPOTrainer.get_gamma_weights)
    for k, v in kw.items():
        setattr(fake, k, v)
    fake.get_high_entropy_mask = lambda *a: GRPOTrainer.get_high_entropy_mask(fake, *a)
    inputs = {"prompt_ids": torch.zeros(B, 1, dtype=torch.long), "prompt_mask": torch.ones(B, 1, dtype=torch.long),
              "completion_ids": torch.zeros(B, C, dtype=torch.long), "completion_mask": mask.long(),
              "old_per_token_logps": old, "advantages": advantages, "num_items_in_batch": mask.sum()}
    return trainer_cls._compute_loss(fake, None, inputs)


def compare(obj, trainer_cls, lp, old, A, mask, entropy=None, tol=1e-12, **trl_kw):
    """prefopt's loss and gradient vs TRL's; returns the max |differences| (value, gradient)."""
    got, grad, _ = run(obj, lp, old, A, mask, entropy)
    c = slice(1, None)  # TRL sees the completion columns only
    t_lp = lp[:, c].clone().requires_grad_(True)
    cm = mask[:, c]
    H = torch.zeros_like(t_lp) if entropy is None else entropy[:, c]
    A_seq = (A * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    trl = trl_loss(trainer_cls, t_lp * cm, H, cm, torch.where(cm, old[:, c], torch.zeros_like(t_lp)), A_seq, **trl_kw)
    trl.backward()
    dv = abs(got - float(trl.detach()))
    dg = float((grad[:, c] - t_lp.grad * cm).abs().max())
    assert dv < tol * max(1.0, abs(got)), (got, float(trl))
    assert dg < tol, dg
    return dv, dg


def _grpo():
    from trl import GRPOTrainer

    return GRPOTrainer


@pytest.mark.parametrize("seed", [0, 1])
def test_gspo_matches_trl_sequence_importance_sampling(seed):
    lp, old, A, mask = batch_inputs(seed, noise=1.5e-3, hole=False)
    compare(GSPO(GSPO.Config()), _grpo(), lp, old, A, mask, loss_type="grpo", importance_sampling_level="sequence",
            epsilon_low=3e-4, epsilon_high=4e-4)


def test_luspo_matches_trl():
    lp, old, A, mask = batch_inputs(2, noise=1.5e-3, hole=False)
    compare(LUSPO(LUSPO.Config()), _grpo(), lp, old, A, mask, loss_type="luspo", importance_sampling_level="sequence",
            epsilon_low=3e-4, epsilon_high=4e-4)


@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("taus", [(1.0, 1.05), (0.5, 2.0)])
def test_sapo_matches_trl(level, taus):
    """To 1e-7, not 1e-12: TRL builds τ with torch.where(A > 0, float, float), a float32 tensor, so its gate is
    rounded at float32 (measured differences ~4e-9); prefopt keeps the advantages' dtype."""
    lp, old, A, mask = batch_inputs(3, noise=0.5, hole=False)
    obj = SAPO(SAPO.Config(sapo_tau_pos=taus[0], sapo_tau_neg=taus[1], ratio_level=level))
    compare(obj, _grpo(), lp, old, A, mask, loss_type="sapo", importance_sampling_level=level,
            sapo_temperature_pos=taus[0], sapo_temperature_neg=taus[1], tol=1e-7)


@pytest.mark.parametrize("noise", [0.05, 0.5])
def test_vespo_matches_trl(noise):
    lp, old, A, mask = batch_inputs(4, noise=noise, hole=False)
    compare(VESPO(VESPO.Config()), _grpo(), lp, old, A, mask, loss_type="vespo")


@pytest.mark.parametrize("q", [0.2, 0.6])
def test_top_entropy_quantile_matches_trl(q):
    lp, old, A, mask = batch_inputs(5, noise=0.3, hole=False)
    H = torch.rand(lp.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 4
    obj = GRPO(GRPO.Config(kl_coef=0.0, entropy_control="top_entropy_quantile", top_entropy_quantile=q))
    compare(obj, _grpo(), lp, old, A, mask, H, loss_type="grpo", top_entropy_quantile=q)


@pytest.mark.parametrize("eps", [(0.4, 0.4), (0.1, 0.3)])
def test_gmpo_matches_trls_gmpo_trainer(eps):
    from trl.experimental.gmpo import GMPOTrainer

    lp, old, A, mask = batch_inputs(6, noise=0.4, hole=False)
    obj = GMPO(GMPO.Config(clip_eps_low=eps[0], clip_eps_high=eps[1]))
    compare(obj, GMPOTrainer, lp, old, A, mask, epsilon_low=eps[0], epsilon_high=eps[1])
