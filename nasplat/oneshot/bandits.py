"""BNAS's and the anti-bandit's samplers and scorers for the operation-space-reduction engine (methods.md §1.4, §3.2).

- BNAS (AAAI 2020): `LessPotentialSampler` tries, on every edge, the ceil(K/2) ops of smallest softmax(alpha)
  without replacement; `IndicatorScorer` turns their accuracies into the performance-based indicator.
- BNAS (journal version): every op is tried (CP-NAS's uniform sampler) and `UCBScorer` abandons by the upper
  confidence bound m + sqrt(2 ln N / n).
- ABanditNAS: `LCBSampler` draws paths one at a time, op k with probability softmax(-LCB), and
  `AntiBanditScorer` keeps an exponential moving average of the accuracies and abandons by the UCB.

Accuracies arrive in % and are multiplied by `scale` (0.01) first: as fractions, the confidence term
sqrt(2 ln N / n) is on their scale, and a softmax over them does not saturate. Everything here is plain Python
with JSON-able `state()`, so that a checkpoint resumes a search exactly.
"""
from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from typing import Any

from .reduction import Path, Remaining, UniformWithoutReplacement

Scores = dict[str, list[dict[int, float]]]  # group -> per edge, remaining op -> score


def _key(edge: int, op: int) -> str:
    return f"{edge},{op}"


class LessPotentialSampler:
    """BNAS's sampler: on each edge the ceil(K/2) remaining ops of smallest architecture weight (the "less
    potential" half, from the supernet's softmax(alpha) after warm-up), each tried once per pass, without
    replacement. The engine's `context` holds those weights: group -> per edge, one weight per op."""

    def pass_paths(self, remaining: Remaining, rng: random.Random, context: Any) -> list[Path]:
        if context is None:
            raise ValueError("BNAS's sampler needs the supernet's op weights as the engine's context")
        halves = {g: [self.half(ops, context[g][edge]) for edge, ops in enumerate(edges)]
                  for g, edges in remaining.items()}
        orders = {g: [rng.sample(half, len(half)) for half in edges] for g, edges in halves.items()}
        size = min(len(half) for edges in halves.values() for half in edges)
        return [{g: tuple(order[i] for order in edges) for g, edges in orders.items()} for i in range(size)]

    @staticmethod
    def half(ops: Sequence[int], weights: Sequence[float]) -> list[int]:
        """The ceil(K/2) of `ops` of smallest weight (the lower index first on ties)."""
        return sorted(ops, key=lambda op: (weights[op], op))[:math.ceil(len(ops) / 2)]

    def round_size(self, k: int, repeats: int) -> int:
        return repeats * math.ceil(k / 2)


class IndicatorScorer:
    """BNAS's performance-based indicator. Per round and edge, over the ops M the round sampled: s = softmax of
    their mean (scaled) accuracy; an op left out of M (a high-alpha one) gets s = (max + mean of M's s) / 2;
    the indicator accumulates with decay, e <- e / 2 + s, and the op of least e is abandoned. `scores()` gives
    the e the round would end with; `end_round` makes it so."""

    def __init__(self, *, scale: float = 0.01):
        self.scale = scale
        self.sums: dict[str, dict[str, list[float]]] = {}  # group -> "edge,op" -> [sum, count] this round
        self.e: dict[str, dict[str, float]] = {}  # group -> "edge,op" -> accumulated indicator

    def observe(self, path: Mapping[str, Sequence[int]], value: float) -> None:
        for group, ops in path.items():
            table = self.sums.setdefault(group, {})
            for edge, op in enumerate(ops):
                cell = table.setdefault(_key(edge, op), [0.0, 0])
                cell[0] += value
                cell[1] += 1

    def scores(self, remaining: Remaining) -> Scores:
        out: Scores = {}
        for group, edges in remaining.items():
            table, e = self.sums.get(group, {}), self.e.get(group, {})
            out[group] = []
            for edge, ops in enumerate(edges):
                s = self._round_indicator(table, edge, ops)
                out[group].append({op: e.get(_key(edge, op), 0.0) / 2 + s[op] for op in ops})
        return out

    def _round_indicator(self, table: Mapping[str, Sequence[float]], edge: int, ops: Sequence[int]) -> dict[int, float]:
        means = {}
        for key, (total, count) in table.items():
            e, op = map(int, key.split(","))
            if e == edge:
                means[op] = self.scale * total / count
        if not means:  # nothing sampled on this edge yet this round
            return {op: 0.0 for op in ops}
        top = max(means.values())
        exps = {op: math.exp(m - top) for op, m in means.items()}
        norm = sum(exps.values())
        s = {op: x / norm for op, x in exps.items()}
        left_out = (max(s.values()) + sum(s.values()) / len(s)) / 2
        return {op: s.get(op, left_out) for op in ops}

    def end_round(self, remaining: Remaining) -> None:
        self.e = {g: {_key(edge, op): score for edge, ops in enumerate(edges) for op, score in ops.items()}
                  for g, edges in self.scores(remaining).items()}
        self.sums = {}

    def strengths(self, remaining: Remaining) -> Scores:
        """What the derived genotype keeps edges by: the accumulated indicator e."""
        return {g: [{op: self.e.get(g, {}).get(_key(edge, op), 0.0) for op in ops} for edge, ops in enumerate(edges)]
                for g, edges in remaining.items()}

    def state(self) -> dict[str, Any]:
        return {"sums": self.sums, "e": self.e}

    def restore(self, state: Mapping[str, Any]) -> None:
        self.sums = {g: {k: list(v) for k, v in t.items()} for g, t in state["sums"].items()}
        self.e = {g: dict(t) for g, t in state["e"].items()}


class UCBScorer:
    """Arms with confidence bounds (BNAS journal version): per edge and op, m = the mean (scaled) accuracy of
    the sampled paths that used it and n = how many did; N = paths sampled in all. An op scores its upper
    confidence bound m + sqrt(2 ln N / n) (infinite while untried: never abandoned unseen). The statistics
    last the whole search, across rounds."""

    def __init__(self, *, scale: float = 0.01):
        self.scale = scale
        self.arms: dict[str, dict[str, list[float]]] = {}  # group -> "edge,op" -> [m, n]
        self.total = 0  # N

    def update(self, m: float, n: int, value: float) -> float:
        """m after the (n+1)-th value: the running mean."""
        return m + (value - m) / (n + 1)

    def observe(self, path: Mapping[str, Sequence[int]], value: float) -> None:
        self.total += 1
        for group, ops in path.items():
            table = self.arms.setdefault(group, {})
            for edge, op in enumerate(ops):
                m, n = table.get(_key(edge, op), (0.0, 0))
                table[_key(edge, op)] = [self.update(m, int(n), self.scale * value), int(n) + 1]

    def arm(self, group: str, edge: int, op: int) -> tuple[float, int]:
        """(m, n) of an op on an edge; (0, 0) while untried."""
        m, n = self.arms.get(group, {}).get(_key(edge, op), (0.0, 0))
        return m, int(n)

    def bonus(self, n: int) -> float:
        """The confidence radius sqrt(2 ln N / n)."""
        return math.sqrt(2 * math.log(self.total) / n) if n else math.inf  # n > 0 means N >= 1

    def scores(self, remaining: Remaining) -> Scores:
        return self._bounds(remaining, +1)

    def lower(self, remaining: Remaining) -> Scores:
        """The lower confidence bounds m - sqrt(2 ln N / n) (minus infinity while untried)."""
        return self._bounds(remaining, -1)

    def _bounds(self, remaining: Remaining, sign: int) -> Scores:
        out: Scores = {}
        for group, edges in remaining.items():
            out[group] = []
            for edge, ops in enumerate(edges):
                bounds = {}
                for op in ops:
                    m, n = self.arm(group, edge, op)
                    bounds[op] = m + sign * self.bonus(n)
                out[group].append(bounds)
        return out

    def strengths(self, remaining: Remaining) -> Scores:
        """What the derived genotype keeps edges by: m, the ops' accuracy without the exploration term."""
        return {g: [{op: self.arm(g, edge, op)[0] for op in ops} for edge, ops in enumerate(edges)]
                for g, edges in remaining.items()}

    def untried(self, remaining: Remaining) -> bool:
        return any(self.arm(g, edge, op)[1] == 0 for g, edges in remaining.items()
                   for edge, ops in enumerate(edges) for op in ops)

    def end_round(self, remaining: Remaining) -> None:
        """Nothing: the arms keep their statistics across rounds."""

    def state(self) -> dict[str, Any]:
        return {"arms": self.arms, "total": self.total}

    def restore(self, state: Mapping[str, Any]) -> None:
        self.arms = {g: {k: list(v) for k, v in t.items()} for g, t in state["arms"].items()}
        self.total = int(state["total"])


class AntiBanditScorer(UCBScorer):
    """ABanditNAS's arms (Eq. 4.11): m starts at an op's first accuracy and then moves as an exponential
    moving average, m <- (1 - lambda) m + lambda a (lambda = 0.7: recent accuracy, of weights trained further,
    counts most); abandoning is by the UCB, sampling (LCBSampler) by the LCB."""

    def __init__(self, *, momentum: float = 0.7, scale: float = 0.01):
        if not 0 < momentum <= 1:
            raise ValueError(f"the anti-bandit's lambda must lie in (0, 1], got {momentum}")
        super().__init__(scale=scale)
        self.momentum = momentum

    def update(self, m: float, n: int, value: float) -> float:
        return value if n == 0 else (1 - self.momentum) * m + self.momentum * value


class LCBSampler:
    """ABanditNAS's sampler: first a pass in which every op is tried once (so that each has a value), then one
    path at a time, each edge drawing op k with probability exp(-LCB_k) / sum exp(-LCB), with replacement: ops
    with few samples or low accuracy, whose lower bound is low, get the trials (a fair chance for slowly
    trained parametric ops). A round is K x `repeats` (T) samples, the first pass counting toward the first."""

    def __init__(self, arms: UCBScorer):
        self.arms = arms
        self.first = UniformWithoutReplacement()

    def pass_paths(self, remaining: Remaining, rng: random.Random, context: Any = None) -> list[Path]:
        if self.arms.untried(remaining):
            return self.first.pass_paths(remaining, rng)
        path = {}
        for group, edges in self.probabilities(remaining).items():
            path[group] = tuple(rng.choices(list(p), weights=list(p.values()))[0] for p in edges)
        return [path]

    def probabilities(self, remaining: Remaining) -> Scores:
        """Per edge, op -> softmax(-LCB) over the remaining ops (all tried)."""
        out: Scores = {}
        for group, edges in self.arms.lower(remaining).items():
            out[group] = []
            for bounds in edges:
                low = min(bounds.values())
                exps = {op: math.exp(low - b) for op, b in bounds.items()}
                norm = sum(exps.values())
                out[group].append({op: x / norm for op, x in exps.items()})
        return out

    def round_size(self, k: int, repeats: int) -> int:
        return repeats * k
