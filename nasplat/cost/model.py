"""The costs a search knows of an architecture before training it."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .flops import measure

if TYPE_CHECKING:
    from ..arch import Arch
    from ..space import SearchSpace
    from .latency import LatencyPlan


@dataclass(frozen=True)
class CostModel:
    """MACs and params counted by fvcore, plus latency (ms) where the search asks for it: measured, predicted
    by the plan's lookup table, or read from a device's table or a fitted predictor. Spaces that derive
    parameters from a budget (TinyNet's width) solve against it, and the runner checks constraints with it
    before any training. `counts=False` leaves MACs and params out, for searches answered from a table that
    need neither: counting builds the model, which takes longer than the whole lookup."""

    latency: LatencyPlan | None = None
    counts: bool = True

    def __call__(self, space: SearchSpace, arch: Arch) -> dict[str, float]:
        costs = measure(space, arch) if self.counts else {}
        if self.latency is not None:
            costs["latency"] = self.latency.estimate(space, arch)
        return costs

    def observe(self, metrics: Mapping[str, float]) -> None:
        """Learns from a finished trial's metrics (the latency plan corrects its table by them)."""
        if self.latency is not None:
            self.latency.observe(metrics)

    @property
    def free(self) -> bool:
        """Whether the costs take no device measurement (counted MACs, a table, a predictor): a strategy may
        check constraints against them before it proposes an architecture."""
        return self.latency is None or self.latency.free

    @property
    def metrics(self) -> frozenset[str]:
        return frozenset(({"macs", "params"} if self.counts else set())
                         | ({"latency"} if self.latency is not None else set()))
