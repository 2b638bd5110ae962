"""Reliability: crashes, kills, corrupted and hostile files, full disks, signals, a failing evaluation.

Each test injects its failure at a controlled point: kill -9 from inside a subprocess right after a
chosen file is written, a truncated file, an injected OSError(ENOSPC), a pickle payload that would
write a file, an evaluation that raises."""

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from conftest import compose, synthetic_examples, tiny_model
from prefopt.run import train as run
from prefopt.core.errors import Interrupted, RunStopped, UserError
from prefopt.objectives.registry import Objective
from prefopt.objectives.sft import SFT
from prefopt.core import checkpoint
from prefopt.core.checkpoint import CheckpointInvalid

from short_runs import SHORT, cli_main, run_in_process
from test_trainer import make_trainer

ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}


def kill_after_saving(name: str, nth: int = 1) -> str:
    """Python that SIGKILLs the process right after torch.save wrote its ``nth`` file called ``name``."""
    return textwrap.dedent(f"""
        import os, signal, torch
        _save, _n = torch.save, [0]
        def _killing_save(obj, f, *a, **k):
            _save(obj, f, *a, **k)
            if str(f).endswith({name!r}):
                _n[0] += 1
                if _n[0] == {nth}:
                    os.kill(os.getpid(), signal.SIGKILL)
        torch.save = _killing_save
    """)


def steps(out):
    return [json.loads(l)["step"] for l in open(os.path.join(out, "metrics.jsonl"))]


# ---- a kill -9 during the first checkpoint write -------------------------------------------------

@pytest.fixture(scope="module")
def killed_in_first_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("killed") / "run"
    p = cli_main(*SHORT, "trainer.save_every_steps=2", f"hydra.run.dir={out}", pre=kill_after_saving("trainable.pt"))
    assert p.returncode == -signal.SIGKILL, p.stderr
    return out


def test_resume_without_a_complete_checkpoint_starts_clean(killed_in_first_checkpoint):
    # Rows 1, 2 of the killed attempt and no checkpoint: resume=auto starts clean, so the rows read
    # 1, 2, 3, 4 and never 1, 2, 1, 2, 3, 4 (a restart at step 0 appending to the old rows).
    out = killed_in_first_checkpoint
    assert steps(out) == [1, 2] and checkpoint.newest(str(out)) is None
    run_in_process(out, "trainer.save_every_steps=2", "trainer.resume=auto")
    assert steps(out) == [1, 2, 3, 4]


def test_partial_checkpoint_dirs_are_removed(killed_in_first_checkpoint, tmp_path):
    # Every interrupted write leaves a .tmp-step_N-PID directory; nothing else would ever remove it.
    out = killed_in_first_checkpoint
    ck = out / "checkpoints"
    # The kill's leftover, unless the previous test's resume removed it; then one made here (resume
    # and prune both clean up).
    if not any(n.startswith(".tmp-") for n in os.listdir(ck)):
        (ck / ".tmp-step_0000002-999999999").mkdir()
    run_in_process(out, "trainer.save_every_steps=2", "trainer.resume=auto")
    assert not [n for n in os.listdir(ck) if n.startswith(".tmp-")]
    # ... and at prune time, during a run.
    t = make_trainer("demonstrations", SFT(SFT.Config()), tmp_path, steps=2, save_every=1)
    os.makedirs(tmp_path / "checkpoints" / ".tmp-step_0000001-999999999")
    t.fit()
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["step_0000001", "step_0000002"]


# ---- a corrupted newest checkpoint ---------------------------------------------------------------

def test_corrupt_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys):
    out = tmp_path / "run"
    run_in_process(out, "trainer.save_every_steps=2")
    newest = out / "checkpoints" / "step_0000004"
    data = (newest / "trainable.pt").read_bytes()
    (newest / "trainable.pt").write_bytes(data[: len(data) // 2])  # a truncated file
    assert "trainable.pt" in checkpoint.verify(str(newest))
    os.remove(out / "summary.json")
    capsys.readouterr()
    s = run_in_process(out, "trainer.save_every_steps=2", "trainer.resume=auto")
    said = capsys.readouterr().out
    assert "skipping checkpoint" in said and "step_0000004" in said and "resumed from" in said, said
    assert s["steps"] == 4 and steps(out) == [1, 2, 3, 4]
    # Named explicitly, a damaged checkpoint is refused in one line.
    with pytest.raises(UserError, match="trainable.pt"):
        (newest / "trainable.pt").write_bytes(data[:100])
        run_in_process(tmp_path / "other", f"trainer.resume={newest}")


# ---- a finite loss with a NaN gradient -----------------------------------------------------------

class NaNGradAfter(Objective):
    """The SFT loss, plus a term that is 0 in value but has a NaN gradient from call ``at`` on
    (d√u/du = ∞ at u = 0, times du/dθ = 0)."""

    def __init__(self, inner, at):
        self.inner, self.at, self.calls = inner, at, 0
        self.needs = inner.needs

    def units(self, b):
        return self.inner.units(b)

    def loss(self, b, s):
        self.calls += 1
        loss, m = self.inner.loss(b, s)
        if self.calls > self.at:
            p = next(s.policy.parameters())
            loss = loss + torch.sqrt(((p - p.detach()) ** 2).sum())
        return loss, {**m, "nan_metric": float("nan")}


def test_nan_gradient_stops_before_the_update_and_metrics_stay_strict_json(tmp_path):
    from prefopt.core.errors import TrainingDiverged

    t = make_trainer("demonstrations", NaNGradAfter(SFT(SFT.Config()), at=2), tmp_path, steps=5, save_every=1)
    before = {n: p.detach().clone() for n, p in t.policy.named_parameters()}
    with pytest.raises(TrainingDiverged, match="gradient norm is nan at step 3.*step_0000002"):
        t.fit()
    assert all(torch.isfinite(p).all() for p in t.policy.parameters())
    assert any(not torch.equal(before[n], p) for n, p in t.policy.named_parameters())  # steps 1-2 did train
    state = torch.load(tmp_path / "checkpoints" / "step_0000002" / "trainable.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state.values())

    def strict(c):
        raise ValueError(f"non-standard JSON constant {c}")

    rows = [json.loads(l, parse_constant=strict) for l in open(tmp_path / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2] and rows[0]["nan_metric"] is None


def test_non_finite_weights_never_become_a_checkpoint(tmp_path):
    from prefopt.core.errors import TrainingDiverged

    t = make_trainer("demonstrations", SFT(SFT.Config()), tmp_path, steps=1)
    with torch.no_grad():
        next(t.policy.parameters()).fill_(float("inf"))
    with pytest.raises(TrainingDiverged, match="not finite"):
        t.save_checkpoint()
    assert not os.path.exists(tmp_path / "checkpoints") or not os.listdir(tmp_path / "checkpoints")


# ---- a full disk during a checkpoint write -------------------------------------------------------

def test_full_disk_during_checkpoint_removes_the_partial_and_keeps_the_previous(tmp_path, monkeypatch):
    t = make_trainer("demonstrations", SFT(SFT.Config()), tmp_path, steps=3, save_every=1)
    real = torch.save
    calls = []

    def full_disk(obj, f, *a, **k):
        calls.append(str(f))
        if len(calls) == 4:  # step 2's optim.pt: trainable.pt of step 2 already written
            real(obj, f, *a, **k)
            raise OSError(errno.ENOSPC, "No space left on device", str(f))
        return real(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(RunStopped) as e:
        t.fit()
    msg = str(e.value)
    assert "\n" not in msg and "No space left on device" in msg and "step_0000001" in msg, msg
    assert os.listdir(tmp_path / "checkpoints") == ["step_0000001"]
    assert checkpoint.verify(str(tmp_path / "checkpoints" / "step_0000001")) is None


def test_full_disk_while_logging_leaves_no_torn_line(tmp_path, monkeypatch):
    import builtins

    t = make_trainer("demonstrations", SFT(SFT.Config()), tmp_path, steps=1)
    t.log({"step": 1, "loss": 1.0})
    real_open = builtins.open

    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

        def tell(self):
            return self.f.tell()

        def truncate(self, n):
            return self.f.truncate(n)

        def write(self, s):
            self.f.write(s[:5])
            self.f.flush()
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self):
            self.f.flush()

    monkeypatch.setattr(builtins, "open", lambda p, m="r", *a, **k: Full(real_open(p, m, *a, **k))
                        if str(p).endswith("metrics.jsonl") and "a" in m else real_open(p, m, *a, **k))
    with pytest.raises(RunStopped, match="No space left"):
        t.log({"step": 2, "loss": 1.0})
    monkeypatch.undo()
    assert [json.loads(l) for l in open(tmp_path / "metrics.jsonl")] == [{"step": 1, "loss": 1.0}]


# ---- a torn last line of metrics.jsonl -----------------------------------------------------------

def test_torn_metrics_line_is_dropped_on_resume(tmp_path):
    a = make_trainer("demonstrations", SFT(SFT.Config()), tmp_path, steps=4, save_every=2)
    for _ in range(3):
        a.log(a.train_step())
        if a.state.step == 2:
            a.save_checkpoint()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "loss": 0.12')  # what a crash mid-write leaves
    b = make_trainer("demonstrations", SFT(SFT.Config()), tmp_path, steps=4, save_every=2)
    b.load_checkpoint(checkpoint.newest(str(tmp_path)))
    b.fit()
    assert steps(tmp_path) == [1, 2, 3, 4]


# ---- the reference log-prob cache ----------------------------------------------------------------

def _attach(examples):
    from prefopt.models import reference_cache

    return reference_cache.attach(tiny_model(0), examples, model_key="test", batch_size=4, device=torch.device("cpu"))


def test_corrupt_reference_cache_is_named_and_rebuilt(tmp_path, monkeypatch, capsys):
    from prefopt.models import reference_cache

    monkeypatch.setenv("PREFOPT_CACHE", str(tmp_path))
    ex = synthetic_examples("paired", n=6)
    first = _attach(ex)
    (path,) = [p for p in os.listdir(reference_cache.cache_dir()) if p.endswith(".pt")]
    full = os.path.join(reference_cache.cache_dir(), path)
    data = open(full, "rb").read()
    for damaged in (data[: len(data) // 2], b"", data[:-40] + b"\0" * 40):
        with open(full, "wb") as f:
            f.write(damaged)
        capsys.readouterr()
        again = _attach(ex)
        err = capsys.readouterr().err
        assert full in err and "rebuilding" in err, err
        assert all(torch.equal(a["chosen_ref_logps"], b["chosen_ref_logps"]) for a, b in zip(first, again))
        assert open(full, "rb").read() == data


class Payload:
    """Unpickling this writes a file: what a crafted checkpoint or cache would do."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def _write_manifest(d):
    import hashlib

    files = {n: {"bytes": os.path.getsize(d / n), "sha256": hashlib.sha256((d / n).read_bytes()).hexdigest()}
             for n in sorted(os.listdir(d)) if n != "manifest.json"}
    (d / "manifest.json").write_text(json.dumps({"format": 2, "step": 1, "files": files}))


def test_crafted_checkpoint_cannot_run_code(tmp_path):
    # trainer.resume=DIR reads optim.pt and trainable.pt: unpickled with weights_only=False, a crafted
    # one would run code (here: write a file).
    t = make_trainer("demonstrations", SFT(SFT.Config()), tmp_path / "a", steps=1, save_every=1)
    t.fit()
    ckpt = tmp_path / "a" / "checkpoints" / "step_0000001"
    pwned = tmp_path / "pwned"
    for name in ("optim.pt", "trainable.pt"):
        good = (ckpt / name).read_bytes()
        torch.save({"optimizer": Payload(pwned)}, ckpt / name)
        _write_manifest(ckpt)  # an attacker can write a matching manifest
        b = make_trainer("demonstrations", SFT(SFT.Config()), tmp_path / "b", steps=1)
        with pytest.raises(CheckpointInvalid, match="refused to load"):
            b.load_checkpoint(str(ckpt))
        assert not pwned.exists()
        (ckpt / name).write_bytes(good)
        _write_manifest(ckpt)


def test_crafted_reference_cache_cannot_run_code(tmp_path, monkeypatch):
    from prefopt.models import reference_cache

    monkeypatch.setenv("PREFOPT_CACHE", str(tmp_path))
    ex = synthetic_examples("paired", n=4)
    _attach(ex)
    (name,) = [p for p in os.listdir(reference_cache.cache_dir()) if p.endswith(".pt")]
    pwned = tmp_path / "pwned"
    torch.save({"chosen": Payload(pwned)}, os.path.join(reference_cache.cache_dir(), name))
    _attach(ex)
    assert not pwned.exists()


# ---- a failing evaluation ------------------------------------------------------------------------

def test_model_is_saved_before_evaluation(tmp_path, monkeypatch):
    # model/ is written before the evaluation, so a failing evaluation never loses the trained weights.
    import prefopt.rollout.evaluate

    def broken(self, policy):
        raise RuntimeError("evaluation failed")

    monkeypatch.setattr(prefopt.rollout.evaluate.Evaluator, "__call__", broken)
    cfg = compose(["trainer.max_steps=1", "trainer.progress=false", "trainer.examples_per_step=8",
                   "trainer.examples_per_device=8", "eval.num_prompts=2"])
    with pytest.raises(RuntimeError, match="evaluation failed"):
        run(cfg, str(tmp_path / "run"))
    assert os.path.exists(tmp_path / "run" / "model" / "model.safetensors")


# ---- SIGINT / SIGTERM ----------------------------------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_a_checkpoint_and_says_how_to_resume(tmp_path, sig):
    out = tmp_path / "run"
    # Slow steps so that the signal lands mid-run: each forward sleeps a little.
    pre = textwrap.dedent("""
        import time, prefopt.core.trainer as T
        _step = T.Trainer.train_step
        def slow(self):
            time.sleep(0.3)
            return _step(self)
        T.Trainer.train_step = slow
    """)
    code = pre + "\nimport sys\nfrom prefopt.cli.train import main\nsys.argv = ['prefopt-train', *sys.argv[1:]]\nmain()\n"
    p = subprocess.Popen([sys.executable, "-c", code, *SHORT, "trainer.max_steps=200", f"hydra.run.dir={out}"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=tmp_path)
    deadline = time.time() + 120
    while time.time() < deadline and not (os.path.exists(out / "metrics.jsonl") and steps(out)[-1:] >= [2]):
        time.sleep(0.2)
    p.send_signal(sig)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 128 + sig, err
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert f"interrupted by {signal.Signals(sig).name}" in lines[0] and "trainer.resume=auto" in lines[0], lines[0]
    ckpt = checkpoint.newest(str(out))
    assert ckpt and ckpt in lines[0]
    n = json.load(open(os.path.join(ckpt, "state.json")))["step"]
    assert steps(out)[-1] == n and 2 <= n < 200


def test_signal_outside_the_training_loop_is_one_line():
    from prefopt.run.signals import RunContext, interrupted_line

    e = Interrupted(signal.SIGINT)
    assert interrupted_line(e, "/tmp/x", RunContext()) == "interrupted by SIGINT before training started; saved: nothing"
    assert e.exit_code == 130


# ---- leaderboard results are readable by colleagues ----------------------------------------------

def test_leaderboard_result_files_take_the_umask_mode(tmp_path):
    from prefopt.leaderboard import store

    old = os.umask(0o022)
    try:
        path = store.write_result(str(tmp_path), {"config_hash": "abc", "status": "ok", "leaderboard": {}, "eval": {}})
    finally:
        os.umask(old)
    assert os.stat(path).st_mode & 0o777 == 0o644
