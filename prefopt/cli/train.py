"""The Hydra app behind ``prefopt-train`` (same as ``python -m prefopt.train``).

    prefopt-train algo=dpo algo.beta=0.05 trainer.max_steps=200 seed=1
    prefopt-train -m algo.beta=0.05,0.1,0.5 seed=0,1
    prefopt-train --cfg job

Before Hydra sees the command line, :func:`precheck_argv` refuses in one line what Hydra would
report in many (or only after writing into the run directory). Each job then runs
:func:`prefopt.cli.stages.run`; a user error ends it with one line and exit status 2.
"""

from __future__ import annotations

import datetime
import errno
import os
import sys
from importlib.resources import files

import hydra
import psutil
from hydra import compose, initialize_config_module
from hydra._internal.utils import get_args_parser  # Hydra's own command line, so its flags are skipped alike
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import OverrideType
from hydra.errors import HydraException, OverrideParseException

from omegaconf import DictConfig, OmegaConf

from prefopt.cli.signals import RunContext, stop_on_signals
from prefopt.core.config import unknown_key_message
from prefopt.core.errors import Interrupted, UserError

GROUPS = ("algo", "model", "data", "trainer", "reward")


def _conf_options(group: str) -> list:
    d = files("prefopt.conf") / group
    try:
        return sorted(p.name[:-5] for p in d.iterdir() if p.name.endswith(".yaml"))
    except FileNotFoundError:
        return []


def precheck_argv(argv: list) -> None:
    """Fail fast, in one line, on what Hydra would report in many (or only after it has written into
    the run directory): an override it cannot parse, unknown group options, an unknown key, and a run
    or sweep directory that already holds a run."""
    try:
        ns = get_args_parser().parse_args(argv)
    except SystemExit:
        return  # argparse has printed its usage line; Hydra will refuse the same way
    if ns.config_name or ns.config_path or ns.config_dir or ns.experimental_rerun:
        return  # another primary config: prefopt's conf/ tree says nothing about it
    args, multirun = ns.overrides, ns.multirun
    parser = OverridesParser.create()
    overrides = []
    for a in args:
        try:
            overrides += parser.parse_overrides([a])
        except OverrideParseException as e:
            raise UserError(f"cannot parse the override '{a}' ({str(e).splitlines()[0]}); accepted: key=value "
                            "(quote values with spaces or brackets, e.g. 'key=\"a b\"')") from None
    resume = any(o.key_or_group == "trainer.resume" for o in overrides)
    choices = {}
    for o in overrides:
        key = o.key_or_group
        if key in GROUPS and o.type == OverrideType.CHANGE:
            options = _conf_options(key)
            values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [str(o.value())]
            for v in values:
                if v and v not in options:
                    raise UserError(f"unknown {key} '{v}'; available: {', '.join(options)}")
            choices[key] = values[0]
        for marker_key, markers, what in (("hydra.run.dir", ("metrics.jsonl", "summary.json", "checkpoints"), "run"),
                                          ("hydra.sweep.dir", ("multirun.yaml",), "sweep")):
            if key != marker_key or resume or (what == "sweep") != multirun or o.is_sweep_override():
                continue
            value = str(o.value())
            for marker in markers:
                if os.path.exists(os.path.join(value, marker)):
                    raise UserError(
                        f"{key}={value} already holds a {what} ({marker}); nothing was changed. "
                        f"Accepted: a new directory, or trainer.resume=auto to continue it"
                    )
    _check_keys_exist([o for o in overrides if o.type == OverrideType.CHANGE and o.key_or_group not in GROUPS
                       and not o.key_or_group.startswith("hydra") and "@" not in o.key_or_group and o.package is None],
                      choices)


def _check_keys_exist(overrides: list, choices: dict) -> None:
    """An override of a key that is not in the composed config: name the section's valid keys in one
    line (Hydra's message suggests ``+key``, which the typed config then rejects too)."""
    if not overrides:
        return
    try:
        with initialize_config_module(config_module="prefopt.conf", version_base=None):
            cfg = compose("train", overrides=[f"{k}={v}" for k, v in choices.items()])
    except HydraException:
        return  # Hydra's own message, from the real composition
    for o in overrides:
        node = cfg
        parts = o.key_or_group.split(".")
        for i, name in enumerate(parts):
            if not isinstance(node, DictConfig):
                break  # into a value that is not a section (e.g. null): Hydra says what is wrong
            if name not in node:
                raise UserError(unknown_key_message(".".join(parts[: i + 1]), list(node.keys())))
            child = node._get_node(name)  # the node itself: reading the value would resolve interpolations
            node = child if isinstance(child, DictConfig) and not child._is_none() else None
































































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

        def write_hydra_dir():
            # What Hydra writes into .hydra/ (hydra.output_subdir is null so that it does not write
            # them before prefopt's checks), plus the resolved config (Hydra's copy keeps interpolations).
            d = os.path.join(out_dir, ".hydra")
            os.makedirs(d, exist_ok=True)
            for name, node, resolve in (("config.yaml", cfg, False), ("resolved.yaml", cfg, True),
                                        ("hydra.yaml", OmegaConf.create({"hydra": hc}), False),
                                        ("overrides.yaml", hc.overrides.task, False)):
                with open(os.path.join(d, name), "w", encoding="utf-8") as f:
                    f.write(OmegaConf.to_yaml(node, resolve=resolve))

        # The stages import torch and transformers (seconds): a command line refused above never needs them.
        from prefopt.cli.stages import run

        try:
            return run(cfg, out_dir, on_start=write_hydra_dir)
        except UserError as e:
            if int(os.environ.get("RANK", "0")) == 0:  # every process finds the same mistake: one line, not one per rank
                print(f"prefopt-train: error: {e}", file=sys.stderr)
            if not os.path.isdir(os.path.join(out_dir, ".hydra")):  # refused before it started
                _remove_if_untouched(out_dir)
            sys.exit(2)
        except Interrupted as e:
            print(f"prefopt-train: {getattr(e, 'line', None) or f'interrupted by {e.signame}'}", file=sys.stderr)
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
                path, data = record
                with open(path + ".tmp", "wb") as f:
                    f.write(data)
                os.replace(path + ".tmp", path)


if __name__ == "__main__":
    main()
