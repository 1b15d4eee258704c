"""Constraints: upper bounds on measured costs, checked before any training."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .units import format_count, parse_count

# metric -> the label users see (the papers' "FLOPs" are multiply-accumulates: MACs)
METRICS: dict[str, str] = {
    "macs": "MACs",
    "params": "params",
}


@dataclass(frozen=True)
class Constraint:
    """`metric <= limit`: a hard upper bound; an architecture above it is never trained."""

    metric: str
    limit: float

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"unknown constraint metric {self.metric!r}; known: {', '.join(METRICS)}")
        if not self.limit > 0:
            raise ValueError(f"the {METRICS[self.metric]} limit must be positive, got {self.limit}")

    def holds(self, costs: Mapping[str, float]) -> bool:
        return costs[self.metric] <= self.limit

    def __str__(self) -> str:
        return f"{METRICS[self.metric]} <= {format_count(self.limit)}"

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "limit": self.limit}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Constraint:
        return cls(data["metric"], float(data["limit"]))

    @classmethod
    def parse(cls, metric: str, text: str | float) -> Constraint:
        return cls(metric, parse_count(text, what=f"--{'flops' if metric == 'macs' else metric} budget"))


def violations(constraints: Sequence[Constraint], costs: Mapping[str, float]) -> list[str]:
    """Readable descriptions of the constraints that `costs` break (empty when feasible)."""
    return [f"{METRICS[c.metric]} {format_count(costs[c.metric])} > {format_count(c.limit)}"
            for c in constraints if not c.holds(costs)]


def limit_of(constraints: Sequence[Constraint], metric: str) -> float | None:
    """The tightest limit on `metric`, or None."""
    limits = [c.limit for c in constraints if c.metric == metric]
    return min(limits) if limits else None
