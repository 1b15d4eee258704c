"""Constraints: upper bounds on measured costs, checked before any training."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import UserError
from .units import format_count, format_ms, parse_count, parse_time

# metric -> the label users see (the papers' "FLOPs" are multiply-accumulates: MACs; latency is in ms)
METRICS: dict[str, str] = {
    "macs": "MACs",
    "params": "params",
    "latency": "latency",
}
FLAGS: dict[str, str] = {"macs": "--flops", "params": "--params", "latency": "--latency"}


def format_metric(metric: str, value: float) -> str:
    """A cost as users read it: 24.4M MACs, 2.1M params, 4.8ms latency."""
    return format_ms(value) if metric == "latency" else format_count(value)


@dataclass(frozen=True)
class Constraint:
    """`metric <= limit`: a hard upper bound; an architecture above it is never trained."""

    metric: str
    limit: float

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise UserError(f"unknown constraint metric {self.metric!r}; known: {', '.join(METRICS)}")
        if not self.limit > 0:
            raise UserError(f"the {METRICS[self.metric]} limit must be positive, got {self.limit}")

    def holds(self, costs: Mapping[str, float]) -> bool:
        return costs[self.metric] <= self.limit

    def __str__(self) -> str:
        return f"{METRICS[self.metric]} <= {format_metric(self.metric, self.limit)}"

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "limit": self.limit}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Constraint:
        return cls(data["metric"], float(data["limit"]))

    @classmethod
    def parse(cls, metric: str, text: str | float) -> Constraint:
        """'24M' for MACs and params; '5ms' for latency (a bare number is seconds), kept in milliseconds."""
        if metric == "latency":
            return cls(metric, parse_time(text, what="--latency limit") * 1e3)
        return cls(metric, parse_count(text, what=f"{FLAGS.get(metric, metric)} budget"))


def violations(constraints: Sequence[Constraint], costs: Mapping[str, float]) -> list[str]:
    """Readable descriptions of the constraints that `costs` break (empty when feasible)."""
    return [f"{METRICS[c.metric]} {format_metric(c.metric, costs[c.metric])} > {format_metric(c.metric, c.limit)}"
            for c in constraints if not c.holds(costs)]


def limit_of(constraints: Sequence[Constraint], metric: str) -> float | None:
    """The tightest limit on `metric`, or None."""
    limits = [c.limit for c in constraints if c.metric == metric]
    return min(limits) if limits else None
