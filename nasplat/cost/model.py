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
    """MACs and params counted by fvcore, plus latency (ms) where the search asks for it: predicted by the
    plan's lookup table, or measured when it has none. Spaces that derive parameters from a budget (TinyNet's
    width) solve against it, and the runner checks constraints with it before any training."""

    latency: LatencyPlan | None = None

    def __call__(self, space: SearchSpace, arch: Arch) -> dict[str, float]:
        costs = measure(space, arch)
        if self.latency is not None:
            costs["latency"] = self.latency.estimate(space, arch)
        return costs

    def observe(self, metrics: Mapping[str, float]) -> None:
        """Learns from a finished trial's metrics (the latency plan corrects its table by them)."""
        if self.latency is not None:
            self.latency.observe(metrics)

    @property
    def metrics(self) -> frozenset[str]:
        return frozenset({"macs", "params"} | ({"latency"} if self.latency is not None else set()))
