"""The testbed's word-level tokenizer.

One token per word, one per digit, one per punctuation mark: the testbed's vocabulary is a few
hundred tokens, so the tiny policy spends its capacity on the task rather than on sub-words.
It is saved as an ordinary Hugging Face tokenizer with a chat template, so the testbed goes
through exactly the conversational code path a real model does, and
``AutoTokenizer.from_pretrained(dir)`` loads it without importing prefopt.

Chat format (no system role; a system message's content is written as plain text first)::

    <|user|> PROMPT <|assistant|> COMPLETION </s>

The template adds no ``<s>``, and encoding adds no special tokens either, so the ids of
``apply_chat_template(..., add_generation_prompt=True)`` are a prefix of the ids of the full
conversation: prompt/completion masking can rely on that.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

if TYPE_CHECKING:  # transformers is slow to import; the tasks only need pre_tokenize
    from transformers import PreTrainedTokenizerFast

PAD, UNK, BOS, EOS, USER, ASSISTANT = "<pad>", "<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>"
SPECIAL_TOKENS = [PAD, UNK, BOS, EOS, USER, ASSISTANT]
DIGITS = [str(d) for d in range(10)]

# {% generation %} marks the assistant's tokens for return_assistant_tokens_mask; the eos is
# inside it because the policy must learn to stop.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if not loop.first %} {% endif -%}"
    "{%- if message['role'] == 'user' -%}"
    "<|user|> {{ message['content'] | trim }}"
    "{%- elif message['role'] == 'assistant' -%}"
    "<|assistant|> {% generation %}{{ message['content'] | trim }} </s>{% endgeneration %}"
    "{%- elif message['role'] == 'system' -%}"
    "{{ message['content'] | trim }}"
    "{%- else -%}"
    "{{ raise_exception('unknown role: ' + message['role']) }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt %} <|assistant|>{% endif -%}"
)

# Words stay whole; every digit and every punctuation/symbol character becomes its own token
# ("17+25=" -> 1 7 + 2 5 =, "good." -> good .).
_PIECES = Regex(r"\d|[^\w\s]")


def _pre_tokenizer():
    return pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(_PIECES, behavior="isolated")]
    )


_PRE_TOKENIZER = _pre_tokenizer()


def pre_tokenize(text: str) -> list[str]:
    """The words the tokenizer sees in ``text`` (lower-cased, digits and punctuation split)."""
    return [w for w, _ in _PRE_TOKENIZER.pre_tokenize_str(text.lower())]


def build_tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    """A word-level HF tokenizer over ``words`` plus the ten digits and the special tokens.

    Ids are deterministic: the special tokens first (``<pad>`` = 0, ``<unk>`` = 1, ``<s>`` = 2,
    ``</s>`` = 3, ``<|user|>`` = 4, ``<|assistant|>`` = 5), then the sorted distinct words, so
    the same word list always gives the same ids whatever order it came in.
    Decoding joins tokens with single spaces.
    """
    from transformers import PreTrainedTokenizerFast

    vocab_words = set(DIGITS)
    for w in words:
        pieces = pre_tokenize(w)
        if pieces != [w]:
            raise ValueError(f"vocabulary entry {w!r} is not a single lower-case token: {pieces}")
        vocab_words.add(w)
    vocab_words -= set(SPECIAL_TOKENS)
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + sorted(vocab_words))}

    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = _pre_tokenizer()
    # WordPiece without cleanup = join with single spaces (no word here starts with "##"); an
    # explicit decoder, not the default, so the behaviour is written into tokenizer.json.
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    tok.add_special_tokens(SPECIAL_TOKENS)

    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        unk_token=UNK,
        bos_token=BOS,
        eos_token=EOS,
        additional_special_tokens=[USER, ASSISTANT],
        clean_up_tokenization_spaces=False,
        model_max_length=1024,
    )
    hf.chat_template = CHAT_TEMPLATE
    return hf
