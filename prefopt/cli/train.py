"""The Hydra app behind ``prefopt-train`` (same as ``python -m prefopt.train``).

    prefopt-train algo=dpo algo.beta=0.05 trainer.max_steps=200 seed=1
    prefopt-train -m algo.beta=0.05,0.1,0.5 seed=0,1
    prefopt-train --cfg job

Before Hydra sees the command line, :func:`precheck_argv` refuses in one line what Hydra would
report in many (or only after writing into the run directory). Each job then is one
:class:`prefopt.run.Run` (the library's run, with Hydra's run directory and job config); a user
error ends it with one line and exit status 2.
"""

from __future__ import annotations

import datetime
import errno
import os
import sys

import hydra
import psutil
from hydra._internal.utils import get_args_parser  # Hydra's own command line, so its flags are skipped alike
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from prefopt.core.errors import Interrupted, UserError
from prefopt.core.files import write_bytes
from prefopt.run.api import Run
from prefopt.run.config import check_keys_exist, group_choices, parse_overrides
from prefopt.run.signals import RunContext, stop_on_signals


def precheck_argv(argv: list) -> None:
    """Fail fast, in one line, on what Hydra would report in many (or only after it has written into
    the run directory): an override it cannot parse, unknown group options, an unknown key
    (:func:`prefopt.run.config.check_overrides`), and a run or sweep directory that already holds a run."""
    try:
        ns = get_args_parser().parse_args(argv)
    except SystemExit:
        return  # argparse has printed its usage line; Hydra will refuse the same way
    if ns.config_name or ns.config_path or ns.config_dir or ns.experimental_rerun:
        return  # another primary config: prefopt's conf/ tree says nothing about it
    multirun = ns.multirun
    overrides = parse_overrides(ns.overrides)
    resume = any(o.key_or_group == "trainer.resume" for o in overrides)
    choices = group_choices(overrides)
    for o in overrides:
        for marker_key, markers, what in (("hydra.run.dir", ("metrics.jsonl", "summary.json", "checkpoints"), "run"),
                                          ("hydra.sweep.dir", ("multirun.yaml",), "sweep")):
            if o.key_or_group != marker_key or resume or (what == "sweep") != multirun or o.is_sweep_override():
                continue
            value = str(o.value())
            for marker in markers:
                if os.path.exists(os.path.join(value, marker)):
                    raise UserError(
                        f"{marker_key}={value} already holds a {what} ({marker}); nothing was changed. "
                        f"Accepted: a new directory, or trainer.resume=auto to continue it"
                    )
    check_keys_exist(overrides, choices)


def run_stamp() -> str:
    """The run directory's time stamp. Processes started together by torchrun / accelerate launch
    (WORLD_SIZE > 1) share their launcher, so they take its start time and agree on one directory;
    a single process uses the current time to the microsecond."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        parent = psutil.Process(os.getppid())
        t = datetime.datetime.fromtimestamp(parent.create_time())
        return t.strftime("%H-%M-%S-") + f"{t.microsecond:06d}-p{parent.pid}"
    return datetime.datetime.now().strftime("%H-%M-%S-%f")


def _hydra_main():
    if not OmegaConf.has_resolver("prefopt_stamp"):
        OmegaConf.register_new_resolver("prefopt_stamp", run_stamp, use_cache=True)

    @hydra.main(config_path="pkg://prefopt.conf", config_name="train", version_base=None)
    def app(cfg: DictConfig):
        hc = HydraConfig.get()
        out_dir = hc.runtime.output_dir
        # The run writes .hydra/ once every check has passed (hydra.output_subdir is null so that Hydra
        # does not write it before): what Hydra would write, plus the resolved config.
        run = Run(hc.overrides.task, cfg=cfg, out_dir=out_dir, hydra=hc)
        try:
            return run.train().summary
        except UserError as e:
            if int(os.environ.get("RANK", "0")) == 0:  # every process finds the same mistake: one line, not one per rank
                print(f"prefopt-train: error: {e}", file=sys.stderr)
            if not os.path.isdir(os.path.join(out_dir, ".hydra")):  # refused before it started
                _remove_if_untouched(out_dir)
            sys.exit(2)
        except Interrupted as e:
            print(f"prefopt-train: {e.line}", file=sys.stderr)
            sys.exit(e.exit_code)
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            print(f"prefopt-train: error: no space left on device writing {e.filename or out_dir}; what was complete "
                  "before is intact. Free some space, then resume with trainer.resume=auto", file=sys.stderr)
            sys.exit(1)

    app()


def _remove_if_untouched(out_dir: str) -> None:
    """A refused run leaves no trace: Hydra made its directory and an empty job log before prefopt
    could check anything. Only a directory that holds nothing but empty logs goes."""
    try:
        names = os.listdir(out_dir)
        if any(not n.endswith(".log") or os.path.getsize(os.path.join(out_dir, n)) for n in names):
            return
        for n in names:
            os.remove(os.path.join(out_dir, n))
        # Not its (date) parent: a run starting beside it may have just made it and be about to use it.
        os.rmdir(out_dir)
    except OSError:
        pass


def _multirun_record(argv: list):
    """(path, bytes) of the multirun.yaml a resumed sweep would overwrite, or None. Hydra rewrites it
    before any job runs; the sweep it describes is the one whose jobs are continued (resume refuses a
    changed config), so the original record is put back afterwards."""
    if not any(a in ("-m", "--multirun") for a in argv):
        return None
    for a in argv:
        if a.startswith("hydra.sweep.dir="):
            p = os.path.join(a.split("=", 1)[1], "multirun.yaml")
            if os.path.isfile(p):
                with open(p, "rb") as f:
                    return p, f.read()
    return None


def main():
    argv = sys.argv[1:]
    record = None
    # Until run() takes over the signals (and after it), Ctrl-C is one line too.
    with stop_on_signals(RunContext()):
        try:
            try:
                precheck_argv(argv)
            except UserError as e:
                print(f"prefopt-train: error: {e}", file=sys.stderr)
                sys.exit(2)
            record = _multirun_record(argv)
            _hydra_main()
        except Interrupted as e:
            print(f"prefopt-train: interrupted by {e.signame}", file=sys.stderr)
            sys.exit(e.exit_code)
        finally:
            if record is not None:
                write_bytes(*record)


if __name__ == "__main__":
    main()
