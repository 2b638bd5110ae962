"""Where a benchmark step's time goes: per-phase wall time and the work each phase did, measured
from outside the trainer by wrapping the objects a bench worker hands it.

Phases (the roofline's rows, :mod:`prefopt.bench.roofline`):

- ``generation``: the rollout's sampling, prefill and decode. Its time is the pipeline's own timer
  (the trainer row's ``rollout/gen_time_s``, the sampler's ``sync_weights`` included); its work is
  read from the wrapped sampler's ``sample(model, prompts, cfg)`` → ``Samples``: the prompts'
  lengths, samples per prompt and every completion's length.
- ``logprob``: log-prob passes without gradient: the scorer's reference passes, and a rollout
  reference's ``token_stats``. (A rollout that recomputes π_old calls the policy directly; that pass
  is not wrapped and lands in ``other``: the bench's GRPO takes π_old from the sampler.)
- ``loss_forward``: ``objective.loss`` minus the log-prob passes nested inside it (DPO's reference
  pass runs inside its loss).
- ``loss_backward``: every ``Tensor.backward`` call (the trainer's one per micro-batch).
- ``optimizer``: ``optimizer.step``.
- ``other`` (computed by the reader): step time − Σ phases (batch building, reward, grad norm and
  clipping, zero_grad, the scheduler, logging).

Times are exclusive: a phase entered inside another is subtracted from the outer one, so the phases
add up to at most the step. Work is recorded at the outermost counted call only (a scorer that
falls back from a paired pass to two single passes is counted once, as the paired pass it was asked
for), as *items* ``[trunk_tokens, [branch_tokens, ...]]`` (:mod:`prefopt.models.packing`'s items: a
DPO pair is its prompt plus two completions, a plain sequence is a trunk with no branch) and
``scored``, the positions whose log-prob was taken (the output head runs there only).
"""

from __future__ import annotations

import functools
import time

PHASES = ("generation", "logprob", "loss_forward", "loss_backward", "optimizer")


def _sequence_items(input_ids, attention_mask, loss_mask) -> tuple:
    """(items, scored) of a right- or left-padded batch: each row one trunk of its real tokens."""
    lengths = attention_mask.sum(-1).tolist()
    scored = int((loss_mask[:, 1:].bool() & attention_mask[:, 1:].bool()).sum())
    return [[int(n), []] for n in lengths], scored


def _pair_items(batch, sides=("chosen", "rejected")) -> tuple:
    """(items, scored) of a paired batch: per row the shared prompt once, both completions as branches.
    The prompt length is where the two sides' tokens first differ, capped by their loss masks."""
    import torch

    (ia, aa, la), (ib, ab, lb) = ([batch[f"{s}_{k}"] for k in ("input_ids", "attention_mask", "loss_mask")]
                                  for s in sides)
    items, scored = [], 0
    for r in range(ia.shape[0]):
        na, nb = int(aa[r].sum()), int(ab[r].sum())
        # the first completion position of each side bounds the shared prompt
        first = [int(torch.nonzero(lm[r]).min()) if bool(lm[r].any()) else n for lm, n in ((la, na), (lb, nb))]
        same = (ia[r, : min(na, nb)] == ib[r, : min(na, nb)]).long()
        common = int(same.cumprod(0).sum())
        P = min(common, *first)
        items.append([P, [na - P, nb - P]])
    for ids, am, lm in ((ia, aa, la), (ib, ab, lb)):
        scored += int((lm[:, 1:].bool() & am[:, 1:].bool()).sum())
    return items, scored


class PhaseClock:
    """Exclusive wall time per phase and the work of the counted calls, per benchmark step.

    ``begin_step()`` starts a step's tallies; ``end_step()`` closes them into ``steps``."""

    def __init__(self):
        self.steps: list = []
        self._stack: list = []  # [phase, start, time spent in nested phases]
        self._counting = False
        self.autocast_dtype = None  # set by the instrumented objective when its loss runs under autocast
        self._undo: list = []
        self._begin()

    def _begin(self):
        self._s = {p: 0.0 for p in PHASES}
        self._work: dict = {}

    def begin_step(self):
        self._begin()

    def end_step(self, generation_s: float = None) -> dict:
        """Closes the step; ``generation_s`` (the pipeline's own generation timer) replaces the
        wrapper's when given."""
        if generation_s is not None:
            self._s["generation"] = float(generation_s)
        step = {"s": dict(self._s), "work": self._work}
        self.steps.append(step)
        self._begin()
        return step

    # ---- timing --------------------------------------------------------------------------------
    def timed(self, phase: str, fn):
        """``fn`` whose wall time, minus the phases entered inside it, is added to ``phase``."""
        def wrapper(*a, **kw):
            self._stack.append([phase, time.perf_counter(), 0.0])
            try:
                return fn(*a, **kw)
            finally:
                ph, t0, inner = self._stack.pop()
                dt = time.perf_counter() - t0
                self._s[ph] += dt - inner
                if self._stack:
                    self._stack[-1][2] += dt

        # keeps the wrapped callable's attributes (an LR scheduler marks optimizer.step and checks the mark)
        return functools.update_wrapper(wrapper, fn)

    # ---- work ----------------------------------------------------------------------------------
    def _add(self, phase: str, items: list, scored: int):
        w = self._work.setdefault(phase, {"items": [], "scored": 0, "calls": 0})
        w["items"] += items
        w["scored"] += scored
        w["calls"] += 1

    def counted(self, fn, work, phase: str = None):
        """``fn`` whose call records ``work(args, kwargs) -> (items, scored)`` under ``phase`` (default:
        ``loss_forward`` when autograd records, else ``logprob``), unless it runs inside another counted call."""
        def wrapper(*a, **kw):
            if self._counting:
                return fn(*a, **kw)
            import torch

            self._counting = True
            try:
                out = fn(*a, **kw)
                ph = phase or ("loss_forward" if torch.is_grad_enabled() else "logprob")
                items, scored = work(a, kw)
                if items:
                    self._add(ph, items, scored)
                return out
            finally:
                self._counting = False

        return functools.update_wrapper(wrapper, fn)

    def record_generation(self, prompt_lengths: list, samples_per_prompt: int, completion_lengths: list):
        g = self._work.setdefault("generation", {"calls": []})
        g["calls"].append({"prompts": [int(n) for n in prompt_lengths], "samples_per_prompt": int(samples_per_prompt),
                           "completions": [int(n) for n in completion_lengths]})

    # ---- what a bench worker wraps -------------------------------------------------------------
    def instrument_scorer(self, scorer):
        """Policy and reference passes of a :class:`prefopt.models.logprobs.Scorer` (as instance attributes)."""
        def side(ref):
            def work(a, kw):
                batch, s = a[0], (a[1] if len(a) > 1 else kw.get("side"))
                p = f"{s}_" if s else ""
                if ref and f"{p}ref_logps" in batch:
                    return [], 0  # precomputed reference log-probs: no pass
                return _sequence_items(batch[f"{p}input_ids"], batch[f"{p}attention_mask"], batch[f"{p}loss_mask"])

            return work

        def pair(ref):
            def work(a, kw):
                batch = a[0]
                sides = a[1] if len(a) > 1 else kw.get("sides", ("chosen", "rejected"))
                if ref and all(f"{s}_ref_logps" in batch for s in sides):
                    return [], 0
                return _pair_items(batch, sides)

            return work

        scorer.logps = self.counted(scorer.logps, side(False))
        scorer.pair_logps = self.counted(scorer.pair_logps, pair(False))
        scorer.ref_logps = self.timed("logprob", self.counted(scorer.ref_logps, side(True), "logprob"))
        scorer.pair_ref_logps = self.timed("logprob", self.counted(scorer.pair_ref_logps, pair(True), "logprob"))
        return scorer

    def instrument_reference(self, reference):
        """A rollout's reference (its ``token_stats(input_ids, attention_mask, loss_mask)``)."""
        reference.token_stats = self.timed("logprob", self.counted(
            reference.token_stats, lambda a, kw: _sequence_items(*a[:3]), "logprob"))
        return reference

    def instrument_sampler(self, sampler):
        """The sampler's ``sample(model, prompts, cfg, ...)``: its work (the wall time is the pipeline's)."""
        fn = sampler.sample

        def sample(model, prompts, cfg, *a, **kw):
            out = self.timed("generation", fn)(model, prompts, cfg, *a, **kw)
            self.record_generation([len(p) for p in prompts], cfg.samples_per_prompt,
                                   [len(c) for c in out.completions])
            return out

        sampler.sample = sample
        return sampler

    def instrument_objective(self, objective):
        """``objective.loss``, and the autocast dtype it runs under (the run's compute dtype)."""
        import torch

        fn = self.timed("loss_forward", objective.loss)

        def loss(*a, **kw):
            for dev in ("cpu", "cuda"):
                if torch.is_autocast_enabled(dev):
                    self.autocast_dtype = str(torch.get_autocast_dtype(dev)).replace("torch.", "")
            return fn(*a, **kw)

        objective.loss = loss
        return objective

    def instrument_optimizer(self, optimizer):
        optimizer.step = self.timed("optimizer", optimizer.step)
        return optimizer

    def instrument_backward(self):
        """Times every ``Tensor.backward`` in this process until :meth:`restore`; returns the undo."""
        import torch

        orig = torch.Tensor.backward
        torch.Tensor.backward = self.timed("loss_backward", orig)

        def undo():
            torch.Tensor.backward = orig

        self._undo.append(undo)
        return undo

    def restore(self):
        """Undoes the process-wide wrapping (``Tensor.backward``); the wrapped instances keep theirs."""
        while self._undo:
            self._undo.pop()()


def totals(steps: list) -> dict:
    """Σ over steps: seconds per phase, and the work merged (items and scored concatenated/summed,
    generation calls listed)."""
    s = {p: sum(st["s"].get(p, 0.0) for st in steps) for p in PHASES}
    work: dict = {}
    for st in steps:
        for ph, w in st["work"].items():
            if ph == "generation":
                work.setdefault(ph, {"calls": []})["calls"] += w["calls"]
                continue
            acc = work.setdefault(ph, {"items": [], "scored": 0, "calls": 0})
            acc["items"] += w["items"]
            acc["scored"] += w["scored"]
            acc["calls"] += w["calls"]
    return {"s": s, "work": work}
