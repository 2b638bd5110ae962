"""The run's config: conf/train.yaml (the packaged ``prefopt.conf``) composed with Hydra's compose
API and the same overrides as ``prefopt-train``, every mistake in them one :class:`UserError` line.

:func:`check_overrides` is what ``prefopt-train`` runs before Hydra sees its command line, and what
:func:`compose` runs before composing: an override that does not parse, an unknown group option
(``algo=bogus``) or an unknown key (``trainer.max_step=5``) is refused in one line that lists what
is accepted, instead of Hydra's multi-line report.
"""

from __future__ import annotations

import contextlib
from importlib.resources import files
from typing import Iterable, Sequence

from hydra import compose as _hydra_compose
from hydra import initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType
from hydra.errors import HydraException, OverrideParseException
from omegaconf import DictConfig

from prefopt.core.config import unknown_key_message
from prefopt.core.errors import UserError



def defaults_groups(config_name: str = "train") -> tuple:
    """The config groups a conf/ file's defaults list chooses from (train.yaml: algo, model, data, trainer,
    reward, env), read from the file, so that a group added there is a group here too."""
    import yaml

    text = (files("prefopt.conf") / f"{config_name}.yaml").read_text()
    return tuple(k for item in (yaml.safe_load(text) or {}).get("defaults", []) if isinstance(item, dict) for k in item)


GROUPS = defaults_groups("train")  # conf/train.yaml's config groups


def conf_options(group: str) -> list:
    """The options of a config group of conf/ (``algo`` → dpo, ipo, …)."""
    d = files("prefopt.conf") / group
    try:
        return sorted(p.name[:-5] for p in d.iterdir() if p.name.endswith(".yaml"))
    except FileNotFoundError:
        return []


def parse_overrides(args: Iterable[str]) -> list:
    """Hydra's parse of each ``key=value``; one that does not parse is one line."""
    parser = OverridesParser.create()
    out = []
    for a in args:
        try:
            out += parser.parse_overrides([a])
        except OverrideParseException as e:
            raise UserError(f"cannot parse the override '{a}' ({str(e).splitlines()[0]}); accepted: key=value "
                            "(quote values with spaces or brackets, e.g. 'key=\"a b\"')") from None
    return out


def group_choices(overrides: Sequence[Override], groups: Sequence[str] = GROUPS) -> dict:
    """{group: first chosen option}; an option that is not in conf/ is one line naming the available ones."""
    choices = {}
    for o in overrides:
        key = o.key_or_group
        if key in groups and o.type == OverrideType.CHANGE:
            options = conf_options(key)
            values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [str(o.value())]
            for v in values:
                if v and v not in options:
                    raise UserError(f"unknown {key} '{v}'; available: {', '.join(options)}")
            choices[key] = values[0]
    return choices


@contextlib.contextmanager
def conf_module():
    """Hydra's config search path on prefopt.conf (already there inside a Hydra app, e.g. a leaderboard job)."""
    if GlobalHydra.instance().is_initialized():
        yield
        return
    with initialize_config_module(config_module="prefopt.conf", version_base=None):
        yield


def check_keys_exist(overrides: Sequence[Override], choices: dict, config_name: str = "train",
                     groups: Sequence[str] = GROUPS) -> None:
    """An override of a key that is not in the composed config: name the section's valid keys in one
    line (Hydra's message suggests ``+key``, which the typed config then rejects too)."""
    overrides = [o for o in overrides if o.type == OverrideType.CHANGE and o.key_or_group not in groups
                 and not o.key_or_group.startswith("hydra") and "@" not in o.key_or_group and o.package is None]
    if not overrides:
        return
    try:
        with conf_module():
            cfg = _hydra_compose(config_name, overrides=[f"{k}={v}" for k, v in choices.items()])
    except HydraException:
        return  # Hydra's own message, from the real composition
    for o in overrides:
        node = cfg
        parts = o.key_or_group.split(".")
        for i, name in enumerate(parts):
            if not isinstance(node, DictConfig):
                break  # into a value that is not a section (e.g. null): Hydra says what is wrong
            if name not in node.keys():  # `in node` is False for a ??? (mandatory) value, such as label.yaml's out
                raise UserError(unknown_key_message(".".join(parts[: i + 1]), [k for k in node.keys() if k != "hydra"]))
            child = node._get_node(name)  # the node itself: reading the value would resolve interpolations
            node = child if isinstance(child, DictConfig) and not child._is_none() else None


def check_overrides(args: Iterable[str]) -> list:
    """The one-line checks of ``prefopt-train``'s overrides; returns Hydra's parsed overrides."""
    overrides = parse_overrides(args)
    check_keys_exist(overrides, group_choices(overrides))
    return overrides


def compose(overrides: Iterable[str] = ()) -> DictConfig:
    """conf/train.yaml with ``overrides`` (``["algo=ipo", "trainer.max_steps=20"]``), exactly as
    ``prefopt-train`` composes it; a mistake in them is one :class:`UserError` line. A sweep
    (``a=1,2``) is one run per value: compose each."""
    overrides = list(overrides)
    for o in check_overrides(overrides):
        if o.is_sweep_override():
            raise UserError(f"'{o.input_line}' is a sweep; a run takes single values (compose one config per value, "
                            "or use prefopt-train -m)")
    try:
        with conf_module():
            return _hydra_compose("train", overrides=overrides)
    except HydraException as e:
        raise UserError(str(e).strip().splitlines()[0]) from None
