"""A tabular "language model" on which every objective's fixed point can be computed by hand.

Prompts x ∈ {0..X−1}; a completion is one token y ∈ {0..V−1}, or two tokens (a, b). The policy is a
float64 table of logits: θ[x, y] for one token, π(y|x) = softmax(θ[x])_y, or the pair of tables
(θ_1[x, a], θ_2[x, a, b]) for two, π(a b|x) = softmax(θ_1[x])_a · softmax(θ_2[x, a])_b (any distribution
over the V² completions). A batch row is the sequence (x, y…): ``input_ids`` [B, 1 + L] with the
completion tokens at positions 1..L, the loss positions. A completion is named by its index c into a
``completions`` table [C, L] of its tokens (one token: c is the token).

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
    """``input_ids`` [B, 1 + L] = (prompt token, completion tokens) and its masks: positions 1..L are
    the loss tokens. ``y``: [B] (one token) or [B, L]."""
    x, y = torch.as_tensor(x, dtype=torch.long), torch.as_tensor(y, dtype=torch.long)
    ids = torch.cat([x[:, None], y.reshape(len(x), -1)], 1)
    loss_mask = torch.ones_like(ids, dtype=torch.bool)
    loss_mask[:, 0] = False
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "loss_mask": loss_mask}


def one_token(V: int) -> torch.Tensor:
    return torch.arange(V)[:, None]


def two_tokens(V: int) -> torch.Tensor:
    """Completion c = (c // V, c % V)."""
    return torch.tensor(list(itertools.product(range(V), repeat=2)))


def token_logps(tables, ids) -> torch.Tensor:
    """[B, 1 + L] log-probs of each completion token given its prefix (0 at the prompt)."""
    x = ids[:, 0]
    if isinstance(tables, torch.Tensor):
        out = [torch.log_softmax(tables, -1)[x, ids[:, 1]]]
    else:
        first, second = tables
        out = [torch.log_softmax(first, -1)[x, ids[:, 1]], torch.log_softmax(second, -1)[x, ids[:, 1], ids[:, 2]]]
    return torch.stack([torch.zeros_like(out[0]), *out], 1)


def completion_probs(tables, completions) -> torch.Tensor:
    """π(c|x) of every completion, [X, C] (no gradient)."""
    with torch.no_grad():
        X = (tables if isinstance(tables, torch.Tensor) else tables[0]).shape[0]
        C = completions.shape[0]
        x = torch.arange(X).repeat_interleave(C)
        ids = sequences(x, completions.repeat(X, 1))["input_ids"]
        return token_logps(tables, ids).sum(-1).exp().view(X, C)


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
    backed by tables: policy and reference logits (see the module docstring), a reward model's
    scores [X, C], a critic's values (one token: V[x]; two tokens: (V_1[x], V_2[x, a]), the value of
    the state before each completion token)."""

    def __init__(self, logits=None, ref_logits=None, scores=None, values=None):
        self.logits, self.ref_logits, self.score_table, self.value_table = logits, ref_logits, scores, values

    def logps(self, batch, side=None, *, entropy=False):
        ids, mask = batch[_key(side, "input_ids")], batch[_key(side, "loss_mask")].bool()
        logps = weighted(token_logps(self.logits, ids), batch.get(_key(side, "weight"))) * mask
        H = None
        if entropy:
            if not isinstance(self.logits, torch.Tensor):
                raise NotImplementedError("entropy of two-token completions")
            table = torch.log_softmax(self.logits, -1)
            per_prompt = -(table.exp() * table).sum(-1)
            h = weighted(per_prompt[ids[:, 0]], batch.get(_key(side, "weight")))
            H = torch.stack([torch.zeros_like(h), h], 1) * mask
        return TokenStats(logps=logps, mask=mask, entropy=H)

    def ref_logps(self, batch, side=None):
        ids, mask = batch[_key(side, "input_ids")], batch[_key(side, "loss_mask")].bool()
        ref = self.ref_logits.detach() if isinstance(self.ref_logits, torch.Tensor) else [t.detach() for t in self.ref_logits]
        return TokenStats(logps=token_logps(ref, ids) * mask, mask=mask)

    def pair_logps(self, batch, sides=("chosen", "rejected")):
        return tuple(self.logps(batch, s) for s in sides)

    def pair_ref_logps(self, batch, sides=("chosen", "rejected")):
        return tuple(self.ref_logps(batch, s) for s in sides)

    def scores(self, batch, side=None):
        ids = batch[_key(side, "input_ids")]
        return weighted(self.score_table[ids[:, 0], ids[:, 1]], batch.get(_key(side, "weight")))

    def values(self, batch):
        ids, mask = batch["input_ids"], batch["loss_mask"].bool()
        if isinstance(self.value_table, torch.Tensor):
            v = [self.value_table[ids[:, 0]]]
        else:
            v = [self.value_table[0][ids[:, 0]], self.value_table[1][ids[:, 0], ids[:, 1]]]
        v = torch.stack([torch.zeros_like(v[0]), *v], 1)
        return weighted(v, batch.get("weight")) * mask


# ---- populations: every row of the expected loss, with its probability ---------------------


def pair_population(mu, pref, completions=None) -> dict:
    """Every ordered pair (x, y_w ≻ y_l), y_w ≠ y_l, as a paired batch: y_w, y_l drawn from mu[x]
    (the data's sampling policy over completions, [X, C]), labelled y_w ≻ y_l with probability
    pref[x, y_w, y_l]; prompts uniform. Weight: (1/X) · mu(y_w) · mu(y_l) · pref(y_w ≻ y_l)."""
    X, C = mu.shape
    completions = one_token(C) if completions is None else completions
    rows = [(x, a, b) for x in range(X) for a in range(C) for b in range(C) if a != b]
    x, a, b = (torch.tensor(c) for c in zip(*rows))
    w = mu[x, a] * mu[x, b] * pref[x, a, b] / X
    batch = {}
    for side, y in (("chosen", a), ("rejected", b)):
        for k, v in sequences(x, completions[y]).items():
            batch[f"{side}_{k}"] = v
        batch[f"{side}_weight"] = w
    batch["row"] = torch.arange(len(rows))
    return batch


def group_rollout(probs, group_size: int, scores, completions=None) -> tuple:
    """Every ordered group of ``group_size`` samples of each prompt from probs [X, C] (the rollout of
    the current policy, enumerated): (roll rows with per-row ``scores`` from the table [X, C], the
    probability of the group each row belongs to). Prompts uniform."""
    X, C = probs.shape
    completions = one_token(C) if completions is None else completions
    xs, cs, w = [], [], []
    for x in range(X):
        for group in itertools.product(range(C), repeat=group_size):
            p = float(torch.prod(probs[x, list(group)])) / X
            xs += [x] * group_size
            cs += list(group)
            w += [p] * group_size
    x, c = torch.tensor(xs), torch.tensor(cs)
    roll = sequences(x, completions[c])
    roll.update(scores=scores[x, c].clone(), group_size=group_size, group=torch.arange(len(xs)) // group_size)
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
