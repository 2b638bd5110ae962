"""prefopt.core.registry.Registry, the one registry type behind objectives, reward sources, judges and
board sections: what registering checks, and the one-line error that lists the valid names."""

from dataclasses import dataclass

import pytest

from prefopt.core.errors import UserError
from prefopt.core.registry import Registry


class Base:
    pass


@dataclass
class BaseConfig:
    x: int = 0


def test_register_lookup_and_the_unknown_name_line():
    r = Registry("widget", base=Base, config_base=BaseConfig, name_attr="kind", sort=False, key="widget.kind")

    @r.register("zeta")
    class Z(Base):
        @dataclass
        class Config(BaseConfig):
            y: int = 1

    @r.register("alpha")
    class A(Base):
        Config = BaseConfig

    assert r.lookup("zeta") is Z and Z.kind == "zeta" and r.available() == ["zeta", "alpha"]
    with pytest.raises(UserError, match=r"^widget.kind='nope' is not known; accepted: zeta, alpha$"):
        r.lookup("nope")
    with pytest.raises(UserError, match=r"^w2='nope' is not known"):
        r.lookup("nope", "w2")
    with pytest.raises(ValueError, match="registered twice"):
        r.register("zeta")(A)
    with pytest.raises(TypeError, match="must subclass Base"):
        r.register("other")(object)

    class NoDataclass(Base):
        class Config(BaseConfig):
            pass
    NoDataclass.Config = int
    with pytest.raises(TypeError, match="Config must be a dataclass deriving from BaseConfig"):
        r.register("bad")(NoDataclass)
    assert "bad" not in r and "other" not in r


def test_instances_sorting_own_checks_and_message():
    def check(name, cls):
        if not hasattr(cls, "hook"):
            raise TypeError(f"{name} lacks hook")

    r = Registry("section", base=Base, instances=True, check=check, unknown="unknown section '{name}'; available: {names}")

    @r.register("b")
    class B(Base):
        hook = 1

    @r.register("a")
    class A(Base):
        hook = 2

    assert isinstance(r.lookup("a"), A) and r.available() == ["a", "b"]
    with pytest.raises(TypeError, match="lacks hook"):
        r.register("c")(type("C", (Base,), {}))
    with pytest.raises(UserError, match=r"^unknown section 'z'; available: a, b$"):
        r.lookup("z")
