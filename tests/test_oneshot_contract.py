"""The one-shot contract (nasplat.oneshot.contract): a space is checked against what a strategy needs once, when
the two are paired, with a message that says what is missing and what would search; every shipped one-shot
space and supernet has the members its protocol names."""
from __future__ import annotations

import pytest
import torch

from nasplat.errors import UserError
from nasplat.oneshot import CellSpace, OneShotSpace, PathSupernet, Supernet
from nasplat.oneshot.contract import members, missing
from nasplat.registry import SPACES, STRATEGIES

TINY = {"binary-cells": {"channels": 4, "layers": 3}, "abandit-cells": {"channels": 4, "layers": 3},
        "crowd": {"channels": 8, "depth": 3},
        "hitdet": {"stem": 8, "stages": "8:1,16:1,24:1,32:1", "neck": 16, "head_layers": 1, "resolution": 256}}
CELL_SPACES = ("binary-cells", "abandit-cells", "crowd")


class Plain:
    """A space with no supernet."""

    name = "plain"


class SupernetOnly(Plain):
    """A space with a supernet but no derivation from op weights."""

    name = "supernet-only"

    def supernet(self, **options):
        raise AssertionError("the check never builds one")


def test_a_space_without_a_supernet_is_refused_naming_the_protocol_and_what_would_search():
    with pytest.raises(UserError) as caught:
        STRATEGIES.get("darts").check_space(Plain())
    message = str(caught.value)
    assert message.startswith("space 'plain' has no supernet(): one-shot strategy 'darts' needs a space implementing "
                              "nasplat.oneshot.OneShotSpace (supernet); search ")
    assert all(space in message for space in ("abandit-cells", "binary-cells", "crowd", "hitdet"))
    assert "tinynet" not in message.split("; ")[1].split(" with it")[0]
    assert "use a multi-trial strategy on plain (" in message and all(s in message for s in ("random", "evolution"))
    assert "\n" not in message


def test_a_space_that_cannot_derive_is_refused_by_the_path_sampling_strategies_only():
    for name in ("bnas", "abandit", "cp-nas"):
        with pytest.raises(UserError, match=rf"space 'supernet-only' has no derive\(\), op_costs\(\): one-shot "
                                            rf"strategy '{name}' needs a space implementing nasplat.oneshot.CellSpace "
                                            r"\(supernet, derive, op_costs\)") as caught:
            STRATEGIES.get(name).check_space(SupernetOnly())
        assert "use darts, pc-darts or a multi-trial strategy on supernet-only" in str(caught.value)
    STRATEGIES.get("darts").check_space(SupernetOnly())
    STRATEGIES.get("pc-darts").check_space(SupernetOnly())


def test_the_hitdet_strategy_names_its_own_protocol_and_the_space_that_implements_it():
    with pytest.raises(UserError, match=r"needs a space implementing nasplat.strategies.hitdet.DetectorSpace "
                                        r"\(supernet, component_ops, component_slots, .*\); search hitdet with it"):
        STRATEGIES.get("hitdet").check_space(SPACES.create("binary-cells", **TINY["binary-cells"]))


@pytest.mark.parametrize("name", [*CELL_SPACES, "hitdet"])
def test_every_shipped_one_shot_space_passes_the_check_of_the_strategies_it_serves(name):
    space = SPACES.create(name, **TINY[name])
    takes = ("darts", "pc-darts", "hitdet") if name == "hitdet" else ("darts", "pc-darts", "bnas", "abandit")
    for strategy in takes:
        STRATEGIES.get(strategy).check_space(space)
    assert isinstance(space, OneShotSpace) and not missing(space, OneShotSpace)
    assert isinstance(space, CellSpace) == (name != "hitdet")


@pytest.mark.parametrize("name", [*CELL_SPACES, "hitdet"])
def test_every_shipped_supernet_has_the_members_of_its_protocol(name):
    torch.manual_seed(0)
    space = SPACES.create(name, **TINY[name])
    net = space.supernet()
    assert isinstance(net, Supernet) and missing(net, Supernet) == []
    if name in CELL_SPACES:  # hitdet's slots choose among different ops: no single path, no shared `ops`
        assert missing(net, PathSupernet) == []
        assert set(net.alphas) == set(net.op_weights()) and all(a.shape[1] == len(net.ops) for a in net.alphas.values())


def test_a_protocol_lists_the_members_of_the_protocols_it_extends_first():
    assert members(Supernet) == ["forward", "weight_parameters", "arch_parameters", "op_weights", "expected_cost",
                                 "derive"]
    assert members(PathSupernet) == [*members(Supernet), "alphas", "ops"]
    assert members(CellSpace) == ["supernet", "derive", "op_costs"]
    assert missing(object(), PathSupernet)[-3:] == ["derive()", "alphas", "ops"]
