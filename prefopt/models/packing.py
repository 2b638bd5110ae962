"""Padding-free packing of sequences, with an optional shared prefix ("trunk") per item.

An *item* is a trunk of tokens followed by zero or more *branches*; a branch sees the trunk and its
own earlier tokens, never another branch. A DPO pair is one item: the prompt is the trunk, the
chosen and the rejected completions are two branches, so the prompt's keys and values are computed
once for both. A plain sequence is an item with no branch.

Items are packed first-fit into rows of at most ``row_tokens`` tokens (longer items get a row of
their own). Each token carries its position in its own sequence (``position_ids``: a branch
continues from the end of the trunk) and attends through a block mask [rows, 1, L, L] (True =
attend), so the decoder computes exactly what it would on each sequence alone: no FLOPs on padding
beyond each row's tail, and none on a repeated prompt. transformers passes a 4D mask through to
SDPA unchanged.

A *view* is one original sequence, trunk + one branch (or the trunk alone): ``flat_index(view, j)``
says where the hidden state of its position j lies in the flattened [rows · L] output.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Packed:
    input_ids: torch.Tensor  # [R, L]
    position_ids: torch.Tensor  # [R, L]
    attention_mask: torch.Tensor  # [R, 1, L, L] bool
    trunk_base: torch.Tensor  # [V] flat index of each view's position 0
    branch_base: torch.Tensor  # [V] flat index of each view's first token after the trunk
    trunk_len: torch.Tensor  # [V]
    real_tokens: int

    def flat_index(self, view: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        """Flat [R·L] index of position ``j`` of sequence ``view`` (tensors of equal shape)."""
        P = self.trunk_len[view]
        return torch.where(j < P, self.trunk_base[view] + j, self.branch_base[view] + (j - P))


def _first_fit(sizes: list, cap: int) -> list:
    rows: list = []  # [used tokens, [item indices]]
    for i in sorted(range(len(sizes)), key=lambda i: -sizes[i]):  # first-fit decreasing
        for r in rows:
            if r[0] + sizes[i] <= cap:
                r[0] += sizes[i]
                r[1].append(i)
                break
        else:
            rows.append([sizes[i], [i]])
    return rows


def attention_cost_per_token(config) -> float:
    """Attention FLOPs per token per unit of row length, relative to the linear layers' per token
    (4·H·L against 2·(4·H² + 3·H·I)); 0 when the config does not say."""
    H, I = getattr(config, "hidden_size", None), getattr(config, "intermediate_size", None)
    if not H or not I:
        return 0.0
    return 4 * H / (2 * (4 * H * H + 3 * H * I))


def pack(items: list, pad_token_id: int, row_tokens: int = 256, device=None, attn_cost_per_token: float = 0.0) -> Packed:
    """``items``: list of (trunk LongTensor, [branch LongTensor, ...]). With ``attn_cost_per_token``
    (:func:`attention_cost_per_token`) the row capacity (≤ ``row_tokens``, ≥ the longest item) is
    chosen to minimize padding plus attention; without, rows hold up to ``row_tokens``. Views are
    numbered item by item: an item with k ≥ 1 branches has k views (trunk + branch i), one with none has one view
    (the trunk alone)."""
    sizes = [int(t.numel()) + sum(int(b.numel()) for b in br) for t, br in items]
    if attn_cost_per_token > 0:
        # Choose the row capacity: padding wastes R·L token slots, a longer row costs attention
        # ∝ L per token; minimize R·L·(1 + attn_cost_per_token·L) over capacities up to row_tokens.
        big = max(sizes)
        caps = sorted({big, *range(big, max(big, row_tokens) + 1, 8)})
        rows = min((_first_fit(sizes, c) for c in caps),
                   key=lambda rs: len(rs) * max(r[0] for r in rs) * (1 + attn_cost_per_token * max(r[0] for r in rs)))
    else:
        rows = _first_fit(sizes, max([row_tokens] + sizes))
    L = max(r[0] for r in rows)
    R = len(rows)
    ids = torch.full((R, L), pad_token_id, dtype=torch.long)
    pos = torch.zeros((R, L), dtype=torch.long)
    owner = torch.full((R, L), -1, dtype=torch.long)  # item id; -1 padding
    branch = torch.full((R, L), -1, dtype=torch.long)  # 0 trunk, k >= 1 branch k; -1 padding
    n_views = sum(max(1, len(br)) for _, br in items)
    view0 = []  # first view id of each item
    v = 0
    for _, br in items:
        view0.append(v)
        v += max(1, len(br))
    tb = torch.zeros(n_views, dtype=torch.long)
    bb = torch.zeros(n_views, dtype=torch.long)
    tl = torch.zeros(n_views, dtype=torch.long)
    for r, (_, members) in enumerate(rows):
        o = 0
        for i in members:
            trunk, brs = items[i]
            P = trunk.numel()
            ids[r, o : o + P] = trunk
            pos[r, o : o + P] = torch.arange(P)
            owner[r, o : o + P] = i
            branch[r, o : o + P] = 0
            base = r * L + o
            if not brs:
                tb[view0[i]], bb[view0[i]], tl[view0[i]] = base, base + P, P
            o += P
            for k, b in enumerate(brs):
                n = b.numel()
                ids[r, o : o + n] = b
                pos[r, o : o + n] = torch.arange(P, P + n)
                owner[r, o : o + n] = i
                branch[r, o : o + n] = k + 1
                tb[view0[i] + k], bb[view0[i] + k], tl[view0[i] + k] = base, r * L + o, P
                o += n
    causal = torch.ones(L, L, dtype=torch.bool).tril()
    same_item = owner[:, :, None] == owner[:, None, :]
    visible = (branch[:, None, :] == 0) | (branch[:, :, None] == branch[:, None, :])
    mask = (same_item & visible & causal)[:, None]  # padding attends to padding (no empty rows: no NaN)
    dev = device or torch.device("cpu")
    return Packed(ids.to(dev), pos.to(dev), mask.to(dev), tb.to(dev), bb.to(dev), tl.to(dev), sum(sizes))


def right_padded_lengths(attention_mask: torch.Tensor):
    """Lengths of right-padded rows, or None when some row is not right padded (ones then zeros)."""
    am = attention_mask.bool()
    n = am.sum(-1)
    ok = torch.equal(am, torch.arange(am.shape[1], device=am.device)[None, :] < n[:, None])
    return n if ok else None


def shared_prompt_lengths(ids_a, am_a, lm_a, ids_b, am_b, lm_b):
    """Per row, the length P ≥ 1 of the prompt that sequences a and b share (the tokens before the
    first loss token, identical on both sides), or None when some row has none: then a shared
    forward does not apply."""
    na, nb = right_padded_lengths(am_a), right_padded_lengths(am_b)
    if na is None or nb is None:
        return None
    T = lm_a.shape[1]
    ar = torch.arange(T, device=lm_a.device)
    first = lambda lm, n: torch.where(lm.bool() & (ar[None] < n[:, None]), ar[None], T).min(-1).values  # noqa: E731
    pa, pb = first(lm_a, na), first(lm_b, nb)
    if not torch.equal(pa, pb) or bool((pa < 1).any()) or bool((pa >= na).any()) or bool((pb >= nb).any()):
        return None
    Tb = min(ids_a.shape[1], ids_b.shape[1])
    before = ar[None, :Tb] < pa[:, None]
    if not bool(((ids_a[:, :Tb] == ids_b[:, :Tb]) | ~before).all()):
        return None
    return pa
