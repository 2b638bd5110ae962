r"""Bradley–Terry reward model (Bradley & Terry, 1952; as trained for RLHF by Ouyang et al., 2022,
arXiv:2203.02155, eq. 1).

A sequence classifier with one output scores a prompt + completion: r(x, y) ∈ ℝ, read at the last
non-pad token (exactly how ``AutoModelForSequenceClassification`` pools, so the saved artifact
scores as in training). For a pair (x, y_c ≻ y_r) with an optional margin m (data column
``margin``, Llama 2's graded preferences, Touvron et al. 2023, eq. 2; 0 when absent):

    L = −log σ(r(x, y_c) − r(x, y_r) − m) + c · (r(x, y_c) + r(x, y_r))²

The second term (c = ``center_rewards_coefficient``, off by default) keeps rewards centred on 0
(Eisenstein et al., 2023, arXiv:2312.09244); the Bradley–Terry likelihood only sees differences,
so without it the mean reward drifts freely. Both terms and the margin match TRL's RewardTrainer.

Ties: a Bradley–Terry pair says which completion won, so a pair with no winner carries no
signal. A row is a tie when it has a true ``tie`` column, or ``score_chosen == score_rejected``
(UltraFeedback-style score columns). Ties are dropped before training (the count is reported);
data made only of ties is a user error. ``margin = 0`` is *not* a tie: it is a preference with no
extra margin. (chosen identical to rejected is rejected earlier by the data checks.)

Ranked data (K completions of a prompt, ranks ρ_1..ρ_K, 1 = best; :mod:`prefopt.data.ranked`)
trains with one example per prompt, whatever its K, with r_k = r(x, y_k):

``loss=bradley_terry`` (InstructGPT, eq. 1): all ordered pairs P_x = {(w, l) : ρ_w < ρ_l} of the
prompt, averaged, so a prompt weighs the same whether it has K = 2 or K = 9 (C(9,2) = 36 pairs):

    L_x = −(1/|P_x|) Σ_{(w,l) ∈ P_x} log σ(r_w − r_l)  [+ c · (1/|P_x|) Σ_{(w,l) ∈ P_x} (r_w + r_l)²]

|P_x| = C(K,2) without ties; tied completions make no pair.

``loss=plackett_luce`` (listwise; Plackett 1975, the K-wise MLE of Zhu et al. 2023, arXiv:2301.11270):
the likelihood of the whole ranking, best first, each level chosen among those not yet placed.
Ties by Breslow's method (1974): with levels ℓ = 1..L in rank order, G_ℓ the completions at level
ℓ and R_ℓ = G_ℓ ∪ … ∪ G_L,

    L_x = −Σ_ℓ [ Σ_{k ∈ G_ℓ} r_k − |G_ℓ| · log Σ_{j ∈ R_ℓ} exp(r_j) ]  [+ the same centring term]

A last level of one completion contributes 0; K = 2 without a tie is exactly Bradley–Terry.
The sum is not averaged over levels: it is one ranking's negative log-likelihood. On paired data
both losses are the Bradley–Terry pair loss above (margin included).

The run holds out a seeded ``eval_fraction`` of the pairs (unless the data config names an eval
split), never trained on, and reports pairwise accuracy on them, plus accuracy against the gold
reward's ordering on the testbed. ``model/`` is a standard ``AutoModelForSequenceClassification``
(num_labels=1, pad_token_id set) that the online methods can use as their reward.

The loss is summed over pairs (ranked data: prompts); the trainer divides by the step's count.

Fixed point (Bradley–Terry loss, no centring term, pairs labelled by σ(r(x, y) − r(x, y'))):
r_θ(x, y) = r(x, y) + c(x); only differences within a prompt are identified (checked in
tests/test_fixed_points.py).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from prefopt.core.errors import UserError
from prefopt.data.resample import bootstrap
from prefopt.objectives.registry import Needs, Objective, register

LOSSES = ("bradley_terry", "plackett_luce")
# Each member is a full run, trained one after another, and the ensemble lists every member's seed
# up front: a bound far above any useful ensemble (a few to tens of members) keeps a typo such as
# 1e20 from growing memory without a word.
MAX_MEMBERS = 1000


def is_tie(row: dict) -> bool:
    if row.get("tie") is True or row.get("tie") == 1:
        return True
    sc, sr = row.get("score_chosen"), row.get("score_rejected")
    return sc is not None and sr is not None and sc == sr


@register("reward")
class RewardModel(Objective):
    needs = Needs(data="paired", head="scalar", ranked=True)

    @dataclass
    class Config:
        name: str = "reward"
        center_rewards_coefficient: Optional[float] = None
        eval_fraction: float = 0.1  # held-out pairs for pairwise accuracy (seeded), never trained on
        # N members in one command (prefopt.run.members): they differ by seed, or (bootstrap) each also
        # trains on a seeded bootstrap resample of the training pairs; members/0 is the run's own seed.
        ensemble_members: int = 1
        ensemble_resample: str = "seed"  # seed | bootstrap
        loss: str = "bradley_terry"  # ranked data: bradley_terry (all pairs per prompt) | plackett_luce

        def __post_init__(self):
            if self.loss not in LOSSES:
                raise UserError(f"algo.loss='{self.loss}' is not known; accepted: {', '.join(LOSSES)}")
            c = self.center_rewards_coefficient
            if c is not None and c < 0:
                raise UserError(f"algo.center_rewards_coefficient={c} must be >= 0 (or null)")
            if not 0.0 <= self.eval_fraction < 1.0:
                raise UserError(f"algo.eval_fraction={self.eval_fraction} must be in [0, 1)")
            m = self.ensemble_members
            if isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= MAX_MEMBERS:
                raise UserError(f"algo.ensemble_members={m!r}; accepted: a whole number >= 1 and <= {MAX_MEMBERS} "
                                "(each member is a whole training run)")
            if self.ensemble_resample not in ("seed", "bootstrap"):
                raise UserError(f"algo.ensemble_resample='{self.ensemble_resample}' is not known; accepted: seed, bootstrap")

    def __init__(self, cfg: "RewardModel.Config"):
        self.cfg = cfg

    def ensemble_members(self) -> int:
        return self.cfg.ensemble_members

    def resample_examples(self, examples: list, seed: int) -> list:
        return bootstrap(examples, seed) if self.cfg.ensemble_resample == "bootstrap" else examples

    def prepare_examples(self, examples: list, rows: list, source: str) -> list:
        # A ranked prompt whose completions all tie implies no preference, like a tied pair.
        kept = [ex for ex in examples
                if not (len(set(ex["ranks"])) == 1 if "ranks" in ex else is_tie(rows[ex["row"]]))]
        if not kept:
            raise UserError(f"{source}: all {len(examples)} pairs are ties (a true 'tie' column, or score_chosen == "
                            "score_rejected); a Bradley-Terry reward model needs pairs with a winner; accepted: "
                            "data where chosen is preferred to rejected")
        if len(kept) < len(examples):
            warnings.warn(f"reward: dropped {len(examples) - len(kept)} of {len(examples)} pairs that are ties",
                          stacklevel=2)
        return kept

    def units(self, batch) -> int:
        return batch["row"].shape[0]

    def loss(self, batch, scorer):
        if "completions_input_ids" in batch:
            return self.ranked_loss(batch, scorer)
        c = self.cfg.center_rewards_coefficient or 0.0
        r_c = scorer.scores(batch, "chosen")
        r_r = scorer.scores(batch, "rejected")
        m = batch["margin"].to(r_c) if "margin" in batch else 0.0

        L = -F.logsigmoid(r_c - r_r - m)
        if c:
            L = L + c * (r_c + r_r) ** 2

        metrics = {
            "accuracy": (r_c > r_r).float().sum(),
            "margin": (r_c - r_r).detach().sum(),
            "rewards/chosen": r_c.detach().sum(),
            "rewards/rejected": r_r.detach().sum(),
        }
        return L.sum(), metrics

    def ranked_loss(self, batch, scorer):
        c = self.cfg.center_rewards_coefficient or 0.0
        r_all = scorer.scores(batch, "completions")
        L_sum = r_all.new_zeros(())
        acc = margin = best = worst = 0.0
        for g in range(batch["row"].shape[0]):
            sel = batch["group"] == g
            r, rho = r_all[sel], batch["rank"][sel].to(r_all.device)
            P = rho[:, None] < rho[None, :]  # P[w, l]: w ranked above l
            n_pairs = P.sum()
            diff = r[:, None] - r[None, :]
            if self.cfg.loss == "plackett_luce":
                L_x = -sum(r[rho == lvl].sum() - (rho == lvl).sum() * torch.logsumexp(r[rho >= lvl], 0)
                           for lvl in torch.unique(rho))
            else:
                L_x = -F.logsigmoid(diff[P]).sum() / n_pairs
            if c:
                L_x = L_x + c * ((r[:, None] + r[None, :]) ** 2)[P].sum() / n_pairs
            L_sum = L_sum + L_x
            d = diff.detach()[P]
            acc += float((d > 0).float().mean())
            margin += float(d.mean())
            best += float(r.detach()[rho == rho.min()].mean())
            worst += float(r.detach()[rho == rho.max()].mean())
        metrics = {"accuracy": acc, "margin": margin, "rewards/chosen": best, "rewards/rejected": worst}
        return L_sum, metrics
