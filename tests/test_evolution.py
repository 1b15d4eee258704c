"""Regularized evolution and local search on toy objectives: ask/tell driven by hand, no runner, no training."""
from __future__ import annotations

import json
import random
import statistics
from collections.abc import Callable
from typing import Any

import pytest

from nasplat.arch import Arch
from nasplat.registry import STRATEGIES, register_space
from nasplat.space import Choice, FloatRange, SearchSpace
from nasplat.strategies.evolution import LocalSearch, RegularizedEvolution
from nasplat.strategy import Result, Strategy

VALUES = ("a", "b", "c", "d", "e")


@register_space("toy_cells")
class Cells(SearchSpace):
    """Six choices of five values, like NAS-Bench-201's six edges of five operations."""

    def parameters(self) -> dict[str, Any]:
        return {f"p{i}": Choice(VALUES) for i in range(6)}

    def build(self, arch: Arch, *, num_classes: int | None = None) -> Any:
        raise NotImplementedError

    def target(self, arch: Arch) -> Any:
        raise NotImplementedError


def separable(arch: Arch) -> float:
    """One optimum (every p = 'c'); each parameter contributes on its own, so climbing finds it."""
    return sum(3 - abs(VALUES.index(arch[f"p{i}"]) - 2) * (1 + i / 10) for i in range(6))


def deceptive(arch: Arch) -> float:
    """Two peaks: all 'a' is a local optimum, all 'e' the global one."""
    a = sum(arch[f"p{i}"] == "a" for i in range(6))
    e = sum(arch[f"p{i}"] == "e" for i in range(6))
    return 10.0 + e if e == 6 else float(max(a, e))


def ok(objective: Callable[[Arch], float]) -> Callable[[Arch], Result]:
    return lambda arch: Result("ok", {"accuracy": objective(arch)})


def drive(strategy: Strategy, steps: int, evaluate: Callable[[Arch], Result]) -> list[tuple[Arch, Result]]:
    seen = []
    for _ in range(steps):
        trial = strategy.ask()
        result = evaluate(trial.arch)
        strategy.tell(trial, result)
        seen.append((trial.arch, result))
    return seen


def best(seen: list[tuple[Arch, Result]]) -> float:
    return max(r.metrics["accuracy"] for _, r in seen if r.ok)


def test_both_are_registered():
    assert STRATEGIES.get("evolution") is RegularizedEvolution and STRATEGIES.get("local") is LocalSearch


def test_local_search_climbs_to_the_optimum_asking_nothing_twice():
    optimum = separable(Arch("toy_cells", {f"p{i}": "c" for i in range(6)}))
    for seed in range(5):
        strategy = LocalSearch(Cells(), seed=seed)
        seen = drive(strategy, 120, ok(separable))
        assert best(seen) == optimum
        first_climb = [a.to_json() for a, _ in seen[:60]]
        assert len(set(first_climb)) == len(first_climb)  # known neighbours are not asked again


def test_local_search_moves_only_to_better_neighbours_and_restarts_at_a_local_optimum():
    strategy = LocalSearch(Cells(), seed=3, initial=[{f"p{i}": "a" for i in range(6)}])
    centres = []
    for _ in range(400):
        trial = strategy.ask()
        strategy.tell(trial, ok(deceptive)(trial.arch))
        if strategy.centre is not None and (not centres or centres[-1] != strategy.centre):
            centres.append(strategy.centre)
    assert centres[0][1] == 6.0  # the all-'a' start is a local optimum: no neighbour beats it
    restarts = [i for i in range(1, len(centres)) if centres[i][1] <= centres[i - 1][1]]
    assert restarts, "local search must restart from a random architecture at a local optimum"
    assert all(centres[i][1] > centres[i - 1][1] for i in range(1, len(centres)) if i not in restarts)


def test_local_search_samples_mutations_where_neighbours_cannot_be_enumerated():
    class Mixed(Cells):
        def parameters(self) -> dict[str, Any]:
            return {"p0": Choice(VALUES), "x": FloatRange(0.0, 1.0)}

    space = Mixed()
    assert space.neighbours({"p0": "a", "x": 0.5}) is None
    strategy = LocalSearch(space, seed=0, samples=5)
    drive(strategy, 1, lambda arch: Result("ok", {"accuracy": arch["x"]}))
    assert len(strategy.neighbourhood) == 5 == len(strategy.queue)


def test_evolution_starts_random_then_mutates_tournament_winners_of_an_aging_population():
    space = Cells()
    strategy = RegularizedEvolution(space, seed=0, population=10, tournament=3)
    drive(strategy, 10, ok(separable))
    assert len(strategy.population) == 10 and strategy.sampled == 10
    for _ in range(40):
        members = [p for p, _ in strategy.population]
        trial = strategy.ask()
        child = space.searched(trial.arch)
        assert any(sum(child[k] != m[k] for k in child) == 1 for m in members)  # one mutation of a member
        oldest = strategy.population[0]
        strategy.tell(trial, ok(separable)(trial.arch))
        assert len(strategy.population) == 10 and all(m is not oldest for m in strategy.population)


def test_evolution_and_local_search_beat_random_on_average():
    def mean_best(name: str) -> float:
        return statistics.mean(best(drive(STRATEGIES.create(name, Cells(), seed=seed), 60, ok(separable)))
                               for seed in range(10))

    assert mean_best("evolution") > mean_best("random")
    assert mean_best("local") > mean_best("random")


@pytest.mark.parametrize("name", ["evolution", "local"])
def test_failed_and_infeasible_results_never_become_parents(name):
    def flaky(arch: Arch) -> Result:
        if arch["p0"] == "c":
            return Result("failed", {}, "boom")
        if arch["p1"] == "c":
            return Result("infeasible", {"macs": 1e9}, "too big")
        return Result("ok", {"accuracy": separable(arch)})

    strategy = STRATEGIES.create(name, Cells(), seed=1)
    for _ in range(150):
        trial = strategy.ask()
        strategy.tell(trial, flaky(trial.arch))
        parents = [p for p, _ in strategy.population] if name == "evolution" else \
            [strategy.centre[0]] if strategy.centre else []
        assert all(p["p0"] != "c" and p["p1"] != "c" for p in parents)


@pytest.mark.parametrize("name", ["evolution", "local"])
def test_several_trials_in_flight(name):
    strategy = STRATEGIES.create(name, Cells(), seed=2)
    rng = random.Random(0)
    for _ in range(30):
        trials = [strategy.ask() for _ in range(rng.randint(1, 5))]
        rng.shuffle(trials)
        for trial in trials:
            strategy.tell(trial, ok(separable)(trial.arch))
    assert len({t.id for t in trials}) == len(trials)


@pytest.mark.parametrize("name", ["evolution", "local"])
def test_a_restored_snapshot_asks_what_the_uninterrupted_strategy_asks(name):
    space = Cells()
    original = STRATEGIES.create(name, space, seed=5)
    in_flight = []
    for step in range(45):
        trial = original.ask()
        if step % 7 == 3:  # some stay in flight across the snapshot
            in_flight.append(trial)
            continue
        original.tell(trial, ok(separable)(trial.arch))
    snapshot = json.loads(json.dumps(original.state()))
    restored = STRATEGIES.create(name, space, seed=99)
    restored.restore(snapshot)
    for strategy in (original, restored):
        for trial in in_flight:
            strategy.tell(trial, ok(separable)(trial.arch))
    assert [a for a, _ in drive(original, 30, ok(separable))] == [a for a, _ in drive(restored, 30, ok(separable))]


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="tournament"):
        RegularizedEvolution(Cells(), population=3, tournament=5)
    with pytest.raises(ValueError, match="samples"):
        LocalSearch(Cells(), samples=0)
