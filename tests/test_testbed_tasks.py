"""The testbed's tiny world: tokenizer, task registry, reviews grammar and gold reward, arith."""

import random
import statistics

import pytest

from prefopt.core.errors import UserError
from prefopt.testbed import rewards
from prefopt.testbed.reviews import is_grammatical, split_sentences
from prefopt.testbed.tasks import TASKS, Task, get_task, combined_vocabulary
from prefopt.testbed.tokenizer import SPECIAL_TOKENS, build_tokenizer, pre_tokenize

REVIEWS_PROMPT = "the acting of this film was"


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(combined_vocabulary())


# ---------------------------------------------------------------- tokenizer

def test_tokenizer_round_trip_and_chat_template(tokenizer, tmp_path):
    from transformers import AutoTokenizer

    assert len(tokenizer) < 300
    assert tokenizer.convert_ids_to_tokens(list(range(6))) == SPECIAL_TOKENS
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded.get_vocab() == tokenizer.get_vocab()
    assert (loaded.pad_token, loaded.unk_token, loaded.bos_token, loaded.eos_token) == (
        "<pad>", "<unk>", "<s>", "</s>")

    prompt = [{"role": "user", "content": REVIEWS_PROMPT}]
    text = loaded.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    assert text == f"<|user|> {REVIEWS_PROMPT} <|assistant|>"
    full = prompt + [{"role": "assistant", "content": "good."}]
    full_text = loaded.apply_chat_template(full, tokenize=False)
    assert full_text == f"<|user|> {REVIEWS_PROMPT} <|assistant|> good. </s>"
    prompt_ids = loaded(text, add_special_tokens=False)["input_ids"]
    full_ids = loaded(full_text, add_special_tokens=False)["input_ids"]
    assert full_ids[: len(prompt_ids)] == prompt_ids and full_ids[-1] == loaded.eos_token_id
    assert loaded.unk_token_id not in full_ids
    assert loaded.decode(full_ids, skip_special_tokens=True) == f"{REVIEWS_PROMPT} good ."


def test_tokenizer_splits_digits_and_is_deterministic(tokenizer):
    ids = tokenizer("17+25=", add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids) == ["1", "7", "+", "2", "5", "="]
    assert tokenizer.decode(tokenizer("42")["input_ids"]) == "4 2"
    shuffled = list(reversed(combined_vocabulary()))
    assert build_tokenizer(shuffled).get_vocab() == tokenizer.get_vocab()


# ---------------------------------------------------------------- registry

def test_registry():
    assert TASKS == ("reviews", "arith")
    for name in TASKS:
        task = get_task(name)
        assert isinstance(task, Task) and task.name == name
    with pytest.raises(UserError, match="reviews, arith"):
        get_task("sentiment")


@pytest.mark.parametrize("name", TASKS)
def test_prompts_split_disjoint_deterministic_and_fit(name, tokenizer):
    task = get_task(name)
    for held_out in ("val", "test"):
        assert not set(task.prompts("train")) & set(task.prompts(held_out))
        assert len(task.prompts(held_out)) >= 64
        eval_prompts = task.sample_prompts(64, random.Random(0), held_out)
        assert len(set(eval_prompts)) == 64 and set(eval_prompts) <= set(task.prompts(held_out))
    assert not set(task.prompts("val")) & set(task.prompts("test"))
    assert task.sample_prompts(50, random.Random(1)) == task.sample_prompts(50, random.Random(1))
    demos = task.demonstrations(300, random.Random(2))
    assert demos == task.demonstrations(300, random.Random(2))
    assert {p for p, _ in demos} <= set(task.prompts("train"))

    vocab = set(task.vocabulary())
    for prompt, completion in demos:
        assert set(pre_tokenize(prompt + " " + completion)) <= vocab
        chat = [{"role": "user", "content": prompt}]
        ids = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True,
                                            return_dict=True)["input_ids"]
        assert len(ids) <= task.max_prompt_tokens
        assert len(tokenizer(completion)["input_ids"]) + 1 <= task.max_completion_tokens


# ---------------------------------------------------------------- reviews

def test_reviews_grammar_generates_grammatical_reviews():
    task = get_task("reviews")
    for prompt, completion in task.demonstrations(500, random.Random(3)):
        sentences, unfinished = split_sentences(pre_tokenize(prompt + " " + completion))
        assert not unfinished and 1 <= len(sentences) <= 3
        assert all(is_grammatical(" ".join(s)) for s in sentences), (prompt, completion)
    assert is_grammatical("honestly the plot of this movie felt very dull and slow")
    assert not is_grammatical("the plot was great great great")
    assert not is_grammatical("great the was plot")


def test_reviews_gold_reward_orders_sentiment_and_punishes_gaming():
    task = get_task("reviews")

    def gold(completion, prompt=REVIEWS_PROMPT):
        return task.gold_reward([prompt], [completion])[0]

    positive = gold("masterful. i would recommend it.")
    neutral = gold("long. the plot was simple.")
    negative = gold("awful. i would avoid it.")
    assert positive > neutral > negative
    assert gold("very good.") > gold("good.") > gold("fairly good.") > 0

    # Repeating positive words, word salad, and cut-off or empty text all score below an
    # honest positive review, however positive their words are.
    gaming = ["great great great", "great great great.", "great. great. great.",
              "masterful brilliant superb wonderful.", "masterful. the plot was masterful.",
              "masterful and brilliant", "", "."]
    for text in gaming:
        assert gold(text) < positive and gold(text) < gold("good. it was nice."), text
    assert gold("great great great great great.") < negative

    # Decoded form (spaces around punctuation, lower case) and normal text score the same.
    assert gold("masterful . i would recommend it .") == positive
    assert gold("Masterful. I would recommend it.") == positive


def test_reviews_demonstrations_balanced_and_spread():
    task = get_task("reviews")
    demos = task.demonstrations(2000, random.Random(4))
    gold = task.gold_reward([p for p, _ in demos], [c for _, c in demos])
    assert abs(statistics.mean(gold)) < 0.15
    assert 0.8 < statistics.pstdev(gold) < 1.5


# ---------------------------------------------------------------- arith

def test_arith_exact_match():
    task = get_task("arith")
    prompts = ["17+25="] * 6 + ["1 7 + 2 5 ="]
    completions = ["42", "4 2", " 42 ", "43", "042", "4 2 .", "4 2"]
    assert task.gold_reward(prompts, completions) == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    demos = task.demonstrations(4000, random.Random(5))
    accuracy = statistics.mean(task.gold_reward([p for p, _ in demos], [c for _, c in demos]))
    assert 0.5 < accuracy < 0.6
    assert all(c.isdigit() for _, c in demos)


def test_arith_commuted_prompts_share_a_split():
    task = get_task("arith")
    train = set(task.prompts("train"))
    for prompt in task.prompts("val") + task.prompts("test"):
        a, b = prompt[:-1].split("+")
        assert f"{b}+{a}=" not in train


def test_reward_functions():
    assert rewards.arith_exact_match(["2+2=", "2+2="], ["4", "5"], step=3) == [1.0, 0.0]
    assert rewards.reviews_gold([REVIEWS_PROMPT], ["good."]) == [1.0]


# ---------------------------------------------------------------- smol_arith (a real checkpoint's task)

def test_smol_arith_reward_reads_the_stated_number():
    task = get_task("smol_arith")
    assert task.real_checkpoint and "smol_arith" not in TASKS  # not part of the word-level tokenizer
    p = "What is 7+5?"
    answers = {"7 + 5 = 12.": 1.0, "The answer is 12": 1.0, "7+5 = 12, and 12 = 6+6": 0.0, "12, not 13": 0.0,
               "7 + 5 = 1,2": 1.0, "It equals twelve.": 0.0, "": 0.0, "7 + 5 = 13": 0.0}
    assert task.gold_reward([p] * len(answers), list(answers)) == list(answers.values())
    assert task.gold_reward(["What is 9-4?", "What is 6*8?"], ["9 - 4 = 5", "48"]) == [1.0, 1.0]
    with pytest.raises(ValueError):
        task.gold_reward(["7+5="], ["12"])


def test_smol_arith_splits_are_disjoint_problems():
    task = get_task("smol_arith")
    sets = {s: set(task.prompts(s)) for s in ("train", "val", "test")}
    assert sum(len(v) for v in sets.values()) == 100 + 100 + 55
    assert not (sets["train"] & sets["val"]) and not (sets["train"] & sets["test"]) and not (sets["val"] & sets["test"])
    assert len(sets["val"]) >= 15 and len(sets["test"]) >= 15
    for a, b in ((7, 5), (3, 9), (2, 8)):  # a problem and its commuted form share a split
        for op in "+*":
            assert [s for s in sets if f"What is {a}{op}{b}?" in sets[s]] == [s for s in sets if f"What is {b}{op}{a}?" in sets[s]]


def test_smol_arith19_has_room_to_measure_on_disjoint_splits():
    task = get_task("smol_arith19")
    sets = {s: set(task.prompts(s)) for s in ("train", "val", "test")}
    assert sum(len(v) for v in sets.values()) == 255 + 300
    assert len(sets["train"]) >= 100 and len(sets["val"]) >= 64 and len(sets["test"]) >= 64
    assert not (sets["train"] & sets["val"]) and not (sets["train"] & sets["test"]) and not (sets["val"] & sets["test"])
    assert set(get_task("smol_arith").prompts("test")) <= set().union(*sets.values())  # it grows smol_arith
    for a, b in ((14, 5), (3, 19), (12, 17)):  # a problem and its commuted form share a split
        assert [s for s in sets if f"What is {a}+{b}?" in sets[s]] == [s for s in sets if f"What is {b}+{a}?" in sets[s]]
    assert task.gold_reward(["What is 14+7?", "What is 19-12?", "What is 17-3?"], ["14 + 7 = 21", "7", "15"]) == [1.0, 1.0, 0.0]


def test_smol_arith2d_is_two_digit_sums_and_differences_on_disjoint_splits():
    task = get_task("smol_arith2d")
    sets = {s: set(task.prompts(s)) for s in ("train", "val", "test")}
    assert sum(len(v) for v in sets.values()) == 8100 + 4095
    assert not (sets["train"] & sets["val"]) and not (sets["train"] & sets["test"]) and not (sets["val"] & sets["test"])
    assert min(len(v) for v in sets.values()) >= 1000
    assert [s for s in sets if "What is 47+38?" in sets[s]] == [s for s in sets if "What is 38+47?" in sets[s]]
    assert task.gold_reward(["What is 47+38?", "What is 91-19?"], ["47 + 38 = 85", "It is 73."]) == [1.0, 0.0]
