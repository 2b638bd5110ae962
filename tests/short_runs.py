"""prefopt-train runs for tests: a short run in process, the command line in a subprocess (as
``python -m prefopt.cli.train``, or through main() after a patch that runs first), and the check that
a refused run printed one line."""

import os
import subprocess
import sys

from conftest import FAST, compose

# Training only: a metrics row every step, no final evaluation, no saved model, a constant learning
# rate from the first step.
TRAIN_ONLY = ["trainer.log_every_steps=1", "trainer.eval_at_end=false", "trainer.save_model=false",
              "trainer.warmup_steps=0", "trainer.lr_schedule=constant"]
# A short DPO run on the testbed: 4 steps of 8 pairs, no final evaluation.
SHORT = [*FAST, "trainer.max_steps=4", "trainer.log_every_steps=1", "trainer.eval_at_end=false",
         "trainer.examples_per_step=8", "trainer.examples_per_device=8", "trainer.warmup_steps=0"]

ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}


def run_in_process(out, *overrides):
    """The SHORT run (plus ``overrides``) into ``out``; returns its summary."""
    from prefopt.run import train as run

    return run(compose([*SHORT, *overrides]), str(out))


def cli(*args, cwd=None, timeout=600):
    """``python -m prefopt.cli.train ARGS`` in a subprocess."""
    return subprocess.run([sys.executable, "-m", "prefopt.cli.train", *args], capture_output=True, text=True,
                          cwd=cwd, env=ENV, timeout=timeout)


def cli_main(*args, pre="", timeout=300, **kw):
    """prefopt-train's main() in a one-thread subprocess; ``pre`` is Python run first (e.g. a patch
    that kills the process)."""
    code = pre + "\nimport sys\nfrom prefopt.cli.train import main\nsys.argv = ['prefopt-train', *sys.argv[1:]]\nmain()\n"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env={**ENV, "OMP_NUM_THREADS": "1"}, timeout=timeout, **kw)


def one_line_error(p, *needles):
    """A refused run: a non-zero exit and one line on stderr, no traceback, naming every needle."""
    assert p.returncode != 0
    err = [l for l in p.stderr.strip().splitlines() if l.strip()]
    assert len(err) == 1, p.stderr
    assert "Traceback" not in p.stderr
    for n in needles:
        assert n in err[0], err[0]
    return err[0]


def refused(capsys, main, prog: str, args, *needles) -> str:
    """``main(args)`` exits 2 with one stderr line ``PROG: error: ...`` containing every needle; returns it."""
    import pytest

    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith(f"{prog}: error:"), err
    for n in needles:
        assert n in err[0], err[0]
    return err[0]
