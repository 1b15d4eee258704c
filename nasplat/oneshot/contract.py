"""The one-shot contract: what a one-shot strategy asks of a search space and of the supernet the space builds.

Like Optuna's BaseSampler, each protocol has few members, each saying what it returns and when it is called.
A space implements one by having its members (there is no base class to inherit). Two levels:

- every one-shot strategy (darts, pc-darts, hitdet) trains the `Supernet` of a `OneShotSpace`;
- the strategies that sample single paths and abandon ops (bnas, abandit, cp-nas) need a `CellSpace`: its
  supernet a `PathSupernet`, and a `derive` that turns per-edge op weights into the space's parameters.

A strategy names the protocol it needs (`OneShotStrategy.space_contract`); `check_space` checks a space against
it once, when the strategy is paired with the space, before any run starts, and names what is missing.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ..errors import UserError

if TYPE_CHECKING:
    import torch
    from torch import nn


@runtime_checkable
class Supernet(Protocol):
    """A weight-sharing network whose architecture choices are relaxed into trainable parameters."""

    def forward(self, x: torch.Tensor) -> Any:
        """The whole relaxed network on a batch, every op weighted: what the task's loss is taken of, at every
        training step (through `__call__`, as for any nn.Module)."""

    def weight_parameters(self) -> list[nn.Parameter]:
        """The network's own weights, none of `arch_parameters()`: what the weight optimizer steps. Asked once,
        when the strategy builds its optimizers."""

    def arch_parameters(self) -> list[nn.Parameter]:
        """The architecture parameters the architecture step trains (alphas, and edge weights where they are
        trained). Asked once, when the strategy builds its optimizers."""

    def op_weights(self) -> Mapping[str, torch.Tensor]:
        """Per group (a cell type, a link, a slot), each op's current weight (a softmax of the alphas, 0 for an
        op no longer allowed): journaled after every epoch."""

    def expected_cost(self) -> torch.Tensor:
        """The MACs of the network the current weights would derive, in expectation and differentiable in the
        architecture parameters: the budget's penalty, at every architecture step under a MAC limit."""

    def derive(self, *, max_skip: int | None = 2, limit: float | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        """The space's parameters (for `space.complete`) that the current weights choose, cheapened until they
        fit a MAC `limit` where one is given, and notes on how (for the log). Called after every epoch and once
        at the end; `max_skip` caps the skip connections of a cell space's normal cells."""


@runtime_checkable
class PathSupernet(Supernet, Protocol):
    """A cell supernet whose single paths (one op per edge) can be trained and evaluated alone."""

    alphas: Mapping[str, torch.Tensor]  # per group, edges x ops: which edges a path chooses an op for
    ops: Sequence[str]  # the op names, in the order of the alphas' columns and of a path's indices

    def forward(self, x: torch.Tensor, path: Mapping[str, Sequence[int]] | None = None) -> Any:
        """The network on a batch; with a `path` (per group, one op index per edge) only those ops, unweighted:
        at every training step and evaluation of a sampled path."""


class CostTable(Protocol):
    """A space's MACs per op and edge."""

    def of(self, params: Mapping[str, Any]) -> float:
        """The MACs of the standalone network of the space's parameters `params` (genotypes per group)."""


@runtime_checkable
class OneShotSpace(Protocol):
    """A search space with a weight-sharing supernet: what every one-shot strategy searches."""

    def supernet(self, **options: Any) -> Supernet:
        """A fresh supernet, built when the search starts (CP-NAS builds two: its Child and, with
        binarize="none", its Parent). `options` are the strategy's (partial_channels, edge_normalization);
        a space takes those that apply to it."""


@runtime_checkable
class CellSpace(OneShotSpace, Protocol):
    """A cell space: single paths of its supernet can be sampled, and its cells derived from op weights."""

    def supernet(self, **options: Any) -> PathSupernet:
        """As `OneShotSpace.supernet`, its supernet a `PathSupernet`."""

    def derive(self, op_weights: Mapping[str, torch.Tensor], edge_weights: Mapping[str, torch.Tensor] | None = None,
               *, max_skip: int | None = 2, limit: float | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        """The space's parameters from per-group op weights (edges x ops, 0 for an abandoned op) and, with edge
        normalisation, edge weights: each node keeps its strongest edges, a normal cell at most `max_skip` skip
        connections, ops cheapened until a MAC `limit` is met. Returns them and notes on how (for the log).
        Called when a search ends, and by the supernet's own `derive`."""

    def op_costs(self) -> CostTable:
        """The MACs of every op on every edge, which `derive` fits a limit with and the supernet's expected
        cost sums: measured on first use (seconds), then cached."""


def members(protocol: type) -> list[str]:
    """The members a protocol asks for, those of the protocols it extends first."""
    names: dict[str, None] = {}
    for cls in reversed(protocol.__mro__):
        if cls is not Protocol and getattr(cls, "_is_protocol", False):
            names.update(dict.fromkeys(n for n in (*vars(cls).get("__annotations__", {}), *vars(cls))
                                       if not n.startswith("_")))
    return list(names)


def missing(thing: Any, protocol: type) -> list[str]:
    """The members of `protocol` that `thing` (an object, or a class for its methods) lacks, methods as
    `name()`. Presence only: what a member takes and returns is the protocol's documentation."""
    return [f"{name}()" if callable(getattr(protocol, name, None)) else name
            for name in members(protocol) if not hasattr(thing, name)]


def check_space(space: Any, *, strategy: str, needs: type) -> None:
    """Raises UserError when `space` lacks a member of `needs`, the protocol one-shot `strategy` searches
    through, naming what is missing and what would search it; called once, when the two are paired."""
    absent = missing(space, needs)
    if absent:
        where = f"nasplat.oneshot.{needs.__name__}" if needs.__module__ == __name__ else \
            f"{needs.__module__}.{needs.__name__}"
        raise UserError(f"space {space.name!r} has no {', '.join(absent)}: one-shot strategy {strategy!r} needs a "
                        f"space implementing {where} ({', '.join(members(needs))}); {_alternatives(space, needs)}")


def _alternatives(space: Any, needs: type) -> str:
    """What would search: the spaces that implement `needs`, and the strategies that take `space`."""
    from ..registry import SPACES, STRATEGIES

    spaces = [name for name in SPACES.names() if not missing(SPACES.get(name), needs)]
    fitting, multi = [], []
    for name in STRATEGIES.names():
        cls = STRATEGIES.get(name)
        if not cls.one_shot:
            multi.append(name)
        elif not missing(space, cls.space_contract):  # so its check_space cannot come back here
            try:
                cls.check_space(space)
                fitting.append(name)
            except UserError:
                pass
    on_space = f"{', '.join(fitting)} or a multi-trial strategy" if fitting else "a multi-trial strategy"
    return (f"search {' or '.join(spaces) or 'a space implementing it'} with it, or use {on_space} on "
            f"{space.name} ({', '.join(multi)})")


__all__ = ["CellSpace", "CostTable", "OneShotSpace", "PathSupernet", "Supernet", "check_space", "members", "missing"]
