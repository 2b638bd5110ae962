r"""``judge=smollm2`` (kind ``llm``): a local instruct LM as a judge under written principles (RLAIF: Lee et al. 2023, arXiv:2309.00267;
the principles are the constitutional part: Bai et al. 2022, arXiv:2212.08073).

The judge model reads, through its chat template, the principles, the prompt x and two answers in
slots A and B, and is asked which answer better follows the principles. Its verdict is the
probability of the two answer tokens at the next-token position, renormalised over the two:

    p_A(a, b) = exp z_A / (exp z_A + exp z_B) = σ(z_A − z_B)      (a in slot A, b in slot B)

Language models prefer one slot whatever it holds (position bias), so each pair is asked in both
orders and the two verdicts for a are averaged:

    P(a ≻ b) = ½ [p_A(a, b) + p_B(b, a)]

which is antisymmetric, P(b ≻ a) = 1 − P(a ≻ b), and is ½ for a judge that only ever picks one slot.
All 2N judge prompts of a call go through the model in batches (left-padded, position ids from the
mask, logits of the last position only).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Optional

import torch

from prefopt.core.config import ModelConfig
from prefopt.core.errors import UserError, first_line
from prefopt.models.gguf import package_folder
from prefopt.rollout.judges.base import Judge, JudgeConfig, JudgeContext, fill_pairs, group_starts, locate, register

TEMPLATE = ("{principles}\n\n[Prompt]\n{prompt}\n\n[Answer A]\n{a}\n\n[Answer B]\n{b}\n\n"
            "Which answer better follows the principles above? Reply with a single letter: A or B.")
LETTERS = ("A", "B")


@dataclass
class LLMJudgeConfig(JudgeConfig):
    path: Optional[str] = None  # an HF directory or a .gguf file (wins over gguf_package / gguf_file)
    gguf_file: Optional[str] = None  # the .gguf file inside gguf_package
    gguf_package: Optional[str] = None  # an installed package that ships gguf_file (never imported)
    principles: str = ""  # what "better" means; conf/judge/smollm2.yaml holds the default text
    principles_file: Optional[str] = None  # read the principles from this file instead
    dtype: str = "float32"
    sequences_per_device: int = 16


def order_averaged(z_ab: torch.Tensor, z_ba: torch.Tensor) -> tuple:
    """(p_A(a, b), p_B(b, a)) from the answer-token logits [N, 2] (columns: z_A, z_B) of the prompts
    with a in slot A (``z_ab``) and with a in slot B (``z_ba``); P(a ≻ b) is their mean."""
    p_first = torch.sigmoid(z_ab[:, 0] - z_ab[:, 1])
    p_second = torch.sigmoid(z_ba[:, 1] - z_ba[:, 0])
    return p_first, p_second


def _model_config(cfg) -> ModelConfig:
    """The judge's weights as a model config: ``path`` (a directory or .gguf file) wins over a package
    and its file, so that ``judge=smollm2 judge.path=...`` needs no other key reset."""
    if cfg.path:
        return ModelConfig(name=cfg.name, name_or_path=os.path.expanduser(cfg.path), dtype=cfg.dtype)
    return ModelConfig(name=cfg.name, gguf_file=cfg.gguf_file, gguf_package=cfg.gguf_package, dtype=cfg.dtype)


def principles_text(cfg, key: str = "judge") -> str:
    if cfg.principles_file:
        try:
            with open(os.path.expanduser(cfg.principles_file), encoding="utf-8") as f:
                text = f.read().strip()
        except OSError as e:
            raise UserError(f"{key}.principles_file: cannot read '{cfg.principles_file}' ({e.strerror}); "
                            "accepted: a readable text file") from None
        except UnicodeDecodeError as e:
            raise UserError(f"{key}.principles_file: '{cfg.principles_file}' is not text (byte 0x{e.object[e.start]:02x} "
                            f"at offset {e.start} is not UTF-8); accepted: a UTF-8 text file") from None
        if "\x00" in text:  # valid UTF-8, but a binary file all the same
            raise UserError(f"{key}.principles_file: '{cfg.principles_file}' holds NUL bytes, so it is not text; "
                            "accepted: a UTF-8 text file")
    else:
        text = (cfg.principles or "").strip()
    if not text:
        raise UserError(f"{key}.principles is empty; accepted: the text the judge should apply (or "
                        f"{key}.principles_file=PATH)")
    return text


def check_llm(cfg, key: str = "judge") -> None:
    """What can be checked without loading weights: the principles, and that the weights exist."""
    principles_text(cfg, key)
    if cfg.path:
        path = os.path.expanduser(cfg.path)
        if not os.path.exists(path):
            raise UserError(f"{key}.path: '{cfg.path}' does not exist; accepted: an instruct model's HF directory "
                            "or a .gguf file")
        if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
            raise UserError(f"{key}.path: '{cfg.path}' is not a model directory (no config.json); accepted: an "
                            "instruct model's HF directory or a .gguf file")
        if os.path.isfile(path) and not path.lower().endswith(".gguf"):
            raise UserError(f"{key}.path: '{cfg.path}' is a file but not a .gguf file; accepted: an instruct "
                            "model's HF directory or a .gguf file")
    elif cfg.gguf_package:
        # found without importing the package or its parents ("never imported")
        package_folder(cfg.gguf_package, key=f"{key}.gguf_package")
    else:
        raise UserError(f"{key}={cfg.name} needs {key}.path=DIR_OR_FILE.gguf (an instruct causal LM) or "
                        f"{key}.gguf_package=PACKAGE with {key}.gguf_file=NAME.gguf")


@register("llm")
class LLMJudge(Judge):
    """An instruct causal LM comparing two answers under ``principles``, both orders averaged."""

    Config = LLMJudgeConfig

    def __init__(self, cfg: LLMJudgeConfig, ctx: JudgeContext):
        from prefopt.models import gguf
        from prefopt.models.load import load_policy, load_tokenizer

        super().__init__(cfg, ctx)
        key, console = ctx.key, ctx.console
        check_llm(cfg, key)
        self.principles = principles_text(cfg, key)
        mcfg = _model_config(cfg)
        try:
            weights = gguf.checkpoint_dir(mcfg, console) or mcfg.name_or_path
            self.tok = load_tokenizer(weights)
            self.model = load_policy(mcfg, path=weights).eval().requires_grad_(False)
        except UserError as e:
            raise UserError(f"{key}={cfg.name}: cannot load the judge model ({e})") from None
        except (OSError, ValueError, KeyError) as e:
            raise UserError(f"{key}={cfg.name}: cannot load the judge model from '{cfg.path or cfg.gguf_package}' "
                            f"({first_line(e)}); accepted: an instruct causal LM (HF directory or .gguf)") from None
        if not getattr(self.tok, "chat_template", None):
            raise UserError(f"{key}={cfg.name}: the judge's tokenizer has no chat template; accepted: an instruct "
                            "(chat) model")
        ids = [self.tok.encode(c, add_special_tokens=False) for c in LETTERS]
        if any(len(i) != 1 for i in ids):
            raise UserError(f"{key}={cfg.name}: the judge's tokenizer splits the answer letters {LETTERS} into "
                            f"{ids}; accepted: a vocabulary with one token per letter")
        self.letter_ids = [i[0] for i in ids]
        self.warned_context = False
        self.note = (lambda m: console.print(f"[yellow]warning:[/] {m}", soft_wrap=True, markup=True)) if console \
            else (lambda m: warnings.warn(m, stacklevel=4))
        self.check_context(cfg, key)
        self.device = ctx.device or torch.device("cpu")
        self.model.to(self.device)

    def check_context(self, cfg, key: str) -> None:
        """Principles that fill the judge model's context leave no room for the prompt and answers:
        refused. Past its position limit a model reads noise, so a longer judge prompt is reported
        (:meth:`verdicts`)."""
        c = self.model.config
        self.max_positions = getattr(c, "max_position_embeddings", None) or getattr(c, "n_positions", None)
        n = len(self.prompt_ids("", "", ""))
        self.principles_tokens = n - len(self.prompt_ids("", "", "", principles=""))
        if self.max_positions and self.principles_tokens >= self.max_positions:
            source = f"{key}.principles_file='{cfg.principles_file}'" if cfg.principles_file else f"{key}.principles"
            raise UserError(f"{source} is {self.principles_tokens} tokens (a judge prompt of {n} before any prompt or "
                            f"answer), and {key}={cfg.name} reads at most {self.max_positions} "
                            "(max_position_embeddings); accepted: principles far shorter than that, or a judge model "
                            "with a longer context")

    @classmethod
    def check(cls, cfg: LLMJudgeConfig, key: str = "judge") -> None:
        check_llm(cfg, key)

    def prompt_ids(self, prompt: str, a: str, b: str, principles: Optional[str] = None) -> list:
        """The judge prompt with ``a`` in slot A and ``b`` in slot B, ready for the next token."""
        text = TEMPLATE.format(principles=self.principles if principles is None else principles, prompt=prompt, a=a, b=b)
        ids = self.tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True)
        return list(ids["input_ids"] if hasattr(ids, "keys") else ids)

    @torch.no_grad()
    def answer_logits(self, seqs: list) -> torch.Tensor:
        """[len(seqs), 2] float32: the logits of "A" and "B" after each sequence."""
        out = []
        pad = self.tok.pad_token_id
        for s in range(0, len(seqs), self.batch):
            chunk = seqs[s : s + self.batch]
            T = max(len(x) for x in chunk)
            ids = torch.tensor([[pad] * (T - len(x)) + x for x in chunk])
            am = torch.tensor([[0] * (T - len(x)) + [1] * len(x) for x in chunk])
            pos = (am.cumsum(-1) - 1).clamp(min=0)  # left padding must not shift the real tokens' positions
            kw = dict(input_ids=ids.to(self.device), attention_mask=am.to(self.device), position_ids=pos.to(self.device),
                      use_cache=False)
            try:  # the last position's logits only: [batch, 1, vocab] instead of [batch, T, vocab]
                logits = self.model(**kw, logits_to_keep=1).logits
            except TypeError:  # an architecture without logits_to_keep
                logits = self.model(**kw).logits
            out.append(logits[:, -1, self.letter_ids].float().cpu())
        return torch.cat(out) if out else torch.zeros(0, 2)

    def verdicts(self, prompts, completions_a, completions_b, where=None) -> tuple:
        """(p_A(a, b), p_B(b, a)), float32 [N] each (see :func:`order_averaged`). ``where(k)`` ->
        (group, detail) names pair k in errors."""
        n = len(prompts)
        seqs = [self.prompt_ids(x, a, b) for x, a, b in zip(prompts, completions_a, completions_b)]
        seqs += [self.prompt_ids(x, b, a) for x, a, b in zip(prompts, completions_a, completions_b)]
        long = [k for k, s in enumerate(seqs) if self.max_positions and len(s) > self.max_positions]
        if long and not self.warned_context:
            self.warned_context = True
            k = long[0] % n
            group, detail = where(k) if where else (k, f"pair {k}")
            self.note(f"{self.key}={self.name}: {len(long)} of {len(seqs)} judge prompts are longer than the "
                      f"{self.max_positions} positions the judge model reads (the first: {len(seqs[long[0]])} tokens, "
                      f"{detail} of prompt {group}; {self.principles_tokens} are the principles); its verdicts on "
                      "them are unreliable. Shorter principles or answers (max_new_tokens), or a judge with a longer "
                      "context, avoid this")
        z = self.answer_logits(seqs)
        return order_averaged(z[:n], z[n:])

    def compare(self, prompts, completions_a, completions_b, **kw) -> torch.Tensor:
        """P(a ≻ b) = ½ [p_A(a, b) + p_B(b, a)], float32 [N]."""
        p_first, p_second = self.verdicts(prompts, completions_a, completions_b)
        return 0.5 * (p_first + p_second)

    def matrices(self, prompts: list, completions: list, sizes: list, **kw) -> tuple:
        """The order-averaged P is antisymmetric (P_ji = 1 − P_ij exactly), so each unordered pair is
        asked once, in both orders, all in one batched call. stats: ``pairs``, how often the two orders
        disagree (``order_disagreement``: the verdict with a in slot A and the one with a in slot B fall
        on opposite sides of ½), and the mean probability given to whichever answer sits in slot A
        (``slot_a_preference``: ½ = no bias)."""
        idx = [(a + i, a + j) for a, K in zip(group_starts(sizes), sizes) for i in range(K) for j in range(i + 1, K)]
        mats = [torch.full((K, K), 0.5) for K in sizes]
        if not idx:
            return mats, {}
        def where(k):
            g, i = locate(sizes, idx[k][0])
            return g, f"completions {i} and {i + idx[k][1] - idx[k][0]}"

        p_first, p_second = self.verdicts([prompts[i] for i, _ in idx], [completions[i] for i, _ in idx],
                                          [completions[j] for _, j in idx], where)
        fill_pairs(mats, sizes, 0.5 * (p_first + p_second))
        return mats, {"pairs": len(idx),
                      "order_disagreement": float(((p_first > 0.5) != (p_second > 0.5)).float().mean()),
                      "slot_a_preference": float((0.5 * (p_first + 1 - p_second)).mean())}
