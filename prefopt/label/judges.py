r"""Judges: which of two completions of one prompt is better (config group ``judge``, conf/judge/*.yaml).

A judge answers ``compare(prompts, completions_a, completions_b) -> P`` with P[n] = P(a_n ≻ b_n)
in [0, 1] (float32 [N]). Kinds, one class each:

    llm       a local instruct causal LM asked which answer better follows written principles,
              both orders averaged (:class:`prefopt.label.llm_judge.LLMJudge`; judge=smollm2)
    model     a reward model r (a sequence classifier):   P(a ≻ b) = σ((r_a − r_b) / τ)
    function  a Python scorer s = fn(prompts, completions):  P(a ≻ b) = σ((s_a − s_b) / τ)
    gold      the testbed task's gold reward g (a control):  P(a ≻ b) = σ((g_a − g_b) / τ)

τ = ``judge.temperature``; τ = 0 is the hard comparison 1[s_a > s_b] + ½·1[s_a = s_b]. The last three
score each completion once (``score``), so K completions of a prompt cost K passes, not K(K − 1).

K completions y_1..y_K of one prompt get a score each from the pairwise matrix P_ij = P(y_i ≻ y_j),
their win rate against the others (Borda / Copeland with soft wins):

    score_i = 1/(K − 1) · Σ_{j ≠ i} P_ij            (K = 2: P(y_1 ≻ y_2) and 1 − P(y_1 ≻ y_2))

The LLM judge's order-averaged P is antisymmetric (P_ji = 1 − P_ij exactly), so it is asked each
unordered pair once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from prefopt.core.errors import UserError

KINDS = ("llm", "model", "function", "gold")


@dataclass
class JudgeConfig:
    """The ``judge`` config group (prefopt-label) and ``reward.judge`` (reward=judge)."""

    name: str = "smollm2"
    kind: str = "llm"  # llm | model | function | gold
    # llm: an HF directory or a .gguf file (wins over gguf_package / gguf_file); model: a sequence-classifier directory.
    path: Optional[str] = None
    gguf_file: Optional[str] = None  # llm: the .gguf file inside gguf_package
    gguf_package: Optional[str] = None  # llm: an installed package that ships gguf_file (never imported)
    principles: str = ""  # llm: what "better" means; conf/judge/smollm2.yaml holds the default text
    principles_file: Optional[str] = None  # llm: read the principles from this file instead
    function: Optional[str] = None  # function: MODULE:FUNCTION, fn(prompts, completions, **kw) -> list[float]
    kwargs: dict = field(default_factory=dict)  # function: extra keyword arguments
    temperature: float = 1.0  # model / function / gold: τ of σ((s_a − s_b) / τ); 0: hard comparison
    dtype: str = "float32"  # llm
    sequences_per_device: int = 16  # forward batch (llm: judge prompts; model: sequences)


def options() -> list:
    """The judge names: conf/judge/*.yaml."""
    from importlib.resources import files

    return sorted(p.name[:-5] for p in (files("prefopt.conf") / "judge").iterdir() if p.name.endswith(".yaml"))


def resolve(spec: dict, key: str = "reward.judge") -> JudgeConfig:
    """A judge named inside another section (``reward.judge``): conf/judge/<spec.name>.yaml with the
    non-null keys of ``spec`` over it, so that ``reward.judge.name=model reward.judge.path=DIR`` reads
    like ``judge=model judge.path=DIR``."""
    from importlib.resources import files

    from omegaconf import OmegaConf

    from prefopt.core.config import typed

    spec = dict(spec or {})
    name = spec.pop("name", None)
    if name not in options():
        raise UserError(f"{key}.name={name!r} is not a judge; accepted: {', '.join(options())}")
    base = OmegaConf.load(str(files("prefopt.conf") / "judge" / f"{name}.yaml"))
    return typed(JudgeConfig, OmegaConf.merge(base, {k: v for k, v in spec.items() if v is not None}), key)


def check(cfg: JudgeConfig, key: str = "judge") -> None:
    """Cheap checks that load nothing: run before any sampling."""
    if cfg.kind not in KINDS:
        raise UserError(f"{key}.kind='{cfg.kind}' is not known; accepted: {', '.join(KINDS)}")
    if cfg.temperature < 0:
        raise UserError(f"{key}.temperature={cfg.temperature}; accepted: >= 0 (0: hard comparison)")
    if cfg.sequences_per_device <= 0:
        raise UserError(f"{key}.sequences_per_device={cfg.sequences_per_device}; accepted: > 0")
    if cfg.kind == "model" and not cfg.path:
        raise UserError(f"{key}={cfg.name} needs {key}.path=DIR, a reward model (e.g. the model/ of an algo=reward run)")
    if cfg.kind == "model" and not os.path.isdir(os.path.expanduser(cfg.path)):
        raise UserError(f"{key}.path: '{cfg.path}' is not a directory; accepted: a sequence-classification "
                        "checkpoint directory (e.g. the model/ of an algo=reward run)")
    if cfg.kind == "function":
        from prefopt.rollout.rewards import load_function

        load_function(cfg.function, f"{key}.function")
    if cfg.kind == "llm":
        from prefopt.label.llm_judge import check_llm

        check_llm(cfg, key)


def build_judge(cfg: JudgeConfig, *, tokenizer=None, gold_fn: Optional[Callable] = None, device=None,
                key: str = "judge", console=None):
    """The judge ``cfg`` names. ``tokenizer``: the policy's (a reward model with the same vocabulary
    scores the sampled ids); ``gold_fn``: the testbed task's gold reward (kind=gold)."""
    check(cfg, key)
    if cfg.kind == "llm":
        from prefopt.label.llm_judge import LLMJudge

        return LLMJudge(cfg, device=device, key=key, console=console)
    if cfg.kind == "model":
        return ModelJudge(cfg, tokenizer, device, key)
    if cfg.kind == "function":
        return FunctionJudge(cfg, key)
    if gold_fn is None:
        raise UserError(f"{key}=gold needs a testbed task's gold reward; accepted: data=reviews, data=arith, "
                        "data=smol_arith (on a user's data: judge=smollm2, model or function)")
    return GoldJudge(cfg, gold_fn)


# ---- the pointwise judges: one score per completion, compared by Bradley–Terry -----------------


def bradley_terry(s_a: torch.Tensor, s_b: torch.Tensor, tau: float) -> torch.Tensor:
    """P(a ≻ b) = σ((s_a − s_b) / τ); τ = 0: 1[s_a > s_b] + ½·1[s_a = s_b]."""
    d = s_a - s_b
    if tau == 0:
        return (d > 0).to(s_a.dtype) + 0.5 * (d == 0).to(s_a.dtype)
    return torch.sigmoid(d / tau)


class _Pointwise:
    """compare() through score(): both sides scored, then :func:`bradley_terry`."""

    tau: float

    def compare(self, prompts, completions_a, completions_b, **kw) -> torch.Tensor:
        n = len(prompts)
        s = self.score(list(prompts) * 2, list(completions_a) + list(completions_b))
        return bradley_terry(s[:n], s[n:], self.tau)


class ModelJudge(_Pointwise):
    """A reward model r: P(a ≻ b) = σ((r_a − r_b) / τ), τ = 1 as the Bradley–Terry loss trained it."""

    def __init__(self, cfg: JudgeConfig, tokenizer, device=None, key: str = "judge"):
        from prefopt.rollout.rewards import ModelReward

        if tokenizer is None:
            from prefopt.testbed.world import load_tokenizer

            tokenizer = load_tokenizer()
        self.rm = ModelReward(cfg.path, tokenizer, device, cfg.sequences_per_device, key=f"{key}.path")
        self.tau, self.name = cfg.temperature, cfg.name

    def score(self, prompts, completions, prompt_ids=None, completion_ids=None, **kw) -> torch.Tensor:
        return self.rm(prompts, completions, prompt_ids=prompt_ids, completion_ids=completion_ids)


class FunctionJudge(_Pointwise):
    """s = fn(prompts, completions, **kw): P(a ≻ b) = σ((s_a − s_b) / τ). The function returns one
    score per completion (the reward=function signature), so any reward function is a judge."""

    def __init__(self, cfg: JudgeConfig, key: str = "judge"):
        from prefopt.rollout.rewards import FunctionReward

        self.fn = FunctionReward(cfg.function, cfg.kwargs, key=f"{key}.function")
        self.tau, self.name = cfg.temperature, cfg.name

    def score(self, prompts, completions, **kw) -> torch.Tensor:
        return self.fn(prompts, completions, **kw)


class GoldJudge(_Pointwise):
    """The testbed task's gold reward g: P(a ≻ b) = σ((g_a − g_b) / τ); by default τ = 0, the hard
    comparison (1 when g_a > g_b, ½ on ties)."""

    def __init__(self, cfg: JudgeConfig, gold_fn: Callable):
        self.gold_fn, self.tau, self.name = gold_fn, cfg.temperature, cfg.name

    def score(self, prompts, completions, **kw) -> torch.Tensor:
        return torch.tensor(self.gold_fn(list(prompts), list(completions)), dtype=torch.float32)


# ---- K completions of a prompt: the pairwise matrix and the win-rate scores -----------------------


def consecutive_groups(keys: list) -> list:
    """Sizes of the runs of equal consecutive keys: a rollout lays a prompt's samples out side by
    side, so a run is one prompt's group (the same prompt drawn twice in a row is one prompt still)."""
    sizes = []
    for i, k in enumerate(keys):
        if i and keys[i - 1] == k:
            sizes[-1] += 1
        else:
            sizes.append(1)
    return sizes


def win_rates(P: torch.Tensor) -> torch.Tensor:
    """score_i = 1/(K − 1) · Σ_{j ≠ i} P_ij for a [K, K] matrix; K = 1: ½ (nothing to beat)."""
    K = P.shape[0]
    if K < 2:
        return torch.full((K,), 0.5, dtype=P.dtype)
    return (P.sum(1) - P.diagonal()) / (K - 1)


def preference_matrices(judge, prompts: list, completions: list, sizes: list, **kw) -> tuple:
    """(one [K, K] matrix P_ij = P(y_i ≻ y_j) per group, stats) for flat ``prompts``/``completions``
    laid out in consecutive groups of ``sizes``. ``kw``: per-completion lists (prompt_ids,
    completion_ids) for a pointwise judge's ``score``. One batched judge call for all groups.

    stats (an LLM judge only): ``pairs``, how often the two orders disagree (``order_disagreement``:
    the verdict with a in slot A and the one with a in slot B fall on opposite sides of ½), and the
    mean probability given to whichever answer sits in slot A (``slot_a_preference``: ½ = no bias)."""
    starts = [sum(sizes[:g]) for g in range(len(sizes))]
    stats: dict = {}
    if hasattr(judge, "score"):
        s = judge.score(prompts, completions, **kw).double()
        mats = [bradley_terry(s[a : a + K, None], s[None, a : a + K], judge.tau).float() for a, K in zip(starts, sizes)]
        return mats, stats
    idx = [(a + i, a + j) for a, K in zip(starts, sizes) for i in range(K) for j in range(i + 1, K)]
    mats = [torch.full((K, K), 0.5) for K in sizes]
    if idx:
        p_first, p_second = judge.verdicts([prompts[i] for i, _ in idx], [completions[i] for i, _ in idx],
                                           [completions[j] for _, j in idx])
        p = 0.5 * (p_first + p_second)
        n = 0
        for g, (a, K) in enumerate(zip(starts, sizes)):
            for i in range(K):
                for j in range(i + 1, K):
                    mats[g][i, j], mats[g][j, i] = p[n], 1 - p[n]
                    n += 1
        stats = {"pairs": len(idx), "order_disagreement": float(((p_first > 0.5) != (p_second > 0.5)).float().mean()),
                 "slot_a_preference": float((0.5 * (p_first + 1 - p_second)).mean())}
    return mats, stats


def group_scores(judge, prompts: list, completions: list, sizes: Optional[list] = None, **kw) -> torch.Tensor:
    """Each completion's win rate within its group (float32 [N]); ``sizes`` default: runs of equal
    consecutive prompts (:func:`consecutive_groups`)."""
    sizes = sizes or consecutive_groups(list(prompts))
    mats, _ = preference_matrices(judge, prompts, completions, sizes, **kw)
    return torch.cat([win_rates(P) for P in mats]).float() if mats else torch.zeros(0)
