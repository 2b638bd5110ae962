r"""Policy-gradient objectives: PPO, RLOO, GRPO, Dr. GRPO, DAPO, REINFORCE++, ReMax, CISPO, GSPO, GSPO-token,
LUSPO, SAPO, GMPO, DPPO, VESPO: one loss, presets over its axes.

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
    gdpo: several reward terms (``reward=list``), each normalized in its group, then their weighted sum
          over the rollout (GDPO, Liu et al. 2026, arXiv:2601.05242; TRL's normalize_then_sum);
    greedy: A_i = r_i − r(x, ȳ),  ȳ = the greedy (top-1) completion of the same prompt, sampled with
               the rollout (ReMax, Li et al. 2023, arXiv:2310.10505, Algorithm 1; ȳ's own KL term is
               not subtracted: a baseline that does not depend on y_i keeps the estimate unbiased).

Policy loss (``policy_loss``; one file per family in :mod:`prefopt.objectives.pg.losses`, each with its
equations): pg_t, the per-token policy-gradient loss, from log π, log π_old and A_t, with the importance
ratio ρ_t at ``ratio_level`` token | sequence (GSPO) | sequence_token (GSPO-token) | sequence_sum (RLOO):

    clip       pg_t = −min(ρ_t A_t, clip(ρ_t, 1 − ε_low, 1 + ε_high) A_t)   (PPO, GRPO, DAPO, GSPO, LUSPO)
    cispo      pg_t = −sg[clip(ρ_t, 1 − ε_low, 1 + ε_high)] · A_t · log π(y_t)         (MiniMax-M1)
    sapo       pg_t = −σ(τ_t (ρ_t − 1)) · 4/τ_t · A_t,  τ_t = τ_pos | τ_neg by the sign of A_t (Qwen SAPO)
    gmpo       pg_t = −exp((1/|y_i|) Σ_u clip_sgn(log ρ_u)) · A_i     (geometric mean, log-space clip)
    dppo_tv    pg_t = −A_t · sg[min(ρ_t, C)] · log π(y_t) · [p_t − q_t inside ±δ on A_t's side]
    dppo_kl    the same with the binary KL of the token's probability as the divergence
    vespo      pg_t = −sg[φ(w_i)] · A_t · log π(y_t),  φ(w) = e^λ w^k e^{−λw}, w_i the sequence ratio

The per-token loss (Schulman et al. 2017; GRPO's KL in the loss, Shao et al. 2024, arXiv:2402.03300):

    ℓ_t = c_t · pg_t                        c_t: the sampler correction below; pg_t after the entropy control
        + β k(t)                           when kl_in=loss; k = k1 | k2 | k3 (:mod:`prefopt.objectives.pg.kl`)
                                           (GRPO's β·k3 as in its paper, eq. 3; TRL 1.16's GRPOTrainer
                                           defaults to use_bias_correction_kl=True, β·ρ_t·k3: the
                                           same for one step per rollout, ρ = 1, different over
                                           several epochs)
        − c_H H_t                          entropy bonus, c_H = ``entropy_coef``
        + c_V · ½ max((V_t − R_t)², (V_old,t + clip(V_t − V_old,t, ±ε_V) − R_t)²)   (gae only)

With seq-mean-token-sum below and ratio_level=sequence_sum, the policy term of L is (1/N) Σ_i pg_i, whose
gradient at ρ = 1 is −(1/N) Σ_i A_i ∇ log π(y_i|x): the RLOO paper's estimator and exactly TRL's
``RLOOTrainer`` loss (``per_sequence_loss.mean()``). A token ratio with token-mean weighs each sequence by
|y_i| / Σ_j |y_j| (long completions weigh more); seq-mean-token-mean divides each sequence's gradient by
|y_i| (short completions weigh more).

Entropy control (``entropy_control``; :mod:`prefopt.objectives.pg.entropy_controls`): none | clip_cov |
kl_cov (Cui et al. 2025, arXiv:2505.22617) | top_entropy_quantile (only the top-q highest-entropy
tokens keep pg_t; Wang et al. 2025, arXiv:2506.01939).

Sampler correction (``rollout_is``; :mod:`prefopt.objectives.pg.rollout_is`): c_t = sg[w] from
w = π_old / μ when the sampler's log-probs μ differ from the trainer's, C_min = ``rollout_is_min``,
C_max = ``rollout_is_max``: token_truncate, token_mask, sequence_truncate, sequence_mask, icepop
(IcePop's both-sided token mask), geometric_mask (whole sequences whose exp(mean_t log w_t) leaves
[C_min, C_max]).

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
    gspo     group (÷std), ratio_level=sequence, ε = (3e-4, 4e-4), seq-mean-token-mean, no KL (Zheng et al. 2025)
    gspo_token  the same with ratio_level=sequence_token (GSPO-token: token advantages weigh their token)
    luspo    GSPO's ratio with seq-mean-token-sum: each sequence's loss × |y_i| (arXiv:2602.05261; TRL's luspo)
    sapo     group (÷std), policy_loss=sapo, τ = (1.0, 1.05), seq-mean-token-mean, no KL (Qwen 2025)
    gmpo     group (÷std), policy_loss=gmpo, log-space clip ±0.4, seq-mean-token-mean, no KL (GMPO 2025)
    dppo     group (÷std), policy_loss=dppo_kl, δ = 0.05, token-mean, no KL (DPPO 2026)
    dppo_tv  the same with policy_loss=dppo_tv, δ = 0.2
    vespo    group (÷std), policy_loss=vespo, (k, λ) = (2, 3) / (3, 2), token-mean, no KL (VESPO 2026)

Fixed point (KL in the reward: ppo with a fixed β, rloo, remax, reinforce_pp): π*(y|x) ∝ π_ref(y|x) ·
exp(r(x, y)/β), the maximizer of E_π[r] − β KL(π ‖ π_ref): the per-token k1 terms sum to the sequence's
−β log π/π_ref and every baseline (leave-one-out, the greedy reward, the critic, whitening's mean) is
independent of the sample; on multi-token completions it is the sequence-level π*. Whitening rescales
the step by 1/std(A), which shrinks near π*, so a fixed learning rate hovers ∝ lr away; PPO's adaptive
β (kl_target) moves the point.

Fixed point (grpo and every group-advantage preset with kl_coef > 0, k3 KL in the loss, groups of K = 2,
one step per rollout): π(y|x) = β π_ref(y|x) / (β − â_π(y|x)), â_π(y) = E_{y'~π}[A(y; y')] with
A = sign(r(y) − r(y'))/√2 (÷std) or (r(y) − r(y'))/2 (dr_grpo); the ∇ of E_π[k3] at π_old = π is
∇ KL(π_ref ‖ π). Implicit and rank-based, not π*: it can rank a worse completion above a better one
that π_ref makes rarer. At ratio 1 every policy loss (clip, cispo, gspo/gspo_token/luspo, sapo, gmpo,
dppo/dppo_tv, vespo) has the gradient −A ∇log π, so all share this point.

Fixed point: none for the presets as shipped without a KL term (dr_grpo, dapo, cispo, gspo, gspo_token,
luspo, sapo, gmpo, dppo, dppo_tv, vespo): the stationary points are the vertices of the simplex and π
goes to the best completion; the tests check that E_π[r] rises every rollout (inside one rollout a
clipped step on stale advantages can lower it: dapo, gmpo, gspo/gspo_token/luspo at the tests' lr).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch

from prefopt.objectives.pg import advantages as adv
from prefopt.core.errors import UserError
from prefopt.objectives.pg.entropy_controls import ENTROPY_CONTROLS
from prefopt.objectives.pg.losses import POLICY_LOSSES
from prefopt.objectives.pg.rollout_is import SAMPLER_CORRECTIONS
from prefopt.objectives.pg.kl import ESTIMATORS as KL_ESTIMATORS
from prefopt.objectives.pg.kl import KLController, kl_estimate
from prefopt.rollout.source import RolloutFields
from prefopt.objectives.registry import Needs, OnlineObjective, preset

LOSS_AGG = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm", "seq-mean-token-sum")
RATIO_LEVELS = ("token", "sequence", "sequence_token", "sequence_sum")
ADVANTAGES = (*adv.ESTIMATORS, "reinforce", "greedy")
CRITICS = ("separate", "shared")


def _choice(key, value, accepted):
    if value not in accepted:
        raise UserError(f"algo.{key}='{value}' is not known; accepted: {', '.join(accepted)}")


@dataclass
class PGConfig(RolloutFields):
    name: str = "grpo"
    # advantage
    advantage: str = "group"  # gae | leave_one_out | group | baseline | reinforce | greedy (ReMax) | gdpo
    scale_by_std: bool = True  # group: divide by the group's std (false: Dr. GRPO)
    whiten_advantages: bool = False
    gamma: float = 1.0  # gae
    lam: float = 0.95  # gae
    baseline_decay: float = 0.9  # baseline: moving-average decay
    # policy loss
    clip_eps_low: float = 0.2
    clip_eps_high: float = 0.2
    # token | sequence (GSPO) | sequence_token (GSPO-token) | sequence_sum (RLOO: the completion is one action)
    ratio_level: str = "token"
    loss_agg: str = "seq-mean-token-mean"
    policy_loss: str = "clip"  # a family of prefopt.objectives.pg.losses: clip | cispo | sapo | gmpo | dppo_tv | ...
    sapo_tau_pos: float = 1.0  # sapo: gate temperature for A > 0
    sapo_tau_neg: float = 1.05  # sapo: gate temperature for A <= 0
    is_ratio_max: float = 20.0  # dppo: C, the truncation of the IS weight sg[min(ρ, C)]
    vespo_k_pos: float = 2.0  # vespo: φ(w) = e^λ w^k e^{−λw}, (k, λ) for A >= 0 ...
    vespo_lambda_pos: float = 3.0
    vespo_k_neg: float = 3.0  # ... and for A < 0
    vespo_lambda_neg: float = 2.0
    entropy_coef: float = 0.0
    # entropy control (prefopt.objectives.pg.entropy_controls): none | clip_cov | kl_cov | top_entropy_quantile
    entropy_control: str = "none"
    clip_cov_ratio: float = 2e-4  # clip_cov: share of the tokens that lose their gradient
    clip_cov_lb: float = 1.0  # clip_cov: covariance window (lb, ub) of the candidates
    clip_cov_ub: float = 5.0
    kl_cov_ratio: float = 2e-4  # kl_cov: share of the tokens (largest covariance) that get the penalty
    kl_cov_coef: float = 1.0  # kl_cov: β_cov of β_cov·|log π − log π_old|
    top_entropy_quantile: float = 0.2  # top_entropy_quantile: q, the share of tokens that keep pg_t
    # sampler correction (prefopt.objectives.pg.rollout_is): reweight by π_old/μ when the sampler's log-probs
    # μ differ from the trainer's: none | token_truncate | token_mask | sequence_truncate | sequence_mask |
    # icepop | geometric_mask
    rollout_is: str = "none"
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
        _choice("ratio_level", self.ratio_level, RATIO_LEVELS)
        POLICY_LOSSES.lookup(self.policy_loss).check(self)
        SAMPLER_CORRECTIONS.lookup(self.rollout_is)
        ENTROPY_CONTROLS.lookup(self.entropy_control)
        if not (0 < self.clip_cov_ratio <= 1 and 0 < self.kl_cov_ratio <= 1 and 0 < self.top_entropy_quantile <= 1):
            raise UserError("algo.clip_cov_ratio, kl_cov_ratio and top_entropy_quantile must be in (0, 1]")
        if not 0 <= self.rollout_is_min < self.rollout_is_max:
            raise UserError(f"algo.rollout_is_min={self.rollout_is_min} and rollout_is_max={self.rollout_is_max}: "
                            "accepted: 0 <= rollout_is_min < rollout_is_max")
        _choice("loss_agg", self.loss_agg, LOSS_AGG)
        _choice("kl_estimator", self.kl_estimator, KL_ESTIMATORS)
        _choice("kl_in", self.kl_in, ("loss", "reward"))
        _choice("critic", self.critic, CRITICS)
        if self.kl_coef < 0:
            raise UserError(f"algo.kl_coef={self.kl_coef} must be >= 0")
        if self.kl_target is not None and (self.kl_target <= 0 or self.kl_coef <= 0):
            raise UserError("algo.kl_target (adaptive KL) needs kl_target > 0 and an initial kl_coef > 0")
        if self.advantage in ("group", "leave_one_out", "gdpo") and self.samples_per_prompt < 2:
            raise UserError(f"algo.samples_per_prompt={self.samples_per_prompt}: advantage={self.advantage} compares "
                            "samples of the same prompt; accepted: samples_per_prompt >= 2")
        if self.advantage == "gdpo" and self.kl_in == "reward" and self.kl_coef > 0:
            raise UserError("algo.advantage=gdpo normalises the reward terms themselves, so a KL in the reward would "
                            "be lost; accepted: algo.kl_in=loss, or algo.kl_coef=0")
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
                                         groups=cfg.advantage in ("group", "leave_one_out", "gdpo")
                                         or cfg.dynamic_sampling,
                                         reward_terms=cfg.advantage == "gdpo",
                                         sampler_logps=cfg.rollout_is != "none",
                                         greedy_baseline=cfg.advantage == "greedy")
        self.kl = KLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon)
        self.policy_loss = POLICY_LOSSES.lookup(cfg.policy_loss)(cfg)
        self.correction = SAMPLER_CORRECTIONS.lookup(cfg.rollout_is)(cfg.rollout_is_min, cfg.rollout_is_max)
        self.entropy_control = ENTROPY_CONTROLS.lookup(cfg.entropy_control)(cfg)
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
            elif c.advantage == "gdpo":
                a = adv.gdpo(roll["reward_terms"], roll["reward_weights"], K)
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
        """sg[w]: the sampler correction's weight of pg_t (:mod:`prefopt.objectives.pg.rollout_is`)."""
        w, kept = self.correction.weight((old.detach() - sampler_logps) * mask, mask)
        if kept is not None:
            metrics["rollout_is/masked_frac"] = self._metric((~kept).float(), mask, T_max)
        metrics["rollout_is/weight"] = self._metric(w, mask, T_max)
        return w * mask

    def loss(self, batch, scorer):
        c = self.cfg
        want_entropy = c.entropy_coef > 0 or self.entropy_control.needs_entropy
        stats = scorer.logps(batch, entropy=want_entropy)
        V = scorer.values(batch) if "returns" in batch else None
        logp, mask = stats.logps, stats.mask.float()
        # One optimizer step per rollout: π_old is the policy itself (prefopt.rollout.source, step 4).
        old = logp.detach() if batch.get("old_is_current") else batch["old_logps"]
        A = batch["advantages"]
        T_max = int(batch.get("norm_tokens", 1))  # max_new_tokens

        terms = self.policy_loss(logp, old, A, mask)
        pg, ρ = terms.pg, terms.ratio
        pg, controlled = self.entropy_control.apply(pg, logp, old, A, mask, terms.clipped, stats.entropy)
        metrics = {}
        if controlled is not None:
            metrics["entropy_control_frac"] = self._metric(controlled.float(), mask, T_max)
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
            metrics["policy_loss"] = self._metric(pg.detach(), mask, T_max)
            metrics["clip_frac"] = self._metric(terms.clipped.float(), mask, T_max)
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

GSPO = preset("gspo", PolicyGradient, "GSPO: the clipped sequence ratio s_i, tiny clip range (Zheng et al. 2025).",
              ratio_level="sequence", clip_eps_low=3e-4, clip_eps_high=4e-4, loss_agg="seq-mean-token-mean",
              kl_coef=0.0)
GSPO_TOKEN = preset("gspo_token", PolicyGradient, "GSPO-token: sg[s_i]·π/sg[π], token advantages (Zheng et al. 2025).",
                    ratio_level="sequence_token", clip_eps_low=3e-4, clip_eps_high=4e-4, loss_agg="seq-mean-token-mean",
                    kl_coef=0.0)
LUSPO = preset("luspo", PolicyGradient, "LUSPO: GSPO's ratio, each sequence's loss × its length (arXiv:2602.05261).",
               ratio_level="sequence", clip_eps_low=3e-4, clip_eps_high=4e-4, loss_agg="seq-mean-token-sum",
               kl_coef=0.0)
SAPO = preset("sapo", PolicyGradient, "SAPO: a sigmoid soft gate instead of the clip (Qwen 2025, arXiv:2511.20347).",
              policy_loss="sapo", loss_agg="seq-mean-token-mean", kl_coef=0.0)
GMPO = preset("gmpo", PolicyGradient, "GMPO: the geometric mean of log-space-clipped token ratios (arXiv:2507.20673)",
              policy_loss="gmpo", clip_eps_low=0.4, clip_eps_high=0.4, loss_agg="seq-mean-token-mean", kl_coef=0.0)
DPPO = preset("dppo", PolicyGradient, "DPPO: a binary-KL trust region on each token's probability (arXiv:2602.04879)",
              policy_loss="dppo_kl", clip_eps_low=0.05, clip_eps_high=0.05, loss_agg="token-mean", kl_coef=0.0)
DPPO_TV = preset("dppo_tv", PolicyGradient, "DPPO-TV: a total-variation trust region on each token's probability.",
                 policy_loss="dppo_tv", clip_eps_low=0.2, clip_eps_high=0.2, loss_agg="token-mean", kl_coef=0.0)
VESPO = preset("vespo", PolicyGradient, "VESPO: a Gamma weight of the sequence ratio, not a clip (arXiv:2602.10693).",
               policy_loss="vespo", loss_agg="token-mean", kl_coef=0.0)

# The main coefficient the leaderboard's tuning grid tries (× its learning rates): β of the KL term; a
# preset without one (kl_coef 0: DAPO, Dr. GRPO, CISPO, and the 2025–26 losses) is tuned over the learning
# rate alone.
for _p in (PPO, RLOO, GRPO, DR_GRPO, DAPO, REINFORCE_PP, REMAX, CISPO, GSPO, GSPO_TOKEN, LUSPO, SAPO, GMPO, DPPO,
           DPPO_TV, VESPO):
    _p.tuning = {"kl_coef": (0.01, 0.1)} if _p.Config().kl_coef > 0 else {}
