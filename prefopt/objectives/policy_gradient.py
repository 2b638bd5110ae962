r"""Policy-gradient objectives: PPO, RLOO, GRPO, Dr. GRPO, DAPO, REINFORCE++, ReMax, CISPO: one loss,
presets over its axes.

The online pipeline (:mod:`prefopt.rollout.source`) samples G prompts × K completions y_i from π_old,
scores them (r_i, :mod:`prefopt.rollout.rewards`), and keeps log π_old, log π_ref and V_old per token.

Advantages (``advantage``; :mod:`prefopt.objectives.pg.advantages`). With the KL in the reward
(``kl_in=reward``), r_i ← r_i − β Σ_t k(t) for the sequence estimators, and for GAE the per-token
reward is  r_t = −β k(t) + [t = last] r_i  (Ziegler et al. 2019; Ouyang et al. 2022).

    gae: A_t from (r_t, V_old);  leave_one_out: A_i = r_i − mean_{j≠i} r_j;
    group: A_i = (r_i − mean_g r) / (std_g r + ε)  (``scale_by_std=false``: no division);
    baseline: A_i = r_i − b (moving average);  optionally whitened over the rollout;
    reinforce: A_t = Σ_{s≥t} γ^{s−t} r_s, the return-to-go of the per-token rewards above, no critic
               (REINFORCE++, Hu 2025, arXiv:2501.03262, eq. 4–6; with whiten_advantages, the
               global-batch normalization of eq. 7);
    greedy: A_i = r_i − r(x, ȳ),  ȳ = the greedy (top-1) completion of the same prompt, sampled with
               the rollout (ReMax, Li et al. 2023, arXiv:2310.10505, Algorithm 1; ȳ's own KL term is
               not subtracted: a baseline that does not depend on y_i keeps the estimate unbiased).

Policy loss, per completion token t of sequence i (Schulman et al. 2017, arXiv:1707.06347, eq. 7;
asymmetric clip ε_low/ε_high from DAPO, Yu et al. 2025, arXiv:2503.14476, eq. 10):

    ρ_t = π(y_t | ·) / π_old(y_t | ·)                                ratio_level=token
    ρ_t = sg[s_i] · π(y_t) / sg[π(y_t)],  s_i = exp((1/|y_i|) Σ_t log(π/π_old))     ratio_level=sequence
          (GSPO, Zheng et al. 2025, arXiv:2507.18071: the value is the sequence ratio s_i)
    pg_t = −min(ρ_t A_t, clip(ρ_t, 1 − ε_low, 1 + ε_high) A_t)
    ℓ_t = pg_t
        + β k(t)                           when kl_in=loss; k = k1 | k2 | k3 (:mod:`prefopt.objectives.pg.kl`)
                                           (GRPO's β·k3 as in its paper, eq. 3; TRL 1.16's GRPOTrainer
                                           defaults to use_bias_correction_kl=True, β·ρ_t·k3: the
                                           same for one step per rollout, ρ = 1, different over
                                           several epochs)
        − c_H H_t                          entropy bonus, c_H = ``entropy_coef``
        + c_V · ½ max((V_t − R_t)², (V_old,t + clip(V_t − V_old,t, ±ε_V) − R_t)²)   (gae only)

ratio_level=sequence_sum treats the whole completion as one action (RLOO, Ahmadian et al. 2024,
arXiv:2402.14740, eq. 7; REINFORCE's likelihood ratio of the sequence). A_i is the sequence's
advantage (every estimator but gae), and the surrogate is one number pg_i per sequence, spread evenly
over its |y_i| tokens so that Σ_t pg_t of the sequence is pg_i (ℓ_t adds β k(t) and − c_H H_t as above):

    ρ_i = π(y_i|x) / π_old(y_i|x) = exp(Σ_t log(π(y_t)/π_old(y_t)))
    pg_i = −min(ρ_i A_i, clip(ρ_i, 1 − ε_low, 1 + ε_high) A_i)       pg_t = pg_i / |y_i|   (t ∈ y_i)

With seq-mean-token-sum below, the policy term of L is (1/N) Σ_i pg_i, whose gradient at ρ = 1 is
−(1/N) Σ_i A_i ∇ log π(y_i|x), log π(y_i|x) = Σ_t log π(y_t): the paper's estimator and exactly TRL's
``RLOOTrainer`` loss (``per_sequence_loss.mean()``). The other options differ from it: a token ratio
with token-mean weighs each sequence by |y_i| / Σ_j |y_j| (gradient N / Σ_j |y_j| times the
paper's, long completions weigh more) and clips tokens one by one over several epochs;
seq-mean-token-mean divides each sequence's gradient by |y_i| (short completions weigh more).

``policy_loss=cispo`` replaces the clipped surrogate by CISPO's clipped-IS-weight REINFORCE term
(MiniMax-M1, arXiv:2506.13585, eq. 4–5): every token keeps its gradient, only the weight is clipped,

    pg_t = −sg[clip(ρ_t, 1 − ε_low, 1 + ε_high)] · A_t · log π(y_t | ·)

(ε_low = 1: no lower bound, as the paper; TRL's ``loss_type="cispo"`` clamps ρ_t at
``epsilon_high`` itself, the ratio bound ε_max = 1 + prefopt's ε_high; ScaleRL's ε_max = 5).

Sampler correction (``rollout_is``): when the sampler's log-probs log μ(y_t) differ from the
trainer's log π_old(y_t) (a faster inference engine, other kernels, quantized weights), the
policy-gradient term pg_t is reweighted by w = π_old / μ, per token or per sequence (Yao et al. 2025,
"Your efficient RL framework secretly brings you off-policy RL training": truncated IS; masked IS
as in verl and TRL's ``vllm_importance_sampling_mode``), with C_max = ``rollout_is_max``,
C_min = ``rollout_is_min``:

    token_truncate     pg_t ← min(max(w_t, C_min), C_max) · pg_t         w_t = π_old(y_t) / μ(y_t)
    token_mask         pg_t ← w_t · [C_min ≤ w_t ≤ C_max] · pg_t
    sequence_truncate  pg_t ← min(max(w_i, C_min), C_max) · pg_t         w_i = Π_t w_t
    sequence_mask      pg_t ← w_i · [C_min ≤ w_i ≤ C_max] · pg_t

(w is a constant, sg[·]; the KL, entropy and value terms of ℓ_t are not reweighted.)

Aggregation (``loss_agg``; the trainer divides the summed loss by ``units`` summed over the
optimizer step, so each mode is exact and independent of the micro-batch split):

    token-mean                L = Σ_{i,t} ℓ_t / Σ_i |y_i|                  units = tokens
    seq-mean-token-mean       L = (1/N) Σ_i (1/|y_i|) Σ_t ℓ_t              units = sequences
    seq-mean-token-sum-norm   L = (1/(N·T_max)) Σ_{i,t} ℓ_t                units = sequences × T_max
                              (Dr. GRPO's constant normalizer, T_max = max_new_tokens)
    seq-mean-token-sum        L = (1/N) Σ_i Σ_t ℓ_t                        units = sequences
                              (a sequence's loss is its summed token losses; RLOO, REINFORCE)

β is fixed, or adapted after each rollout towards ``kl_target`` (Ziegler et al.). Presets: the
classes at the end of this file; conf/algo/NAME.yaml states the same keys on top of
conf/algo/base/pg.yaml, which holds :class:`PGConfig`'s defaults (grpo's):

    ppo      gae + critic, whitened advantages, value clipping, k1 KL in the reward, adaptive β
    rloo     leave_one_out, K=4, k1 KL in the reward, sequence_sum ratio, seq-mean-token-sum
             (Ahmadian et al. 2024; as TRL's RLOOTrainer)
    grpo     group (÷std), k3 KL in the loss, seq-mean-token-mean (Shao et al. 2024)
    dr_grpo  group without ÷std, seq-mean-token-sum-norm (Liu et al. 2025)
    dapo     group (÷std), ε = (0.2, 0.28), token-mean, no KL, dynamic sampling (Yu et al. 2025)
    reinforce_pp  reinforce (return-to-go) whitened over the batch, k1 KL per token in the reward,
             clipped surrogate, token-mean (REINFORCE++, Hu 2025)
    remax    greedy baseline, one sample per prompt, sequence_sum ratio, seq-mean-token-sum, k1 KL in
             the reward (Li et al. 2023: ∇ = Σ_t ∇log π(y_t) · (r(x, y) − r(x, ȳ)))
    cispo    group (÷std), policy_loss=cispo with ρ ≤ 5 (ε_high = 4, no lower bound), token-mean, no KL
             (MiniMax 2025; ScaleRL's ε_max)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch

from prefopt.objectives.pg import advantages as adv
from prefopt.core.errors import UserError
from prefopt.objectives.pg.kl import ESTIMATORS as KL_ESTIMATORS
from prefopt.objectives.pg.kl import KLController, kl_estimate
from prefopt.rollout.source import RolloutFields
from prefopt.objectives.registry import Needs, OnlineObjective, preset

LOSS_AGG = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm", "seq-mean-token-sum")
RATIO_LEVELS = ("token", "sequence", "sequence_sum")
POLICY_LOSSES = ("clip", "cispo")
ROLLOUT_IS = ("none", "token_truncate", "token_mask", "sequence_truncate", "sequence_mask")
ADVANTAGES = (*adv.ESTIMATORS, "reinforce", "greedy")
CRITICS = ("separate", "shared")


def _choice(key, value, accepted):
    if value not in accepted:
        raise UserError(f"algo.{key}='{value}' is not known; accepted: {', '.join(accepted)}")


@dataclass
class PGConfig(RolloutFields):
    name: str = "grpo"
    # advantage
    advantage: str = "group"  # gae | leave_one_out | group | baseline | reinforce | greedy (ReMax)
    scale_by_std: bool = True  # group: divide by the group's std (false: Dr. GRPO)
    whiten_advantages: bool = False
    gamma: float = 1.0  # gae
    lam: float = 0.95  # gae
    baseline_decay: float = 0.9  # baseline: moving-average decay
    # policy loss
    clip_eps_low: float = 0.2
    clip_eps_high: float = 0.2
    ratio_level: str = "token"  # token | sequence (GSPO) | sequence_sum (RLOO: the completion is one action)
    loss_agg: str = "seq-mean-token-mean"
    policy_loss: str = "clip"  # clip (PPO's surrogate) | cispo (clipped IS weight × log π)
    entropy_coef: float = 0.0
    # sampler correction: reweight by π_old/μ when the sampler's log-probs μ differ from the trainer's
    rollout_is: str = "none"  # none | token_truncate | token_mask | sequence_truncate | sequence_mask
    rollout_is_max: float = 2.0  # C_max
    rollout_is_min: float = 0.0  # C_min
    # KL to the reference
    kl_coef: float = 0.04  # β; 0 disables (and no reference is kept)
    kl_estimator: str = "k3"  # k1 | k2 | k3
    kl_in: str = "loss"  # loss | reward
    kl_target: Optional[float] = None  # set: adaptive β towards this sequence KL (Ziegler et al.)
    kl_horizon: int = 10000
    # value function (advantage=gae)
    critic: str = "separate"  # separate | shared
    critic_path: Optional[str] = None  # separate critic's init; None: the reward model, else the policy
    vf_coef: float = 0.1
    value_clip: Optional[float] = 0.2

    def __post_init__(self):
        _choice("advantage", self.advantage, ADVANTAGES)
        _choice("policy_loss", self.policy_loss, POLICY_LOSSES)
        _choice("rollout_is", self.rollout_is, ROLLOUT_IS)
        if not 0 <= self.rollout_is_min < self.rollout_is_max:
            raise UserError(f"algo.rollout_is_min={self.rollout_is_min} and rollout_is_max={self.rollout_is_max}: "
                            "accepted: 0 <= rollout_is_min < rollout_is_max")
        _choice("loss_agg", self.loss_agg, LOSS_AGG)
        _choice("ratio_level", self.ratio_level, RATIO_LEVELS)
        _choice("kl_estimator", self.kl_estimator, KL_ESTIMATORS)
        _choice("kl_in", self.kl_in, ("loss", "reward"))
        _choice("critic", self.critic, CRITICS)
        low_max_ok = self.clip_eps_low <= 1 if self.policy_loss == "cispo" else self.clip_eps_low < 1
        if not (0 <= self.clip_eps_low and low_max_ok and self.clip_eps_high >= 0):
            raise UserError(f"algo.clip_eps_low={self.clip_eps_low} must be in [0, 1) ([0, 1] for cispo: 1 is no lower "
                            "bound) and clip_eps_high >= 0")
        if self.policy_loss == "cispo" and self.ratio_level == "sequence_sum":
            raise UserError("algo.policy_loss=cispo weights each token; accepted: ratio_level=token|sequence")
        if self.kl_coef < 0:
            raise UserError(f"algo.kl_coef={self.kl_coef} must be >= 0")
        if self.kl_target is not None and (self.kl_target <= 0 or self.kl_coef <= 0):
            raise UserError("algo.kl_target (adaptive KL) needs kl_target > 0 and an initial kl_coef > 0")
        if self.advantage in ("group", "leave_one_out") and self.samples_per_prompt < 2:
            raise UserError(f"algo.samples_per_prompt={self.samples_per_prompt}: advantage={self.advantage} compares "
                            "samples of the same prompt; accepted: samples_per_prompt >= 2")
        if self.dynamic_sampling and self.samples_per_prompt < 2:
            raise UserError("algo.dynamic_sampling drops groups whose rewards are all equal; accepted: samples_per_prompt >= 2")
        if self.ratio_level == "sequence_sum" and self.advantage in ("gae", "reinforce"):
            raise UserError("algo.ratio_level=sequence_sum needs one advantage per sequence; accepted: "
                            "advantage=leave_one_out|group|baseline (or ratio_level=token|sequence with gae)")
        if not 0 <= self.gamma <= 1 or not 0 <= self.lam <= 1:
            raise UserError("algo.gamma and algo.lam must be in [0, 1]")


class PolicyGradient(OnlineObjective):
    """The shared policy-gradient objective; registered below under each preset's name."""

    needs = Needs(data="prompt_only", reference=True, reward=True, rollouts=True)
    Config = PGConfig

    def __init__(self, cfg: PGConfig):
        self.cfg = cfg
        # The declarations follow the config: no reference without a KL term, a value head for GAE.
        self.needs = dataclasses.replace(type(self).needs, reference=cfg.kl_coef > 0,
                                         value_head=cfg.advantage == "gae",
                                         groups=cfg.advantage in ("group", "leave_one_out") or cfg.dynamic_sampling,
                                         sampler_logps=cfg.rollout_is != "none",
                                         greedy_baseline=cfg.advantage == "greedy")
        self.kl = KLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon)
        self.baseline = adv.MovingBaseline(cfg.baseline_decay)

    # ---- state carried from rollout to rollout (checkpointed by the trainer) --------------------
    def state_dict(self) -> dict:
        """The adaptive β and the moving baseline: what a resumed run needs besides the weights."""
        return {"kl_coef": self.kl.value, "baseline": self.baseline.value}

    def load_state_dict(self, state: dict) -> None:
        self.kl.value = float(state["kl_coef"])
        self.baseline.value = None if state["baseline"] is None else float(state["baseline"])

    # ---- rollout → advantages (called by the online pipeline, no gradient) --------------------
    def prepare(self, roll: dict):
        c = self.cfg
        mask = torch.zeros_like(roll["loss_mask"])
        mask[:, 1:] = roll["loss_mask"][:, 1:]
        maskf = mask.float()
        scores = roll["scores"]
        metrics = {}
        β = self.kl.value
        kl_tok = None
        if "ref_logps" in roll:
            kl_tok = kl_estimate(roll["old_logps"], roll["ref_logps"], c.kl_estimator) * maskf
            seq_kl_k1 = ((roll["old_logps"] - roll["ref_logps"]) * maskf).sum(-1)
            if seq_kl_k1.numel():
                metrics["rollout/kl_ref"] = float(seq_kl_k1.mean())
            metrics["rollout/kl_coef"] = β
        if c.kl_in == "reward" and kl_tok is not None:
            scores = scores - β * kl_tok.sum(-1)
        if scores.numel() == 0:
            roll["advantages"] = torch.zeros_like(maskf)
            return roll, metrics
        if c.advantage in ("gae", "reinforce"):
            rewards = torch.zeros_like(maskf)
            last = (mask.cumsum(-1) == mask.sum(-1, keepdim=True)) & mask  # the last completion token
            rewards[last] = roll["scores"]
            if c.kl_in == "reward" and kl_tok is not None:
                rewards = rewards - β * kl_tok
            if c.advantage == "gae":
                A, R = adv.gae(rewards, roll["old_values"], maskf, c.gamma, c.lam)
                roll["returns"] = R
            else:  # return-to-go: GAE with V = 0 and λ = 1
                A, _ = adv.gae(rewards, torch.zeros_like(maskf), maskf, c.gamma, 1.0)
        else:
            K = roll["group_size"]
            if c.advantage == "leave_one_out":
                a = adv.leave_one_out(scores, K)
            elif c.advantage == "group":
                a = adv.group_normalized(scores, K, c.scale_by_std)
            elif c.advantage == "greedy":
                a = scores - roll["baseline_scores"]
            else:
                a = self.baseline(scores)
            A = adv.broadcast(a, mask)
        if c.whiten_advantages:
            A = adv.whiten(A, mask)
        roll["advantages"] = A
        metrics["rollout/advantage_abs_mean"] = float((A.abs() * maskf).sum() / maskf.sum().clamp(min=1))
        if "ref_logps" in roll:
            self.kl.update(metrics.get("rollout/kl_ref", 0.0), int(scores.numel()))
        return roll, metrics

    # ---- loss ---------------------------------------------------------------------------------
    def units(self, batch) -> int:
        n = batch["input_ids"].shape[0]
        if self.cfg.loss_agg == "token-mean":
            return int(batch["loss_mask"][:, 1:].sum())
        if self.cfg.loss_agg in ("seq-mean-token-mean", "seq-mean-token-sum"):
            return n
        return n * int(batch["norm_tokens"])

    def _agg(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Σ over the units of the aggregation mode (see the module docstring); the trainer divides by
        the units, so seq-mean-token-sum-norm's 1/T_max lives in ``units``."""
        s = (x * mask).sum(-1)
        if self.cfg.loss_agg == "seq-mean-token-mean":
            return (s / mask.sum(-1).clamp(min=1)).sum()
        return s.sum()

    def _metric(self, x, mask, T_max):
        # Metric sums in the loss's units, so that sum / units is a mean of the same kind.
        if self.cfg.loss_agg == "seq-mean-token-sum-norm":
            return ((x * mask).sum(-1) / mask.sum(-1).clamp(min=1)).sum() * T_max
        if self.cfg.loss_agg == "seq-mean-token-sum":
            return ((x * mask).sum(-1) / mask.sum(-1).clamp(min=1)).sum()
        return self._agg(x, mask)

    def _sampler_weight(self, old, sampler_logps, mask, metrics, T_max):
        """sg[w]: the truncated / masked importance weight π_old / μ of the module docstring."""
        c = self.cfg
        log_w = (old.detach() - sampler_logps) * mask
        if c.rollout_is.startswith("sequence"):
            log_w = log_w.sum(-1, keepdim=True).expand_as(mask)
        w = torch.exp(log_w.clamp(max=20.0))
        if c.rollout_is.endswith("truncate"):
            out = w.clamp(c.rollout_is_min, c.rollout_is_max)
        else:
            keep = (w >= c.rollout_is_min) & (w <= c.rollout_is_max)
            out = w * keep
            metrics["rollout_is/masked_frac"] = self._metric((~keep).float(), mask, T_max)
        metrics["rollout_is/weight"] = self._metric(out, mask, T_max)
        return out * mask

    def loss(self, batch, scorer):
        c = self.cfg
        want_entropy = c.entropy_coef > 0
        stats = scorer.logps(batch, entropy=want_entropy)
        V = scorer.values(batch) if "returns" in batch else None
        logp, mask = stats.logps, stats.mask.float()
        # One optimizer step per rollout: π_old is the policy itself (prefopt.rollout.source, step 4).
        old = logp.detach() if batch.get("old_is_current") else batch["old_logps"]
        A = batch["advantages"]
        T_max = int(batch.get("norm_tokens", 1))  # max_new_tokens

        n_tok = mask.sum(-1).clamp(min=1)
        if c.ratio_level == "sequence_sum":
            # One action per completion: ρ_i = π(y_i|x)/π_old(y_i|x); A_i is constant over y_i.
            log_ρ_i = ((logp - old) * mask).sum(-1)
            A_i = (A * mask).sum(-1) / n_tok
            ρ_i = torch.exp(log_ρ_i.clamp(max=20.0))
            pg_i = torch.maximum(-A_i * ρ_i, -A_i * ρ_i.clamp(1 - c.clip_eps_low, 1 + c.clip_eps_high))
            pg = (pg_i / n_tok)[:, None] * mask  # Σ_t over the sequence = pg_i
            ρ = ρ_i.detach()[:, None] * mask  # for the metrics below
        else:
            if c.ratio_level == "token":
                log_ρ = logp - old
            else:
                seq = ((logp - old) * mask).sum(-1) / n_tok
                log_ρ = seq.detach()[:, None] + logp - logp.detach()
            ρ = torch.exp(log_ρ.clamp(max=20.0)) * mask
            ρ_clip = ρ.clamp(1 - c.clip_eps_low, 1 + c.clip_eps_high)
            if c.policy_loss == "cispo":
                pg = -ρ_clip.detach() * A * logp * mask
            else:
                pg = torch.maximum(-A * ρ, -A * ρ_clip)
        metrics = {}
        if c.rollout_is != "none":
            pg = pg * self._sampler_weight(old, batch["sampler_logps"], mask, metrics, T_max)
        ℓ = pg
        if c.kl_in == "loss" and self.kl.value > 0:
            kl = kl_estimate(logp, scorer.ref_logps(batch).logps, c.kl_estimator)
            ℓ = ℓ + self.kl.value * kl
            metrics["kl_ref"] = self._metric(kl.detach(), mask, T_max)
        if want_entropy:
            ℓ = ℓ - c.entropy_coef * stats.entropy
            metrics["entropy"] = self._metric(stats.entropy.detach(), mask, T_max)
        if V is not None:
            R, V_old = batch["returns"], batch["old_values"]
            vl = (V - R) ** 2
            if c.value_clip is not None:
                V_clip = V_old + (V - V_old).clamp(-c.value_clip, c.value_clip)
                vl = torch.maximum(vl, (V_clip - R) ** 2)
            ℓ = ℓ + c.vf_coef * 0.5 * vl
            metrics["value_loss"] = self._metric(0.5 * vl.detach(), mask, T_max)
        with torch.no_grad():
            clipped = ((ρ < 1 - c.clip_eps_low) & (A < 0)) | ((ρ > 1 + c.clip_eps_high) & (A > 0))
            metrics["policy_loss"] = self._metric(pg.detach(), mask, T_max)
            metrics["clip_frac"] = self._metric(clipped.float(), mask, T_max)
            metrics["ratio"] = self._metric(ρ.detach(), mask, T_max)
            d = logp.detach() - old
            metrics["approx_kl_old"] = self._metric(torch.exp(-d) - 1 + d, mask, T_max)  # k3 of KL(π‖π_old)
        return self._agg(ℓ, mask), metrics


PPO = preset("ppo", PolicyGradient, "PPO with GAE and a critic (Schulman et al. 2017; Ouyang et al. 2022).",
             advantage="gae", whiten_advantages=True, samples_per_prompt=1, prompts_per_step=64,
             minibatches_per_rollout=2, epochs_per_rollout=2, kl_estimator="k1", kl_in="reward", kl_coef=0.05,
             kl_target=6.0, loss_agg="token-mean")
RLOO = preset("rloo", PolicyGradient, "RLOO: leave-one-out baseline, one action per completion (Ahmadian 2024).",
              advantage="leave_one_out", samples_per_prompt=4, prompts_per_step=32, kl_estimator="k1",
              kl_in="reward", kl_coef=0.05, ratio_level="sequence_sum", loss_agg="seq-mean-token-sum")
GRPO = preset("grpo", PolicyGradient, "GRPO: group-normalized advantages, k3 KL in the loss (Shao et al. 2024).")
DR_GRPO = preset("dr_grpo", PolicyGradient, "Dr. GRPO: GRPO without ÷std and length normalization (Liu et al. 2025).",
                 scale_by_std=False, loss_agg="seq-mean-token-sum-norm", kl_coef=0.0)
DAPO = preset("dapo", PolicyGradient, "DAPO: asymmetric clip, token-mean, dynamic sampling, no KL (Yu et al. 2025).",
              clip_eps_high=0.28, loss_agg="token-mean", kl_coef=0.0, dynamic_sampling=True)
REINFORCE_PP = preset("reinforce_pp", PolicyGradient, "REINFORCE++: return-to-go, batch-whitened, no critic (Hu 2025).",
                      advantage="reinforce", whiten_advantages=True, samples_per_prompt=1, prompts_per_step=64,
                      kl_estimator="k1", kl_in="reward", kl_coef=0.01, loss_agg="token-mean")
REMAX = preset("remax", PolicyGradient, "ReMax: the greedy completion's reward as the baseline (Li et al. 2023).",
               advantage="greedy", samples_per_prompt=1, prompts_per_step=32, kl_estimator="k1", kl_in="reward",
               kl_coef=0.05, ratio_level="sequence_sum", loss_agg="seq-mean-token-sum")
CISPO = preset("cispo", PolicyGradient, "CISPO: clipped IS weight × log π for every token (MiniMax 2025).",
               policy_loss="cispo", clip_eps_low=1.0, clip_eps_high=4.0, loss_agg="token-mean", kl_coef=0.0)

# The main coefficient the leaderboard's tuning grid tries (× its learning rates): β of the KL term; a
# preset without one (kl_coef 0: DAPO, Dr. GRPO, CISPO) is tuned over the learning rate alone.
for _p in (PPO, RLOO, GRPO, DR_GRPO, DAPO, REINFORCE_PP, REMAX, CISPO):
    _p.tuning = {"kl_coef": (0.01, 0.1)} if _p.Config().kl_coef > 0 else {}
