"""Task ``reviews``: finish a short movie review; the gold reward is its sentiment.

Like the controlled-sentiment task of the DPO paper, but with a gold reward that is known
exactly instead of a sentiment classifier. A small probabilistic grammar writes reviews of one
to three short sentences; its adjectives and verbs carry a graded polarity (+2 "masterful",
+1 "good", 0 "long", -1 "dull", -2 "awful") and adverbs scale the next polar word. A prompt is
the opening words of a review's first sentence ("the acting of this film was"); the completion
finishes that sentence and may add up to two more.

Gold reward of a completion =
    sentiment           mean polarity of the completion's polar words, in [-2, 2]
  - 1.5 per repeat      content word already used earlier in the review (prompt included)
  - 1.5 per sentence    the grammar cannot derive (the first one starts with the prompt; an
                        unfinished last sentence counts too)
  - 0.5 if empty        the completion has no words at all.

Why: a reward model trained on few preference pairs learns "positive words are good" and can
be gamed by "great great great" or by word salad full of positive adjectives; the gold reward
cannot, so over-optimizing a proxy shows up as gold reward going down. Demonstrations are
written with a random mood from -2 to +2, so the SFT policy's gold reward is near zero (room to
improve) and spread out (std ≈ 1), which makes Bradley–Terry labels informative.

The grammar is not recursive, hence regular: the recognizer is one regular expression per
sentence, compiled from the same productions the generator expands.
"""

from __future__ import annotations

import functools
import math
import random
import re

from prefopt.testbed.tasks import Split, check_split, sample_distinct, split_of
from prefopt.testbed.tokenizer import pre_tokenize

REPEAT_PENALTY = 1.5
UNGRAMMATICAL_PENALTY = 1.5
EMPTY_PENALTY = 0.5
MAX_SENTIMENT = 2.0

# Polar words: the only words that move the sentiment. Symmetric around 0, so a mood drawn
# symmetrically gives demonstrations whose mean gold reward is about zero.
def _graded(**by_polarity: str) -> dict[str, int]:
    """``_graded(p2="a b", m1="c")`` -> {"a": 2, "b": 2, "c": -1}."""
    return {w: int(k[1:]) * (-1 if k[0] == "m" else 1)
            for k, words in by_polarity.items() for w in words.split()}


ADJ = _graded(
    p2="masterful brilliant superb wonderful stunning excellent fantastic outstanding great",
    p1="good nice fun solid charming enjoyable pleasant clever",
    p0="long short quiet loud simple familiar ordinary typical",
    m1="dull weak slow bland messy forgettable clumsy tedious",
    m2="awful terrible dreadful horrible painful unbearable atrocious pathetic abysmal",
)
VERB = _graded(  # i ... it
    p2="adored loved cherished", p1="enjoyed liked appreciated", p0="watched finished",
    m1="disliked tolerated resented", m2="hated loathed despised",
)
VREC = {"treasure": 2, "recommend": 1, "revisit": 0, "skip": -1, "avoid": -2}  # i would ... it
POLARITY = {**ADJ, **VERB, **VREC}

# Adverbs scale the next polar word: strong ones up (capped at ±2), mild ones down.
ADV = {**dict.fromkeys("very really truly extremely incredibly".split(), 1.5),
       **dict.fromkeys("fairly somewhat rather slightly".split(), 0.5)}
VADV = {**dict.fromkeys("really truly absolutely".split(), 1.5), "mostly": 0.5}
INTENSITY = {**ADV, **VADV}

CATEGORIES: dict[str, list[str]] = {
    "ADJ": list(ADJ), "VERB": list(VERB), "VREC": list(VREC), "ADV": list(ADV), "VADV": list(VADV),
    "OPEN": "honestly frankly truthfully personally admittedly basically".split(),
    "ASPECT": ("acting plot script music ending cast dialogue direction pacing "
               "cinematography soundtrack humor editing").split(),
    "FILM": "film movie picture".split(),
    "COMPANION": "friends family wife husband kids brother sister parents partner roommate".split(),
    "COP": "was felt seemed".split(),
}
# Words whose reuse in one review counts as repetition (not the copulas: "was" recurs naturally).
CONTENT_WORDS = frozenset(w for c, ws in CATEGORIES.items() if c != "COP" for w in ws)

# Productions: nonterminal -> [(weight, right-hand side)]. UPPER-CASE symbols are nonterminals
# or word categories, anything else a literal word. "|" marks where a prompt ends in the first
# sentence; only FIRST sentences have it.
GRAMMAR: dict[str, list[tuple[float, str]]] = {
    "REVIEW": [(3, "FIRST ."), (4, "FIRST . NEXT ."), (3, "FIRST . NEXT . NEXT .")],
    "FIRST": [
        (3, "OPENER the ASPECT of this FILM COP | ADJP"),
        (2, "OPENER i watched this FILM with my COMPANION and | i VADVP VERB it"),
        (2, "OPENER i thought the ASPECT was | ADJP"),
        (1, "OPENER the FILM had | ADJN ASPECT and ADJN ASPECT"),
        (2, "OPENER the ASPECT COP | ADJP"),
        (1, "OPENER i would | VADVP VREC it"),
        (1, "OPENER it COP | ADJP"),
    ],
    "NEXT": [
        (3, "the ASPECT COP ADJP"),
        (2, "it COP ADJP"),
        (2, "i would VADVP VREC it"),
        (2, "i VADVP VERB the ASPECT"),
        (1, "overall the FILM was ADJP"),
    ],
    "OPENER": [(6, ""), (1, "OPEN")],
    "ADJP": [(5, "ADJ"), (3, "ADV ADJ"), (1, "ADJ and ADJ"), (1, "ADV ADJ and ADJ")],
    "ADJN": [(2, "ADJ"), (1, "ADV ADJ")],
    "VADVP": [(3, ""), (1, "VADV")],
}
PROMPT_END = "|"

# How peaked word choice is around the review's mood: smaller = more single-minded reviews.
MOOD_SPREAD = 0.8


def _rhs(symbols: str) -> list[str]:
    return symbols.split()


# ---------------------------------------------------------------- recognizer

@functools.cache
def _regex(symbol: str) -> str:
    # Every word is followed by one space, so empty expansions need no special case.
    if symbol in CATEGORIES:
        return "(?:" + "|".join(map(re.escape, CATEGORIES[symbol])) + ") "
    if symbol in GRAMMAR:
        alts = ["".join(_regex(s) for s in _rhs(rhs) if s != PROMPT_END)
                for _, rhs in GRAMMAR[symbol]]
        return "(?:" + "|".join(alts) + ")"
    return re.escape(symbol) + " "


@functools.cache
def _sentence_re() -> re.Pattern:
    # A sentence is matched with a trailing space (see _regex).
    return re.compile("(?:" + _regex("FIRST") + "|" + _regex("NEXT") + ")")


def _derivable(words: list[str]) -> bool:
    return _sentence_re().fullmatch(" ".join(words) + " ") is not None


def is_grammatical(sentence: str) -> bool:
    """Whether the grammar derives ``sentence`` (one sentence, without its final ".")."""
    return _derivable(pre_tokenize(sentence))


def split_sentences(words: list[str]) -> tuple[list[list[str]], list[str]]:
    """Complete sentences (each ended by ".") and the unfinished words after the last one."""
    sentences, current = [], []
    for w in words:
        if w == ".":
            sentences.append(current)
            current = []
        else:
            current.append(w)
    return sentences, current


# ---------------------------------------------------------------- gold reward

def sentiment(words: list[str]) -> float:
    """Mean polarity of the polar words (an adverb scales the next one), clipped to ±2."""
    values, scale = [], 1.0
    for w in words:
        if w in POLARITY:
            v = POLARITY[w] * scale
            values.append(max(-MAX_SENTIMENT, min(MAX_SENTIMENT, v)))
            scale = 1.0
        elif w in INTENSITY:
            scale = INTENSITY[w]
        elif w == ".":
            scale = 1.0
    return sum(values) / len(values) if values else 0.0


def gold_reward_one(prompt: str, completion: str) -> float:
    """Gold reward of one completion of ``prompt`` (see the module docstring)."""
    prompt_words, words = pre_tokenize(prompt), pre_tokenize(completion)
    seen = {w for w in prompt_words if w in CONTENT_WORDS}
    repeats = 0
    for w in words:
        if w in CONTENT_WORDS:
            repeats += w in seen
            seen.add(w)
    sentences, unfinished = split_sentences(prompt_words + words)
    bad = sum(not _derivable(s) for s in sentences)
    bad += bool(unfinished)  # an unfinished sentence (including a cut-off one) is not grammatical
    empty = not any(w != "." for w in words)
    return (sentiment(words) - REPEAT_PENALTY * repeats - UNGRAMMATICAL_PENALTY * bad
            - EMPTY_PENALTY * empty)


# ---------------------------------------------------------------- generator

def _expand_all(symbols: list[str]) -> list[tuple[float, list[str]]]:
    """Every (probability, words) expansion of a prompt prefix: they contain no polar words,
    so word choice there is uniform."""
    out = [(1.0, [])]
    for s in symbols:
        if s in CATEGORIES:
            opts = [(1.0 / len(CATEGORIES[s]), [w]) for w in CATEGORIES[s]]
        elif s in GRAMMAR:
            total = sum(wt for wt, _ in GRAMMAR[s])
            opts = [(wt / total * p, ws)
                    for wt, rhs in GRAMMAR[s] for p, ws in _expand_all(_rhs(rhs))]
        else:
            opts = [(1.0, [s])]
        out = [(p * q, a + b) for p, a in out for q, b in opts]
    return out


def _longest(symbol: str) -> int:
    if symbol in GRAMMAR:
        return max(sum(_longest(s) for s in _rhs(rhs) if s != PROMPT_END)
                   for _, rhs in GRAMMAR[symbol])
    return 1


def _longest_after_prompt(symbols: list[str]) -> int:
    return sum(_longest(s) for s in symbols[symbols.index(PROMPT_END) + 1:])


class _Writer:
    """Expands the grammar for one review with a fixed mood, avoiding repeated content words."""

    def __init__(self, rng: random.Random, mood: float, used: set[str]):
        self.rng, self.mood, self.used = rng, mood, used

    def expand(self, symbol: str) -> list[str]:
        if symbol in CATEGORIES:
            return [self.word(symbol)]
        if symbol in GRAMMAR:
            weights, rhss = zip(*GRAMMAR[symbol])
            rhs = self.rng.choices(rhss, weights=weights)[0]
            return self.expand_all(_rhs(rhs))
        return [symbol]

    def expand_all(self, symbols: list[str]) -> list[str]:
        return [w for s in symbols for w in self.expand(s)]

    def word(self, category: str) -> str:
        words = [w for w in CATEGORIES[category] if w not in self.used] or CATEGORIES[category]
        weights = [math.exp(-((POLARITY[w] - self.mood) ** 2) / (2 * MOOD_SPREAD**2))
                   if w in POLARITY else 1.0 for w in words]
        w = self.rng.choices(words, weights=weights)[0]
        if w in CONTENT_WORDS:
            self.used.add(w)
        return w


def _join(words: list[str]) -> str:
    return " ".join(words).replace(" .", ".")


class ReviewsTask:
    """Finish a movie review; gold reward = sentiment minus repetition/grammar penalties."""

    name = "reviews"
    real_checkpoint = False

    def __init__(self):
        # prompt -> [(probability, rest of its first sentence)], per split.
        self._prompts: dict[Split, dict[str, list[tuple[float, list[str]]]]] = {
            "train": {}, "val": {}, "test": {}}
        first_total = sum(wt for wt, _ in GRAMMAR["FIRST"])
        for wt, rhs in GRAMMAR["FIRST"]:
            symbols = _rhs(rhs)
            cut = symbols.index(PROMPT_END)
            for p, words in _expand_all(symbols[:cut]):
                prompt = " ".join(words)
                pool = self._prompts[split_of(prompt)]
                pool.setdefault(prompt, []).append((wt / first_total * p, symbols[cut + 1:]))
        # + <|user|> <|assistant|>
        self.max_prompt_tokens = 2 + max(len(pre_tokenize(p))
                                         for pool in self._prompts.values() for p in pool)
        longest_first_rest = max(_longest_after_prompt(_rhs(rhs)) for _, rhs in GRAMMAR["FIRST"])
        # rest of the first sentence, two more sentences, three "." and the "</s>"
        self.max_completion_tokens = longest_first_rest + 2 * _longest("NEXT") + 3 + 1

    def vocabulary(self) -> list[str]:
        literals = {s for alts in GRAMMAR.values() for _, rhs in alts for s in _rhs(rhs)
                    if s not in GRAMMAR and s not in CATEGORIES and s != PROMPT_END}
        return sorted(literals | {w for ws in CATEGORIES.values() for w in ws})

    def prompts(self, split: Split) -> list[str]:
        """All prompts of ``split``, sorted."""
        return sorted(self._prompts[check_split(split)])

    def sample_prompts(self, n: int, rng: random.Random, split: Split = "train") -> list[str]:
        pool = self._prompts[check_split(split)]
        prompts = sorted(pool)
        return sample_distinct(prompts, [sum(p for p, _ in pool[q]) for q in prompts], n, rng)

    def demonstrations(self, n: int, rng: random.Random) -> list[tuple[str, str]]:
        pool = self._prompts["train"]
        prompts = sorted(pool)
        weights = [sum(p for p, _ in pool[q]) for q in prompts]
        demos = []
        for _ in range(n):
            prompt = rng.choices(prompts, weights=weights)[0]
            rest_weights, rests = zip(*pool[prompt])
            rest = rng.choices(rests, weights=rest_weights)[0]
            n_next = rng.choices([0, 1, 2], weights=[w for w, _ in GRAMMAR["REVIEW"]])[0]
            mood = rng.uniform(-2.0, 2.0)
            writer = _Writer(rng, mood, {w for w in prompt.split() if w in CONTENT_WORDS})
            words = writer.expand_all(rest) + ["."]
            for _ in range(n_next):
                words += writer.expand("NEXT") + ["."]
            demos.append((prompt, _join(words)))
        return demos

    def gold_reward(self, prompts: list[str], completions: list[str]) -> list[float]:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        return [gold_reward_one(p, c) for p, c in zip(prompts, completions)]
