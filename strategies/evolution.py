"""Search by mutation: regularized evolution and local search.

Both serve any space through its `sample()` and `mutate()`; local search enumerates a space's
`neighbours()` where the space can, and samples mutations where it cannot (continuous parameters).
Infeasible and failed trials are remembered as such and never become a parent or a centre.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from nasplat.arch import Arch
from nasplat.errors import UserError
from nasplat.registry import register_strategy
from nasplat.strategy import Result, Strategy, Trial

if TYPE_CHECKING:
    from nasplat.space import SearchSpace

Params = dict[str, Any]


class _MutationStrategy(Strategy):
    """What both strategies share: parameter sets kept as canonical JSON keys, and JSON-able snapshots."""

    def _key(self, params: Mapping[str, Any]) -> str:
        return self.space.arch(params).to_json()

    def _plain(self, params: Mapping[str, Any]) -> Params:
        """Parameter values as JSON gives them back (tuples as lists), for state()."""
        return self.space.arch(params).to_dict()["params"]

    def _frozen(self, params: Mapping[str, Any]) -> Params:
        """Parameter values from state() as the space declares them (lists back to tuples)."""
        return dict(self.space.arch(params))


@register_strategy("evolution")
class RegularizedEvolution(_MutationStrategy):
    """Regularized evolution: aging population, tournament selection, one mutation per child.

    Real et al., AAAI 2019: a population of the `population` most recent results; each new architecture
    mutates the best of `tournament` members drawn at random; the oldest member leaves as each new one
    joins. The first `population` architectures are random.

    Defaults population=10, tournament=3 are the REA baseline of NAS-Bench-201 and NATS-Bench (Dong et al.),
    set for searches of about a hundred evaluations; Real et al.'s 100 and 25 were for 20,000.
    """

    def __init__(self, space: SearchSpace, *, population: int = 10, tournament: int = 3, **common: Any):
        if not 1 <= tournament <= population:
            raise UserError(f"evolution needs 1 <= tournament <= population, got tournament={tournament}, "
                            f"population={population}")
        super().__init__(space, **common)
        self.population_size = population
        self.tournament = tournament
        self.population: deque[tuple[Params, float]] = deque()  # oldest first
        self.sampled = 0  # architectures asked before evolution began (initial points and random ones)

    def ask(self) -> Trial:
        if self.initial or self.sampled < self.population_size or not self.population:
            self.sampled += 1
            if self.initial:
                return self._trial(self.initial.pop(0))
            return self._trial(self._draw(lambda: self.space.sample(self.rng), what="random samples"))
        drawn = self.rng.sample(range(len(self.population)), min(self.tournament, len(self.population)))
        parent = self.population[max(drawn, key=lambda i: self.population[i][1])][0]  # first drawn of equal scores
        return self._trial(self._draw(lambda: self.space.mutate(parent, self.rng), what="children"))

    def tell(self, trial: Trial, result: Result) -> None:
        score = self.score(result)
        if score is None:  # infeasible or failed: no accuracy to compete with
            return
        self.population.append((self.space.searched(trial.arch), score))
        if len(self.population) > self.population_size:
            self.population.popleft()

    def state(self) -> dict[str, Any]:
        return {**super().state(), "sampled": self.sampled,
                "population": [[self._plain(p), s] for p, s in self.population]}

    def restore(self, state: Mapping[str, Any]) -> None:
        super().restore(state)
        self.sampled = int(state["sampled"])
        self.population = deque((self._frozen(p), float(s)) for p, s in state["population"])


@register_strategy("local")
class LocalSearch(_MutationStrategy):
    """Local search: climb to the best neighbour while it improves, restart at random at a local optimum.

    White, Nolen & Savani, "Local search is state of the art for NAS benchmarks" (2021): evaluate every
    neighbour of the current architecture, move to the best one if it beats the current, and restart from
    a random architecture at a local optimum.

    The defaults are that paper's plain variant: one random start, the full neighbourhood, restart at a local
    optimum. Where the space cannot enumerate its neighbours, `samples` distinct mutations stand in for
    them. Scores are remembered, so a neighbour evaluated before is not asked again. Initial points are
    evaluated first and the best of them starts the first climb. With trials in flight, an ask that would
    have to wait for results (the neighbourhood is all asked, or the start is not back yet) gets a random
    architecture. Where the constraints are free to check, the climb moves among feasible neighbours only,
    and starts are drawn feasible.
    """

    def __init__(self, space: SearchSpace, *, samples: int = 8, **common: Any):
        if samples < 1:
            raise UserError(f"local search needs samples >= 1, got {samples}")
        super().__init__(space, **common)
        self.samples = samples
        # architectures are held by key (the canonical JSON of their parameters): cheap to snapshot
        self.scores: dict[str, float | None] = {}  # key -> score (None: infeasible or failed)
        self.centre: tuple[Params, float] | None = None
        self.neighbourhood: list[str] = []  # the centre's neighbours
        self.queue: list[str] = []  # those not asked yet
        self.starts: list[str] = []  # candidates for the next centre, asked
        self.in_flight: dict[int, tuple[str, str]] = {}  # trial id -> (role, key): start | neighbour | filler

    def ask(self) -> Trial:
        key, role = self._next()
        trial = self._trial(self._params(key))
        self.in_flight[trial.id] = (role, key)
        return trial

    def _params(self, key: str) -> Params:
        return dict(Arch.from_json(key))

    def _next(self) -> tuple[str, str]:
        if self.initial:
            self.starts.append(self._key(self.initial.pop(0)))
            return self.starts[-1], "start"
        if self.centre is None and not self.starts:
            self.starts.append(self._key(self._sample()))
            return self.starts[-1], "start"
        asked = {key for _, key in self.in_flight.values()}
        while self.centre is not None and self.queue:
            key = self.queue.pop(0)
            if key not in self.scores and key not in asked:
                return key, "neighbour"
        return self._key(self._sample()), "filler"

    def _sample(self) -> Params:
        return self._draw(lambda: self.space.sample(self.rng), what="random samples")

    def tell(self, trial: Trial, result: Result) -> None:
        score = self.score(result)
        evaluated = self._key(self.space.searched(trial.arch))  # differs where the space completes parameters
        _, key = self.in_flight.pop(trial.id, ("filler", evaluated))
        self.scores[key] = self.scores[evaluated] = score
        self._advance()

    def _waiting_for(self, role: str) -> bool:
        return any(r == role for r, _ in self.in_flight.values())

    def _advance(self) -> None:
        """Moves, restarts or starts a climb once the results it waits for are all in."""
        while True:
            if self.centre is None:
                if self.initial or self._waiting_for("start"):
                    return
                found = self._best(self.starts)
                self.starts = []
                if found is None:  # every start failed: the next ask samples a new one
                    return
                self._move(found)
                continue
            if self.queue or self._waiting_for("neighbour"):
                return
            found = self._best(self.neighbourhood)
            if found is not None and found[1] > self.centre[1]:
                self._move(found)
                continue
            self.centre, self.neighbourhood = None, []  # a local optimum: restart
            return

    def _best(self, candidates: Sequence[str]) -> tuple[str, float] | None:
        scored = [(key, self.scores.get(key)) for key in candidates]
        ok = [(key, s) for key, s in scored if s is not None]
        return max(ok, key=lambda x: x[1]) if ok else None  # the first listed of equal scores

    def _move(self, centre: tuple[str, float]) -> None:
        params = self._params(centre[0])
        self.centre = (params, centre[1])
        found = self.space.neighbours(params)
        self.neighbourhood = [self._key(p) for p in found] if found is not None else self._sampled_neighbours(params)
        self.queue = [key for key in self.neighbourhood if key not in self.scores and self.feasible(self._params(key))]

    def _sampled_neighbours(self, params: Params) -> list[str]:
        """`samples` distinct mutations of `params` (fewer where the space has fewer within reach)."""
        own, out = self._key(params), []
        for _ in range(self.samples * 10):
            key = self._key(self.space.mutate(params, self.rng))
            if key != own and key not in out:
                out.append(key)
                if len(out) == self.samples:
                    break
        return out

    def state(self) -> dict[str, Any]:
        return {**super().state(), "scores": self.scores,
                "centre": [self._plain(self.centre[0]), self.centre[1]] if self.centre else None,
                "neighbourhood": self.neighbourhood, "queue": self.queue, "starts": self.starts,
                "in_flight": [[trial_id, role, key] for trial_id, (role, key) in self.in_flight.items()]}

    def restore(self, state: Mapping[str, Any]) -> None:
        super().restore(state)
        self.scores = dict(state["scores"])
        centre = state["centre"]
        self.centre = (self._frozen(centre[0]), float(centre[1])) if centre else None
        self.neighbourhood = list(state["neighbourhood"])
        self.queue = list(state["queue"])
        self.starts = list(state["starts"])
        self.in_flight = {int(trial_id): (role, key) for trial_id, role, key in state["in_flight"]}
