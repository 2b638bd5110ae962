"""Data as a user writes it: rows of every kind, plain and conversational, written in each file
format, and a word-level tokenizer with a chat template built here (no downloads; one word of text
is one token)."""

import csv
import json

from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from prefopt.core.config import DataConfig

WORDS = ("the movie was good bad great awful fine plot actors music long short hello world "
         "what is it tell me more yes no ok sure story").split()
SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>", "<|user|>", "<|assistant|>", "<|system|>",
            "<|end|>", "<|bot|>", "\n"]
# Turns end with "<|end|>\n", like ChatML's "<|im_end|>\n".
TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|> {% endif %}")


def make_tokenizer(eos="<eos>", template=TEMPLATE):
    vocab = {w: i for i, w in enumerate(SPECIALS + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    # Spaces separate words; "\n" stays a token of its own so template formatting is visible.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(" +"), behavior="removed"),
        pre_tokenizers.Split(Regex("\n"), behavior="isolated"),
    ])
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token=eos,
                                 pad_token="<pad>", unk_token="<unk>")
    hf.chat_template = template
    return hf


def user(text):
    return [{"role": "user", "content": text}]


def assistant(text):
    return [{"role": "assistant", "content": text}]


PLAIN = {
    "paired": [{"prompt": "the movie was", "chosen": "good", "rejected": "bad", "margin": 1.5},
               {"prompt": "the plot", "chosen": "was great", "rejected": "was awful", "margin": 0.5}],
    "unpaired": [{"prompt": "the movie was", "completion": "good", "label": True},
                 {"prompt": "the plot", "completion": "was awful", "label": False}],
    "prompt_only": [{"prompt": "the movie was"}, {"prompt": "the plot"}],
    "demonstrations": [{"prompt": "the movie was", "completion": "good"},
                       {"prompt": "the plot", "completion": "was long"}],
}


CHAT = {
    "paired": [{"prompt": user("the movie was"), "chosen": assistant("good"), "rejected": assistant("bad")},
               {"prompt": user("the plot"), "chosen": assistant("was great"), "rejected": assistant("was awful")}],
    "unpaired": [{"prompt": user("the movie was"), "completion": assistant("good"), "label": True},
                 {"prompt": user("the plot"), "completion": assistant("was awful"), "label": False}],
    "prompt_only": [{"prompt": user("the movie was")}, {"prompt": user("the plot")}],
    "demonstrations": [{"messages": user("tell me more") + assistant("ok") + user("the movie was")
                        + assistant("good")},
                       {"messages": user("the plot") + assistant("was long")}],
}


def write(rows, path):
    """Write rows the way a user would produce each format."""
    ext = path.suffix
    if ext == ".json":
        path.write_text(json.dumps(rows))
    elif ext == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif ext == ".parquet":
        import datasets
        datasets.Dataset.from_list(rows).to_parquet(str(path))
    elif ext == ".csv":  # CSV has no lists: conversational cells are JSON text
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            for r in rows:
                w.writerow({k: json.dumps(v) if isinstance(v, list) else v for k, v in r.items()})
    return str(path)


def cfg_for(path=None, **kw):
    return DataConfig(path=path, **kw)


def one_line(exc_info):
    """The raised error's message, checked to be one line that says what is accepted."""
    msg = str(exc_info.value)
    assert "\n" not in msg and "accepted" in msg, msg
    return msg


def long_rows():
    return [{"prompt": "the movie", "chosen": "was good", "rejected": "was bad"},  # 3 + 3 tokens
            {"prompt": "the plot", "chosen": "was long long long", "rejected": "was ok"}]  # 3 + 5
