"""The objective registry: every registered objective satisfies its protocol, and conf/algo/NAME.yaml
composes to exactly the objective's Config() defaults."""

import dataclasses

import pytest
from omegaconf import OmegaConf

from conftest import compose
from prefopt.core.errors import UserError
from prefopt.objectives.registry import Objective, OnlineObjective, available, get_objective

NAMES = available()


@pytest.mark.parametrize("name", NAMES)
def test_objective_satisfies_its_protocol(name):
    Obj = get_objective(name)
    obj = Obj(Obj.Config())
    assert isinstance(obj, Objective), name
    # Online objectives receive each rollout through prepare (prefopt.rollout.source).
    assert isinstance(obj, OnlineObjective) == obj.needs.rollouts, name
    assert obj.cfg == Obj.Config() and obj.cfg.name == name == Obj.name


@pytest.mark.parametrize("name", NAMES)
def test_presets_mirror_their_yaml(name):
    y = OmegaConf.to_container(compose([f"algo={name}"]).algo)
    assert y == dataclasses.asdict(get_objective(name).Config()), name


def test_unknown_name_lists_the_registered_ones():
    with pytest.raises(UserError, match="unknown algo 'nope'; available: .*dapo.*grpo"):
        get_objective("nope")
