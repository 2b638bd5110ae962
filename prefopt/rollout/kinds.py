"""What the reward-source and judge registries share: calling a family's base config builds the
config of the kind it names.

``RewardConfig(kind="model", path=DIR)`` is a ``ModelRewardConfig``; keys that belong to another
kind of the same family are left out, so that one call (a test's parameter list, a stored job
spec) can describe any kind. A key no kind has stays an error, and a kind no one registered
builds the base config, which the family's check then refuses with the list of valid kinds.
"""

from __future__ import annotations

import dataclasses


def field_names(cls) -> set:
    return {f.name for f in dataclasses.fields(cls)}


class ConfigByKind(type):
    """Metaclass of a family's base config. The base names its registry in ``_kinds`` (a dict of
    kind name → registered class with a ``Config``) and its default kind in ``_default_kind``."""

    def __call__(cls, *args, **kw):
        if "_kinds" not in cls.__dict__ or args:  # a kind's own Config, or positional fields
            return super().__call__(*args, **kw)
        registered = cls._kinds.get(kw.get("kind", cls._default_kind))
        target = cls if registered is None else registered.Config
        own = field_names(target)
        family = set().union(*(field_names(k.Config) for k in cls._kinds.values()))
        return super(ConfigByKind, target).__call__(**{k: v for k, v in kw.items() if k in own or k not in family})
