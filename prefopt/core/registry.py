"""One registry type for every kind of thing prefopt is extended with: objectives, reward sources,
judges, board sections. A kind is one class, in a file of its own, that registers itself by name:

    OBJECTIVES = Registry("objective", base=Objective, unknown="unknown algo '{name}'; available: {names}")

    @OBJECTIVES.register("dpo")
    class DPO(Objective): ...

Registering checks what every kind must be (a subclass of the family's base; a dataclass ``Config``
deriving from the family's base config, where the family has one), sets the class's name attribute,
and refuses a name twice. Looking up a name nobody registered is one :class:`UserError` line that
lists the valid names. A registry is a dict (name → class, or → instance for a family of singletons),
so a test can add and remove kinds like entries.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

from prefopt.core.errors import UserError


class Registry(dict):
    def __init__(self, what: str, base: type, *, config_base: Optional[type] = None, name_attr: str = "name",
                 instances: bool = False, sort: bool = True, key: str = "",
                 unknown: str = "{key}='{name}' is not known; accepted: {names}",
                 check: Optional[Callable[[str, type], None]] = None):
        """``what``: the family's name in messages; ``name_attr``: the class attribute the name is set
        on; ``instances``: register one instance of each class; ``sort``: list names sorted (else in
        registration order, the built-in kinds first); ``key``: the config key errors name by default;
        ``unknown``: the message for an unknown name (fields ``key``, ``name``, ``names``); ``check``:
        the family's own checks of a class being registered (raise TypeError)."""
        super().__init__()
        self.what, self.base, self.config_base, self.name_attr = what, base, config_base, name_attr
        self.instances, self.sort, self.key, self.unknown, self.check = instances, sort, key, unknown, check

    def register(self, name: str):
        """Class decorator: ``@REGISTRY.register("name")``."""

        def wrap(cls):
            if name in self:
                raise ValueError(f"{self.what} {name!r} registered twice")
            if not (isinstance(cls, type) and issubclass(cls, self.base)):
                raise TypeError(f"{self.what} {name!r} must subclass {self.base.__qualname__} ({self.base.__module__})")
            if self.config_base is not None and not (
                    dataclasses.is_dataclass(cls.Config) and issubclass(cls.Config, self.config_base)):
                raise TypeError(f"{self.what} {name!r}: Config must be a dataclass deriving from "
                                f"{self.config_base.__qualname__}")
            if self.check is not None:
                self.check(name, cls)
            setattr(cls, self.name_attr, name)
            self[name] = cls() if self.instances else cls
            return cls

        return wrap

    def available(self) -> list[str]:
        return sorted(self) if self.sort else list(self)

    def lookup(self, name: str, key: Optional[str] = None):
        """The class (or instance) registered as ``name``; an unknown name is one line listing the valid ones."""
        try:
            return self[name]
        except KeyError:
            raise UserError(self.unknown.format(key=key or self.key, name=name,
                                                names=", ".join(self.available()))) from None
