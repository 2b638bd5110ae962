r"""Reward-model ensembles against reward hacking (Coste et al. 2023, arXiv:2310.02743):
``reward=ensemble reward.paths=[DIR,…] reward.aggregate=mean|min|mean_minus_std``.

M reward models r_1..r_M (each a :class:`~prefopt.rollout.scoring.ModelReward`) score the same
completions. Each member is first standardised over a reference set S (``reward.ensemble_normalize``,
on by default):

    r̃_i(x, y) = (r_i(x, y) − μ_i) / σ_i,   μ_i = mean_{S} r_i,   σ_i = std_{S} r_i   (σ_i < 1e-6 → 1)

and the members are aggregated per completion:

    mean:            R = r̄               = (1/M) Σ_i r̃_i
    min:             R = min_i r̃_i                                   (worst-case optimisation, WCO)
    mean_minus_std:  R = r̄ − λ · s,  s = sqrt((1/M) Σ_i (r̃_i − r̄)²)  (uncertainty-weighted, UWO; λ = ensemble_lambda)

Why standardise: a Bradley–Terry reward model is identified only up to an additive constant (the
likelihood sees differences) and its scale depends on how long it trained, so without it ``min``
would pick the member with the lowest offset rather than the most pessimistic one, and s would
measure offsets rather than disagreement. Coste et al. normalise each member for the same reason.
S is the first batch the ensemble scores: the first rollout of an online run (samples of π_SFT
before any update; under ddp / fsdp2 the union of every process's first rollout) or best-of-n's
samples of π_SFT; μ, σ are then frozen, so a reward never
moves because the policy did, and they travel in the run's checkpoints (``state_dict``), so a
resumed run scores exactly as the uninterrupted one.

Which std: the population std (divide by M), as Coste et al.'s intra-ensemble variance is
(1/M) Σ (r_i − r̄)². The M members *are* the ensemble whose disagreement is penalised, not a sample
from which a wider population's spread is estimated; it is also defined at M = 1 (s = 0), where
every aggregate is the member itself.

One member: ``mean`` over one path is accepted (it is the single reward model, standardised exactly
as an ensemble's members are: the fair single-RM baseline); ``min`` and ``mean_minus_std`` over one
member are refused, because they would silently be that same single model while claiming to be
conservative.

The rewards are scored under ``no_grad``: nothing here is differentiated.
"""

from __future__ import annotations

import math
import os
from typing import Optional

import torch

from prefopt.core.errors import UserError
from prefopt.rollout.scoring import Scorer

AGGREGATES = ("mean", "min", "mean_minus_std")
_EPS = 1e-6


def aggregate(r: torch.Tensor, how: str, lam: float = 1.0) -> torch.Tensor:
    """R [B] from member rewards r [M, B] by the equations above (in r's dtype)."""
    if how not in AGGREGATES:
        raise UserError(f"reward.aggregate='{how}' is not known; accepted: {', '.join(AGGREGATES)}")
    r_bar = r.mean(0)
    if how == "mean":
        return r_bar
    if how == "min":
        return r.min(0).values
    s = ((r - r_bar) ** 2).mean(0).sqrt()
    return r_bar - lam * s


def population_std(r: torch.Tensor) -> torch.Tensor:
    """s [B] = sqrt((1/M) Σ_i (r_i − r̄)²) of member rewards r [M, B]."""
    return ((r - r.mean(0)) ** 2).mean(0).sqrt()


def _is_model_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "config.json"))


def _members_of(folder: str) -> list:
    """The member model directories under an ensemble's ``members/`` folder (N/model, in N's order)."""
    subs = []
    for name in os.listdir(folder):
        d = os.path.join(folder, name)
        for cand in (os.path.join(d, "model"), d):
            if os.path.isdir(d) and _is_model_dir(cand):
                # ASCII digits only: str.isdigit() is also true of '²', which int() refuses.
                subs.append((int(name) if name.isascii() and name.isdigit() else float("inf"), name, cand))
                break
    return [c for _, _, c in sorted(subs)]


def resolve_paths(paths) -> list:
    """Every member's model directory. An entry is a model directory (config.json), a folder of
    members (``OUT/members``: ``0/model``, ``1/model``, …) or the output directory of an
    ``algo=reward algo.ensemble_members=N`` run (its ``members/``)."""
    out = []
    for i, p in enumerate(paths):
        local = os.path.expanduser(str(p))
        if _is_model_dir(local):
            found = [local]
        elif os.path.isdir(local):
            folder = os.path.join(local, "members") if os.path.isdir(os.path.join(local, "members")) else local
            found = _members_of(folder)
        else:
            found = []
        if not found:
            raise UserError(f"reward.paths[{i}]: '{p}' is not a model directory (no config.json) nor a folder of members "
                            "(N/model); accepted: a sequence-classification checkpoint such as the model/ of an algo=reward "
                            "run, or the output directory (or members/) of an algo=reward algo.ensemble_members=N run")
        out += found
    seen = set()
    for p in out:
        key = os.path.realpath(p)
        if key in seen:
            raise UserError(f"reward.paths names the model '{p}' twice; accepted: distinct members (a repeated member "
                            "would weigh twice in the mean and shrink the std)")
        seen.add(key)
    return out


def check(cfg) -> list:
    """The ensemble's one-line checks, before any model loads; returns the member directories."""
    if cfg.aggregate not in AGGREGATES:
        raise UserError(f"reward.aggregate='{cfg.aggregate}' is not known; accepted: {', '.join(AGGREGATES)}")
    lam = cfg.ensemble_lambda
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam) or lam < 0:
        raise UserError(f"reward.ensemble_lambda={lam} must be >= 0 and finite (the weight of the members' std "
                        "subtracted from their mean; 0 is the plain mean)")
    if not cfg.paths:
        raise UserError("reward=ensemble needs reward.paths=[DIR,...]: reward-model directories, or the members/ folder "
                        "of an algo=reward algo.ensemble_members=N run")
    paths = resolve_paths(cfg.paths)
    if len(paths) == 1 and cfg.aggregate != "mean":
        raise UserError(f"reward.aggregate={cfg.aggregate} over one member ({paths[0]}) is that single model, not a "
                        "conservative ensemble; accepted: two or more reward.paths, or reward.aggregate=mean "
                        "(the single reward model, standardised like an ensemble member)")
    return paths


class EnsembleReward(Scorer):
    """A reward source over M member sources (each ``fn(prompts, completions, **kw) -> Tensor[B]``)."""

    uses_model = True

    def __init__(self, members: list, how: str = "mean", lam: float = 1.0, normalize: bool = True,
                 name: str = "ensemble", all_sum=None):
        self.members, self.how, self.lam, self.normalize = members, how, float(lam), normalize
        # Several processes score their own first batches: S is their union (sums over the processes),
        # so every process standardises alike.
        self.all_sum = all_sum
        self.name = name
        self.mu: Optional[torch.Tensor] = None  # [M] frozen at the first call (see the module docstring)
        self.sigma: Optional[torch.Tensor] = None
        self.last_parts = {}  # per-member and std metrics of the last call (reward/…)
        agg = {"mean": "mean", "min": "min", "mean_minus_std": f"mean − {self.lam:g}·std"}[how]
        self._label = f"{agg} of {len(members)} reward model(s)" + (", each standardised on the first batch" if normalize else "")

    @property
    def label(self) -> str:
        return self._label

    def __call__(self, prompts, completions, **kw) -> torch.Tensor:
        r = torch.stack([m(prompts, completions, **kw).double() for m in self.members])  # [M, B]
        if self.normalize:
            if self.mu is None:
                self._freeze(r)
            r = (r - self.mu[:, None]) / self.sigma[:, None]
        out = aggregate(r, self.how, self.lam)
        self.last_parts = {f"reward/member_{i}": r[i].float() for i in range(r.shape[0])}
        self.last_parts["reward/ensemble_std"] = population_std(r).float()
        return out.float()

    def _freeze(self, r: torch.Tensor) -> None:
        """μ_i, σ_i over S from the sums n, Σ r_i, Σ (r_i − c_i)² (c_i: this batch's mean, a shift that keeps the
        second sum well conditioned; exact for any c_i)."""
        n, c = float(r.shape[1]), r.mean(1)
        s1, s2 = (r - c[:, None]).sum(1), ((r - c[:, None]) ** 2).sum(1)
        if self.all_sum is not None:
            c_tot = torch.tensor([self.all_sum(float(x) * n) for x in c], dtype=torch.float64)
            n_tot = self.all_sum(n)
            mu = c_tot / n_tot
            # Σ over processes of Σ (r − μ)² = Σ [s2 + 2 (c − μ) s1 + n (c − μ)²]
            d = c - mu
            s2 = torch.tensor([self.all_sum(float(x)) for x in s2 + 2 * d * s1 + n * d ** 2], dtype=torch.float64)
            n = n_tot
        else:
            mu = c + s1 / n
            s2 = s2 - s1 ** 2 / n
        sd = (s2.clamp(min=0.0) / n).sqrt()
        self.mu, self.sigma = mu, torch.where(sd < _EPS, torch.ones_like(sd), sd)

    def state_dict(self) -> dict:
        return {"mu": None if self.mu is None else self.mu.tolist(),
                "sigma": None if self.sigma is None else self.sigma.tolist()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("mu") is not None:
            self.mu = torch.tensor(state["mu"], dtype=torch.float64)
            self.sigma = torch.tensor(state["sigma"], dtype=torch.float64)
