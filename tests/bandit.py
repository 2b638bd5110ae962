"""A tabular "language model" on which every objective's fixed point can be computed by hand.

Prompts x ∈ {0..X−1}; a completion is one token y ∈ {0..V−1}; the policy is a float64 table of logits
θ[x, y], π(y|x) = softmax(θ[x])_y. A batch row is the sequence (x, y): ``input_ids`` [B, 2] with the
completion token at position 1, the only loss position.

:class:`TabularScorer` serves an objective's own ``loss`` the per-token log-probs (and a reward
model's scalar scores, a critic's values) of a batch's rows, computed from the tables. Every row can
carry a probability weight (``weight``, or ``chosen_weight`` / ``rejected_weight``): the row's value is
unchanged and its gradient is scaled by the weight (w·x + (1 − w)·sg[x]), so one call of the loss on
the whole enumerated population (every pair, every group of samples) returns the exact expected
gradient: training is deterministic and converges in seconds, with no sampling noise.
"""

from __future__ import annotations

import itertools

import torch

from prefopt.models.logprobs import TokenStats

F64 = torch.float64


def sequences(x, y) -> dict:
    """``input_ids`` [B, 2] = (prompt token, completion token) and its masks: position 1 is the loss token."""
    x, y = torch.as_tensor(x, dtype=torch.long), torch.as_tensor(y, dtype=torch.long)
    ids = torch.stack([x, y], 1)
    loss_mask = torch.zeros_like(ids, dtype=torch.bool)
    loss_mask[:, 1] = True
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "loss_mask": loss_mask}


def _key(side, name):
    return name if side is None else f"{side}_{name}"


def weighted(t: torch.Tensor, w) -> torch.Tensor:
    """Same value as ``t``; gradient of row b scaled by w[b]."""
    if w is None:
        return t
    w = torch.as_tensor(w, dtype=t.dtype).reshape(-1, *([1] * (t.dim() - 1)))
    return t.detach() + w * (t - t.detach())


class TabularScorer:
    """The scorer an objective's ``loss`` reads (see :class:`prefopt.objectives.registry.Objective`),
    backed by tables: policy logits [X, V], reference logits [X, V], a reward model's scores [X, V],
    a critic's values [X]."""

    def __init__(self, logits=None, ref_logits=None, scores=None, values=None):
        self.logits, self.ref_logits, self.score_table, self.value_table = logits, ref_logits, scores, values

    @staticmethod
    def _stats(table_logps, batch, side, weights=True):
        ids, mask = batch[_key(side, "input_ids")], batch[_key(side, "loss_mask")].bool()
        lp = table_logps[ids[:, 0], ids[:, 1]]
        if weights:
            lp = weighted(lp, batch.get(_key(side, "weight")))
        return torch.stack([torch.zeros_like(lp), lp], 1) * mask, mask

    def logps(self, batch, side=None, *, entropy=False):
        table = torch.log_softmax(self.logits, -1)
        logps, mask = self._stats(table, batch, side)
        H = None
        if entropy:
            per_prompt = -(table.exp() * table).sum(-1)
            h = weighted(per_prompt[batch[_key(side, "input_ids")][:, 0]], batch.get(_key(side, "weight")))
            H = torch.stack([torch.zeros_like(h), h], 1) * mask
        return TokenStats(logps=logps, mask=mask, entropy=H)

    def ref_logps(self, batch, side=None):
        logps, mask = self._stats(torch.log_softmax(self.ref_logits, -1).detach(), batch, side, weights=False)
        return TokenStats(logps=logps, mask=mask)

    def pair_logps(self, batch, sides=("chosen", "rejected")):
        return tuple(self.logps(batch, s) for s in sides)

    def pair_ref_logps(self, batch, sides=("chosen", "rejected")):
        return tuple(self.ref_logps(batch, s) for s in sides)

    def scores(self, batch, side=None):
        ids = batch[_key(side, "input_ids")]
        return weighted(self.score_table[ids[:, 0], ids[:, 1]], batch.get(_key(side, "weight")))

    def values(self, batch):
        ids, mask = batch["input_ids"], batch["loss_mask"].bool()
        v = weighted(self.value_table[ids[:, 0]], batch.get("weight"))
        return v[:, None] * mask


# ---- populations: every row of the expected loss, with its probability ---------------------


def pair_population(mu, pref) -> dict:
    """Every ordered pair (x, y_w ≻ y_l), y_w ≠ y_l, as a paired batch: y_w, y_l drawn from mu[x]
    (the data's sampling policy, [X, V]), labelled y_w ≻ y_l with probability pref[x, y_w, y_l];
    prompts uniform. Weight: (1/X) · mu(y_w) · mu(y_l) · pref(y_w ≻ y_l)."""
    X, V = mu.shape
    rows = [(x, a, b) for x in range(X) for a in range(V) for b in range(V) if a != b]
    x, a, b = (torch.tensor(c) for c in zip(*rows))
    w = mu[x, a] * mu[x, b] * pref[x, a, b] / X
    batch = {}
    for side, y in (("chosen", a), ("rejected", b)):
        for k, v in sequences(x, y).items():
            batch[f"{side}_{k}"] = v
        batch[f"{side}_weight"] = w
    batch["row"] = torch.arange(len(rows))
    return batch


def group_rollout(probs, group_size: int, scores) -> tuple:
    """Every ordered group of ``group_size`` samples of each prompt from probs [X, V] (the rollout of
    the current policy, enumerated): (roll rows with per-row ``scores`` from the table [X, V], the
    probability of the group each row belongs to, the prompt of each row). Prompts uniform."""
    X, V = probs.shape
    xs, ys, w = [], [], []
    for x in range(X):
        for group in itertools.product(range(V), repeat=group_size):
            p = float(torch.prod(probs[x, list(group)])) / X
            xs += [x] * group_size
            ys += list(group)
            w += [p] * group_size
    roll = sequences(xs, ys)
    x, y = roll["input_ids"][:, 0], roll["input_ids"][:, 1]
    roll.update(scores=scores[x, y].clone(), group_size=group_size, group=torch.arange(len(xs)) // group_size)
    return roll, torch.tensor(w, dtype=F64)


def descend(params, loss_fn, lr: float, max_steps: int, tol: float = 1e-10, decay: float = 1.0) -> int:
    """Full-batch gradient descent on ``params`` until every gradient entry is below ``tol``;
    ``loss_fn(step)`` returns a loss whose gradient is the update's (exact) expected gradient; the
    step size is lr · decay^step. Returns the number of steps taken."""
    for step in range(max_steps):
        for p in params:
            p.grad = None
        loss_fn(step).backward()
        if max(float(p.grad.abs().max()) for p in params) < tol:
            return step
        with torch.no_grad():
            for p in params:
                p -= lr * decay**step * p.grad
    return max_steps
