"""prefopt-label and its judges on bad input: each case is one line on stderr (exit status 2, no
traceback) that names the file, key or option and what is accepted, before any model loads where
that is possible, and nothing is lost: an existing file is never replaced, and labelled rows that
cannot be written where asked are kept in a file the line names."""

import errno
import json
import os
import tempfile
import textwrap
import uuid

import pytest
import torch
from test_label import _refused

from prefopt.core.errors import RunStopped, UserError
from prefopt.label import pairs as L
from prefopt.rollout import judges as J

DATA = ["data=reviews", "num_prompts=2"]  # the cheapest real labelling run (a few seconds)
TINY = [*DATA, "judge=gold"]


def _rows(path) -> list:
    return [json.loads(l) for l in open(path)]


def _module(tmp_path, monkeypatch, source: str) -> str:
    """An importable module (a fresh name each time) holding ``source``; returns its name."""
    name = f"user_judge_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


@pytest.fixture
def nothing_loads(monkeypatch):
    """Fails the test if the policy, the data or a judge model would load: the refusal must come first."""
    import prefopt.run.prepare as prepare

    def loads(*a, **kw):
        raise AssertionError("loaded before refusing")

    monkeypatch.setattr(prepare, "prepare_data", loads)
    monkeypatch.setattr(J, "build_judge", loads)


NAN = """
def score(prompts, completions, **kw):
    return [float("{v}")] * len(completions)
"""


# ---- out= ----

@pytest.mark.parametrize("out", ["/proc/x.jsonl", "/sys/x.jsonl", "/proc/self/nope/x.jsonl"])
def test_an_out_where_no_file_can_be_created_is_refused_before_sampling(out, capsys):
    _refused(capsys, ["judge=gold", f"out={out}"], f"out={out}: cannot create a file in", "accepted: a path in a writable")


def test_a_file_that_appears_at_out_during_the_run_is_never_replaced(tmp_path, capsys, monkeypatch):
    """Another run (or program) writes out= after the start-up check: its file stays, ours is kept beside it."""
    from prefopt.rollout import judges as J

    out = tmp_path / "pairs.jsonl"
    judge = J.preference_matrices

    def judge_while_another_run_finishes(*a, **kw):
        out.write_text("theirs\n")
        return judge(*a, **kw)

    monkeypatch.setattr(J, "preference_matrices", judge_while_another_run_finishes)
    line = _refused(capsys, [*TINY, f"out={out}"], f"out={out} appeared while labelling", "a new out=")
    assert out.read_text() == "theirs\n"
    kept = [p for p in tmp_path.iterdir() if p != out]
    assert len(kept) == 1 and kept[0].name.startswith("pairs.kept-") and str(kept[0]) in line
    assert len(_rows(kept[0])) == 2


def test_a_second_writer_never_replaces_the_first(tmp_path):
    out = str(tmp_path / "pairs.jsonl")
    L.write_rows(out, [{"prompt": "a", "chosen": "b", "rejected": "c"}])
    with pytest.raises(RunStopped, match="appeared while labelling") as e:
        L.write_rows(out, [{"prompt": "x", "chosen": "y", "rejected": "z"}])
    assert _rows(out)[0]["prompt"] == "a"
    kept = [p for p in os.listdir(tmp_path) if p != "pairs.jsonl"]
    assert len(kept) == 1 and kept[0] in str(e.value) and _rows(tmp_path / kept[0])[0]["prompt"] == "x"
    L.write_rows(out, [{"prompt": "x"}], overwrite=True)  # asked for: replaced
    assert _rows(out) == [{"prompt": "x"}]


def test_a_full_disk_after_the_work_keeps_the_rows(tmp_path, capsys, monkeypatch):
    full, spare = tmp_path / "full", tmp_path / "spare"
    full.mkdir(), spare.mkdir()
    write = L._write_file

    def no_space_in_full(path, text):
        if os.path.dirname(path) == str(full):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return write(path, text)

    monkeypatch.setattr(L, "_write_file", no_space_in_full)
    monkeypatch.setattr(tempfile, "tempdir", str(spare))
    out = full / "pairs.jsonl"
    line = _refused(capsys, [*TINY, f"out={out}"], f"out={out}: cannot write", "No space left on device",
                    "2 labelled rows were kept in")
    kept = list(spare.iterdir())
    assert len(kept) == 1 and str(kept[0]) in line and len(_rows(kept[0])) == 2
    assert os.listdir(full) == []  # no partial or temporary file left behind


def test_rows_that_cannot_be_written_where_asked_are_kept_elsewhere(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(RunStopped, match=r"out=/proc/nope/pairs.jsonl: cannot write .* 1 labelled rows were kept in"):
        L.write_rows("/proc/nope/pairs.jsonl", [{"prompt": "a"}])
    assert [_rows(tmp_path / p) for p in os.listdir(tmp_path)] == [[{"prompt": "a"}]]


# ---- non-finite judges and temperatures ----

@pytest.mark.parametrize("args, needle", [
    (["judge=gold", "judge.temperature=nan"], "judge.temperature=nan; accepted: a finite number >= 0"),
    (["judge=gold", "judge.temperature=-1"], "judge.temperature=-1.0; accepted: a finite number >= 0"),
    (["judge=function", "judge.function=prefopt.testbed.rewards:reviews_gold", "judge.temperature=inf"],
     "judge.temperature=inf; accepted: a finite number >= 0"),
    (["judge=gold", "temperature=nan"], "temperature=nan; accepted: a finite number > 0"),
    (["judge=gold", "temperature=inf"], "temperature=inf; accepted: a finite number > 0"),
])
def test_non_finite_temperatures_are_refused_before_anything_loads(args, needle, tmp_path, capsys, nothing_loads):
    _refused(capsys, [*args, f"out={tmp_path / 'x.jsonl'}"], needle)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("value, tau", [("nan", 1.0), ("nan", 0.0), ("inf", 1.0), ("-inf", 0.0)])
def test_a_judge_that_gives_nan_or_inf_stops_the_run(value, tau, tmp_path, capsys, monkeypatch):
    """τ = 0 would turn NaN into "rejected wins", σ would turn ±inf into certainty: both must stop."""
    mod = _module(tmp_path, monkeypatch, NAN.format(v=value))
    out = tmp_path / "pairs.jsonl"
    _refused(capsys, [*DATA, "judge=function", f"judge.function={mod}:score", f"judge.temperature={tau}",
                      f"out={out}"], f"judge=function gave score {float(value)} for completion 0 of row 0",
             "(4 non-finite values in all)", "accepted: a judge that gives a finite number for every completion")
    assert not out.exists()


def test_a_pairwise_judge_that_gives_nan_names_the_pair_and_the_row():
    class Broken(J.Judge):
        def compare(self, prompts, completions_a, completions_b, **kw):
            return torch.tensor([0.7, float("nan"), 0.2])[: len(prompts)]

    judge = Broken(J.JudgeConfig(name="broken"), J.JudgeContext(key="judge"))
    with pytest.raises(UserError, match=r"^judge=broken gave P\(y_i ≻ y_j\) = nan for completions 0 and 2 of row 7 "):
        J.preference_matrices(judge, ["q"] * 3, ["a", "b", "c"], [3], names=["row 7"])


def test_online_dpo_stops_on_a_nan_judge(run_cfg, tmp_path, monkeypatch):
    mod = _module(tmp_path, monkeypatch, NAN.format(v="nan"))
    with pytest.raises(UserError, match=r"^reward.judge=function gave score nan for completion 0 of rollout prompt 0"):
        run_cfg("algo=online_dpo", "data=reviews", "reward=judge", "reward.judge.name=function",
                f"reward.judge.function={mod}:score", "trainer.max_steps=1", "algo.prompts_per_step=2",
                "trainer.eval_at_end=false", "trainer.save_model=false", out=tmp_path / "run")
    with pytest.raises(UserError, match=r"reward.judge.temperature=nan; accepted: a finite number >= 0"):
        run_cfg("algo=online_dpo", "data=reviews", "reward=judge", "reward.judge.name=gold",
                "reward.judge.temperature=nan", "trainer.max_steps=1", out=tmp_path / "run2")


# ---- judge=function ----

@pytest.mark.parametrize("source, needles", [
    ("def score(prompts, completions:\n", ["failed with SyntaxError:", "line 1"]),
    ("import os\nraise RuntimeError('needs a GPU')\n", ["failed with RuntimeError: needs a GPU", ".py, line 2)"]),
    ("import sys\nsys.exit('not a library')\n", ["failed with SystemExit: not a library"]),
])
def test_a_judge_module_that_cannot_be_imported_is_one_line(source, needles, tmp_path, capsys, monkeypatch,
                                                            nothing_loads):
    mod = _module(tmp_path, monkeypatch, source)
    _refused(capsys, ["judge=function", f"judge.function={mod}:score", f"out={tmp_path / 'x.jsonl'}"],
             f"judge.function='{mod}:score': importing module '{mod}'", *needles, "accepted: a module that imports")


def test_a_judge_function_that_raises_is_one_line(tmp_path, capsys, monkeypatch):
    mod = _module(tmp_path, monkeypatch, """
        def score(prompts, completions, **kw):
            return [len(c) / 0 for c in completions]
        """)
    out = tmp_path / "pairs.jsonl"
    _refused(capsys, [*DATA, "judge=function", f"judge.function={mod}:score", f"out={out}"],
             f"judge.function={mod}:score raised ZeroDivisionError: division by zero ({mod}.py, line 3)")
    assert not out.exists()


@pytest.mark.parametrize("body, needle", [
    ("[str(len(c)) for c in completions]", "returned str, expected a number (completion 0: '"),
    ("' '.join(str(len(c)) for c in completions)", "returned str, expected a list of numbers"),
    ("[None for c in completions]", "returned NoneType, expected a number (completion 0: None)"),
])
def test_a_judge_function_that_returns_no_numbers_is_refused(body, needle, tmp_path, capsys, monkeypatch):
    """Digit strings are not read as scores (which then looked like ties)."""
    mod = _module(tmp_path, monkeypatch, f"def score(prompts, completions, **kw):\n    return {body}\n")
    _refused(capsys, [*DATA, "judge=function", f"judge.function={mod}:score", f"out={tmp_path / 'x.jsonl'}"],
             f"judge.function={mod}:score {needle}", "accepted: fn(prompts, completions, **kw) -> list[float]")


# ---- the LLM judge's principles ----

@pytest.fixture(scope="module")
def judge_128(tmp_path_factory):
    """A tiny chat model whose context is 128 positions."""
    from gguf_files import save_tiny_chat_model

    return save_tiny_chat_model(str(tmp_path_factory.mktemp("judge128")), seed=5)


@pytest.mark.parametrize("content, needle", [
    (bytes(range(256)), "is not text (byte 0x80 at offset 128 is not UTF-8)"),
    (b"\x00" * 64, "holds NUL bytes, so it is not text"),
])
def test_a_binary_principles_file_is_one_line(content, needle, tmp_path, capsys, nothing_loads):
    f = tmp_path / "principles.bin"
    f.write_bytes(content)
    _refused(capsys, ["judge=smollm2", f"judge.principles_file={f}", f"out={tmp_path / 'x.jsonl'}"],
             f"judge.principles_file: '{f}' {needle}", "accepted: a UTF-8 text file")


def test_principles_longer_than_the_judge_context_are_refused_before_judging(tmp_path, capsys, judge_128, monkeypatch):
    f = tmp_path / "principles.txt"
    f.write_text("Prefer the answer that is kind, clear and true. " * 40)

    def judged(*a, **kw):
        raise AssertionError("judged before refusing")

    monkeypatch.setattr(J, "preference_matrices", judged)
    out = tmp_path / "pairs.jsonl"
    line = _refused(capsys, [*DATA, "judge=smollm2", f"judge.path={judge_128}", f"judge.principles_file={f}",
                             f"out={out}"], f"judge.principles_file='{f}' is ", "reads at most 128 (max_position_embeddings)")
    assert int(line.split(f"judge.principles_file='{f}' is ")[1].split()[0]) > 128  # the token count
    assert not out.exists()


def test_a_judge_prompt_longer_than_the_context_is_reported(judge_128):
    """Short principles, but prompt and answers take the judge past its 128 positions: said, not silent."""
    judge = J.build_judge(J.judge_config({"name": "tiny", "kind": "llm", "path": judge_128, "principles": "Be kind."}))
    with pytest.warns(UserWarning, match=r"judge=tiny: 2 of 2 judge prompts are longer than the 128 positions"):
        J.preference_matrices(judge, ["q"] * 2, ["a long answer " * 20, "b"], [2])


# ---- bounds and package names ----

def test_more_samples_than_memory_can_hold_are_refused_before_anything_loads(tmp_path, capsys, nothing_loads):
    _refused(capsys, ["data=reviews", "judge=gold", "num_prompts=1000000000", f"out={tmp_path / 'x.jsonl'}"],
             "num_prompts=1,000,000,000 with samples_per_prompt=2", "accepted: num_prompts <= ")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("name, needle", [("..x", "is not a package name"), ("no_such_pkg.sub", "is not installed"),
                                          ("os.sub", "is a module, not a package folder")])
def test_a_judge_gguf_package_is_checked_without_importing_it(name, needle, tmp_path, capsys, nothing_loads):
    _refused(capsys, ["data=reviews", "judge=smollm2", f"judge.gguf_package={name}", f"out={tmp_path / 'x.jsonl'}"],
             f"judge.gguf_package={name}", needle)
