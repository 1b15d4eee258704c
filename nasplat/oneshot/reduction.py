"""Operation-space reduction: the engine that BNAS, CP-NAS and the anti-bandit search share (methods.md §7).

Each round samples single-path sub-networks (one op per edge), is told each one's value (its accuracy, or
CP-NAS's indicator), scores every remaining op of every edge from the values of the paths that used it, and
abandons the lowest-scoring op on every edge; rounds go on until one op is left per edge. The methods differ
only in the `Sampler` (which paths a pass tries, and how many paths make a round) and the `Scorer` (how values
become scores), which plug in; BNAS's and the anti-bandit's are in nasplat.oneshot.bandits.

The engine is ask/tell and framework-free, and `state()` / `restore()` make a killed search resume exactly:
a pass's paths are fixed when it starts and kept in the state, and the random generator travels with it.
"""
from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

Path = dict[str, tuple[int, ...]]  # group ("normal", "reduce") -> op index per edge
Remaining = Mapping[str, Sequence[Sequence[int]]]  # group -> per edge, the op indices still in play


def cp_indicator(parent_accuracy: float, child_accuracy: float, *, beta: float) -> float:
    """CP-NAS's z = beta * (A_P - A_C) + A_C (Eq. 4.15): the Child's accuracy plus beta times the gap to its
    Parent, so an op that the full-precision network makes much better still counts when binarization hurts."""
    return beta * (parent_accuracy - child_accuracy) + child_accuracy


class Sampler(Protocol):
    def pass_paths(self, remaining: Remaining, rng: random.Random, context: Any) -> list[Path]:
        """The paths of one pass over the current operation space."""

    def round_size(self, k: int, repeats: int) -> int:
        """How many sampled paths make a round when `k` ops are left per edge: the engine draws passes until
        it has that many (cutting the last one short), and abandons once all their values are in."""


class Scorer(Protocol):
    def observe(self, path: Mapping[str, Sequence[int]], value: float) -> None: ...

    def scores(self, remaining: Remaining) -> dict[str, list[dict[int, float]]]:
        """Per group, per edge, remaining op -> score (higher is better)."""

    def end_round(self, remaining: Remaining) -> None: ...

    def state(self) -> dict[str, Any]: ...

    def restore(self, state: Mapping[str, Any]) -> None: ...


class UniformWithoutReplacement:
    """CP-NAS's sampler (Algorithm 9): a pass draws one random permutation of the remaining ops on every edge
    and makes K paths of them, the e-th path taking each edge's e-th op: every op is tried exactly once."""

    def pass_paths(self, remaining: Remaining, rng: random.Random, context: Any = None) -> list[Path]:
        orders = {g: [rng.sample(list(ops), len(ops)) for ops in edges] for g, edges in remaining.items()}
        k = min(len(ops) for edges in remaining.values() for ops in edges)
        return [{g: tuple(order[i] for order in edges) for g, edges in orders.items()} for i in range(k)]

    def round_size(self, k: int, repeats: int) -> int:
        return repeats * k  # `repeats` whole passes


class SoftmaxMeanScorer:
    """CP-NAS's performance measure (Eq. 4.16): on each edge, a softmax over the remaining ops of the mean
    value each op received this round. Values are multiplied by `scale` first: accuracies in % (tens) would
    saturate the softmax, so the default 0.01 reads them as fractions. The order of the scores, which is all
    that abandoning uses, is that of the means either way."""

    def __init__(self, *, scale: float = 0.01):
        self.scale = scale
        self.sums: dict[str, dict[str, list[float]]] = {}  # group -> "edge,op" -> [sum, count] this round

    def observe(self, path: Mapping[str, Sequence[int]], value: float) -> None:
        for group, ops in path.items():
            table = self.sums.setdefault(group, {})
            for edge, op in enumerate(ops):
                cell = table.setdefault(f"{edge},{op}", [0.0, 0])
                cell[0] += value
                cell[1] += 1

    def scores(self, remaining: Remaining) -> dict[str, list[dict[int, float]]]:
        out: dict[str, list[dict[int, float]]] = {}
        for group, edges in remaining.items():
            table = self.sums.get(group, {})
            out[group] = []
            for edge, ops in enumerate(edges):
                means = {}
                for op in ops:
                    total, count = table.get(f"{edge},{op}", (0.0, 0))
                    means[op] = self.scale * total / count if count else -math.inf  # never tried: weakest
                top = max(means.values())
                exps = {op: math.exp(m - top) if math.isfinite(m) else 0.0 for op, m in means.items()}
                norm = sum(exps.values()) or 1.0
                out[group].append({op: e / norm for op, e in exps.items()})
        return out

    def end_round(self, remaining: Remaining) -> None:
        self.sums = {}

    def state(self) -> dict[str, Any]:
        return {"sums": self.sums}

    def restore(self, state: Mapping[str, Any]) -> None:
        self.sums = {g: {k: list(v) for k, v in t.items()} for g, t in state["sums"].items()}


class ReductionEngine:
    """Rounds of sampled paths, as many as the sampler's `round_size` says (`repeats` passes for CP-NAS,
    K x T single samples for the anti-bandit); after each round the lowest-scoring op of every edge is
    abandoned, and `history` records it with the scores of all the edge's ops it was judged against.

    `ask()` gives the next path, or None when the engine is `done` or when the round's paths are all out and
    it waits for their values. `keep_last_out` names ops that may never be the last one left on an edge
    ("none": a genotype has no empty edges): when abandoning the lowest would leave only such an op, that op
    goes instead.
    """

    def __init__(self, *, groups: Mapping[str, int], ops: Sequence[str], sampler: Sampler, scorer: Scorer,
                 repeats: int = 1, seed: int = 0, keep_last_out: Sequence[str] = ("none",), context: Any = None):
        if repeats < 1:
            raise ValueError(f"repeats must be at least 1, got {repeats}")
        self.ops = tuple(ops)
        self.sampler, self.scorer, self.repeats, self.context = sampler, scorer, repeats, context
        self.protected = {self.ops.index(o) for o in keep_last_out if o in self.ops}
        self.rng = random.Random(seed)
        self._remaining = {g: [list(range(len(self.ops))) for _ in range(n)] for g, n in groups.items()}
        self.round, self.sampled = 1, 0  # paths drawn in this round
        self.queue: list[Path] = []
        self.outstanding: list[Path] = []
        self.history: list[dict[str, Any]] = []

    @property
    def done(self) -> bool:
        return all(len(ops) == 1 for edges in self._remaining.values() for ops in edges)

    def remaining(self) -> dict[str, list[list[int]]]:
        return {g: [list(ops) for ops in edges] for g, edges in self._remaining.items()}

    @property
    def round_size(self) -> int:
        return self.sampler.round_size(min(len(ops) for edges in self._remaining.values() for ops in edges),
                                       self.repeats)

    def planned(self) -> int:
        """Sampled paths of the whole search, for a progress bar: the round sizes from K ops down to 2."""
        return sum(self.sampler.round_size(k, self.repeats) for k in range(2, len(self.ops) + 1))

    def ask(self) -> Path | None:
        if self.done:
            return None
        if not self.queue and self.sampled < self.round_size:
            self.queue = self.sampler.pass_paths(self._remaining, self.rng, self.context)[
                :self.round_size - self.sampled]
        if not self.queue:
            return None  # the round waits for the values of its outstanding paths
        path = self.queue.pop(0)
        self.sampled += 1
        self.outstanding.append(path)
        return path

    def tell(self, path: Mapping[str, Sequence[int]], value: float) -> None:
        path = {g: tuple(int(i) for i in ops) for g, ops in path.items()}
        if path not in self.outstanding:
            raise ValueError("tell() got a path that was not asked (or was told already)")
        if not math.isfinite(value):
            raise ValueError(f"the value of a path must be a finite number, got {value!r}")
        self.outstanding.remove(path)
        self.scorer.observe(path, value)
        if self.sampled == self.round_size and not self.queue and not self.outstanding:
            self._end_round()

    def _end_round(self) -> None:
        scores = self.scorer.scores(self._remaining)
        for group, edges in self._remaining.items():
            for edge, ops in enumerate(edges):
                ranked = sorted(ops, key=lambda op: (scores[group][edge][op], self.rng.random()))
                drop = ranked[0]
                left = [op for op in ops if op != drop]
                if len(left) == 1 and left[0] in self.protected:
                    drop = left[0]
                judged = {self.ops[op]: _finite(scores[group][edge][op]) for op in ops}
                ops.remove(drop)
                self.history.append({"round": self.round, "group": group, "edge": edge, "op": self.ops[drop],
                                     "score": judged[self.ops[drop]], "scores": judged})
        self.scorer.end_round(self._remaining)
        self.round += 1
        self.sampled = 0

    def state(self) -> dict[str, Any]:
        version, internal, gauss = self.rng.getstate()
        encode = lambda paths: [{g: list(p) for g, p in path.items()} for path in paths]  # noqa: E731
        return {"remaining": self.remaining(), "round": self.round, "sampled": self.sampled,
                "queue": encode(self.queue), "outstanding": encode(self.outstanding), "history": self.history,
                "rng": [version, list(internal), gauss], "scorer": self.scorer.state()}

    def restore(self, state: Mapping[str, Any]) -> None:
        decode = lambda paths: [{g: tuple(p) for g, p in path.items()} for path in paths]  # noqa: E731
        self._remaining = {g: [list(ops) for ops in edges] for g, edges in state["remaining"].items()}
        self.round, self.sampled = int(state["round"]), int(state["sampled"])
        self.queue, self.outstanding = decode(state["queue"]), decode(state["outstanding"])
        self.history = list(state["history"])
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
        self.scorer.restore(state["scorer"])


def _finite(score: float) -> float | None:
    """A score as the journal keeps it: JSON has no infinity (an untried arm's bound), so that is None."""
    return score if math.isfinite(score) else None
