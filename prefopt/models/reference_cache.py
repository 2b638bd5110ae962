"""Precomputed reference log-probs (``algo.precompute_ref=true``).

Offline methods compare the policy with π_ref on a fixed dataset, so π_ref's log-probs can be
computed once, before the first update, instead of at every step. The policy itself *is* π_ref
before any update, so no reference model is ever loaded: one no-grad pass through the same fused
log-prob path (``token_stats``), in eval mode. The per-token log-probs are attached to each
tokenized example (``{field}_ref_logps`` next to ``{field}_ids``) and collated into the batch as
``{side}_ref_logps`` [B, T], where ``Scorer.ref_logps`` reads them; nothing but those floats stays
in memory during training. It runs a model over tokenized data, so it lives with the models, above
the data layer.

Cache: one file per (model fingerprint, data fingerprint) under ``$PREFOPT_CACHE/reference_logps``
(default ~/.cache/prefopt). The model fingerprint covers what decides π_ref's numbers (weights
source and their files, dtype, 4-bit, attention implementation, random-init arch + seed); the data
fingerprint is a hash of every token id, so any change of data, tokenizer, template or truncation
gives a new entry. Entries are written atomically (:mod:`prefopt.core.files`) under a file lock, so
parallel jobs (Hydra's joblib launcher) compute an entry once and never read a half-written one. Entries
are read with ``torch.load(weights_only=True)`` (the cache directory may be shared: reading it must
never run code) and checked against the examples; one that is truncated, damaged or does not fit is
named in a warning and rebuilt.

Which sequences: every ``X_ids`` list of an example other than ``prompt_ids`` is scored as
prompt + X. Its batch side is None for ``completion`` (batch keys ``input_ids``...),
``kl`` for ``kl_completion`` (KTO's mismatched pairs: ``kl_input_ids``...), and X otherwise
(``chosen``, ``rejected``).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from typing import Optional

import torch
from filelock import FileLock

from prefopt.core import files
from prefopt.core.modules import dropout_disable, dropout_restore
from prefopt.data.tokenize import pad_batch
from prefopt.models.logprobs import token_stats

VERSION = 1


def cache_dir() -> str:
    return os.path.join(files.cache_root(), "reference_logps")


def sequence_fields(example: dict) -> list:
    return sorted(k[: -len("_ids")] for k, v in example.items()
                  if k.endswith("_ids") and k != "prompt_ids" and isinstance(v, (list, tuple)))


def side_of(field: str) -> Optional[str]:
    if field == "completion":
        return None
    if field.endswith("_completion"):
        return field[: -len("_completion")]
    return field


def _files_signature(path: str) -> list:
    """(name, size, mtime) of a local model directory's files; a hub id stands for itself."""
    p = os.path.expanduser(path)
    if not os.path.isdir(p):
        return [path]
    out = []
    for name in sorted(os.listdir(p)):
        if name.endswith((".safetensors", ".bin", ".json", ".model")):
            st = os.stat(os.path.join(p, name))
            out.append((name, st.st_size, int(st.st_mtime)))
    return [os.path.realpath(p), out]


def model_fingerprint(mcfg, path: Optional[str], seed: int) -> str:
    key = {
        "v": VERSION,
        "weights": _files_signature(path) if path and mcfg.arch is None else None,
        "arch": mcfg.arch,
        "seed": seed if mcfg.arch is not None else None,  # random init depends on the seed
        "dtype": mcfg.dtype,
        "4bit": [mcfg.load_in_4bit, mcfg.bnb_4bit_compute_dtype if mcfg.load_in_4bit else None],
        "attn": mcfg.attn_implementation,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def data_fingerprint(examples: list) -> str:
    h = hashlib.sha256()
    for ex in examples:
        for f in ["prompt"] + sequence_fields(ex):
            h.update(f.encode())
            h.update(torch.tensor(ex[f"{f}_ids"], dtype=torch.int64).numpy().tobytes())
        h.update(b"|")
    return h.hexdigest()[:16]


@torch.no_grad()
def compute(model, examples: list, batch_size: int, device, pad_token_id: int = 0, temperature: float = 1.0) -> dict:
    """{field: [fp32 tensor of len(X_ids)] per example}: log p_model(x_t | x_<t) of each
    completion token, in eval mode (π_ref is a fixed function of its input)."""
    flipped = dropout_disable(model)  # not eval(): it would break 4-bit (bitsandbytes) training later
    out = {}
    try:
        for f in sequence_fields(examples[0]):
            vals = []
            # Sorting by length keeps padding (and wasted work) low; results go back in order.
            order = sorted(range(len(examples)), key=lambda i: len(examples[i]["prompt_ids"]) + len(examples[i][f"{f}_ids"]))
            by_index = {}
            for j in range(0, len(order), batch_size):
                idx = order[j : j + batch_size]
                seqs = [(examples[i]["prompt_ids"], examples[i][f"{f}_ids"]) for i in idx]
                pb = pad_batch([p for p, _ in seqs], [c for _, c in seqs], pad_token_id)
                ids, am, lm = pb["input_ids"], pb["attention_mask"], pb["loss_mask"]
                st = token_stats(model, ids.to(device), am.to(device), lm.to(device), temperature=temperature)
                lp = st.logps.float().cpu()
                for b, (i, (p, c)) in enumerate(zip(idx, seqs)):
                    by_index[i] = lp[b, len(p) : len(p) + len(c)].clone()
            vals = [by_index[i] for i in range(len(examples))]
            out[f] = vals
    finally:
        dropout_restore(flipped)
    return out


def _save(path: str, values: dict):
    flat = {f: (torch.cat(v) if v else torch.zeros(0), torch.tensor([len(x) for x in v], dtype=torch.long))
            for f, v in values.items()}
    with files.atomic_open(path, "wb") as f:
        torch.save(flat, f)


class CacheCorrupt(Exception):
    pass


def _load(path: str, examples: list) -> dict:
    """The cached values, checked against the examples they must fit. Raises CacheCorrupt for a file
    that is truncated, damaged, not a cache entry, or holds anything but tensors (weights_only: the
    cache directory may be shared, so loading it must never run code)."""
    try:
        flat = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 — whatever torch.load raises, the file is unusable
        raise CacheCorrupt(f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}") from None
    want = sequence_fields(examples[0])
    if not isinstance(flat, dict) or sorted(flat) != want:
        raise CacheCorrupt(f"holds fields {sorted(flat) if isinstance(flat, dict) else type(flat).__name__}, "
                           f"expected {want}")
    out = {}
    for f, entry in flat.items():
        if not (isinstance(entry, (tuple, list)) and len(entry) == 2 and all(isinstance(t, torch.Tensor) for t in entry)):
            raise CacheCorrupt(f"field {f} is not a (values, lengths) pair of tensors")
        vals, lens = entry
        want_lens = [len(ex[f"{f}_ids"]) for ex in examples]
        if lens.tolist() != want_lens or vals.numel() != sum(want_lens) or vals.dtype != torch.float32:
            raise CacheCorrupt(f"field {f} does not fit the {len(examples)} examples")
        if not torch.isfinite(vals).all():
            raise CacheCorrupt(f"field {f} holds non-finite log-probs")
        out[f] = list(torch.split(vals, want_lens))
    return out


def attach(model, examples: list, *, model_key: str, batch_size: int, device, pad_token_id: int = 0,
           temperature: float = 1.0, console=None) -> list:
    """Examples with ``{field}_ref_logps`` attached, read from the cache or computed (once) and cached.
    A cache entry that cannot be read or does not fit the examples is reported and rebuilt."""
    if not examples:
        return examples
    os.makedirs(cache_dir(), exist_ok=True)
    key = f"{model_key}-{data_fingerprint(examples)}-t{temperature:g}"
    path = os.path.join(cache_dir(), f"{key}.pt")
    with FileLock(path + ".lock"):
        values = None
        if os.path.exists(path):
            try:
                values = _load(path, examples)
                if console is not None:
                    console.print(f"  reference log-probs: cached ({path})")
            except CacheCorrupt as e:
                print(f"prefopt: warning: reference log-prob cache {path} is unusable ({e}); rebuilding it",
                      file=sys.stderr, flush=True)
                os.remove(path)
        if values is None:
            if console is not None:
                console.print(f"  reference log-probs: one pass over {len(examples)} examples with the initial policy → {path}")
            values = compute(model, examples, batch_size, device, pad_token_id, temperature)
            _save(path, values)
    out = []
    for i, ex in enumerate(examples):
        ex = dict(ex)
        for f, v in values.items():
            ex[f"{f}_ref_logps"] = v[i]
        out.append(ex)
    return out


def add_to_batch(batch: dict, examples: list) -> dict:
    """Collate the examples' ``{field}_ref_logps`` into ``{side}_ref_logps`` [B, T] fp32, aligned
    with the batch's ``{side}_loss_mask`` (completion token t at position len(prompt) + t)."""
    for f in sequence_fields(examples[0]):
        if f"{f}_ref_logps" not in examples[0]:
            continue
        side = side_of(f)
        p = f"{side}_" if side else ""
        T = batch[f"{p}input_ids"].shape[1]
        ref = torch.zeros(len(examples), T, dtype=torch.float32)
        for b, ex in enumerate(examples):
            start = len(ex["prompt_ids"])
            v = ex[f"{f}_ref_logps"]
            ref[b, start : start + len(v)] = v
        batch[f"{p}ref_logps"] = ref
    return batch
