"""Dispatch overhead per trial: nasplat's Ray runner against a plain Ray Tune search of the same no-op trials.

A no-op trial is a lookup in a table that answers at once (no constraint, so nothing is built or
measured): what is left is what a runner spends per trial. nasplat's search goes through `nasplat.api.start`
as `nasplat search` does (journal fsynced, strategy snapshot at every ask), without the final report. The
plain Tune search is what a Tune user would write for the same trials: a function trainable that reports
the table's answer, Tune's own random search over the same parameter, and the same settings as nasplat's
(2 workers, actors reused, at most 2 trials pending, auto-loggers off, verbose 0, no checkpoints). Both
start Ray the same way (`ray_cluster.ray_session`, as the CLI does) and stop it at the end; they alternate
in one process, at 40 and at 200 trials, and the median of the repeats is kept.

Measured on the driver, from the call to its return: `first` is the first trial's result arriving, `last`
the last one's; per trial is (last - first) / (trials - 1) and the fixed cost is first + (return - last),
Ray's start and stop included. nasplat's own time is broken down from inside (the strategy, the journal).

    .venv/bin/python bench/ray_dispatch.py      # about 4 minutes on 2 cores
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

from results import write_section

from nasplat.space import IntRange, SearchSpace, Target
from nasplat.tasks.base import Answer, TabularTask

SECTION = "Ray dispatch against plain Ray Tune"
WORKERS = 2
GOAL_RATIO = 1.2  # nasplat's per-trial time at most this times plain Tune's
GOAL_FIXED = 1.0  # nasplat's fixed cost at most plain Tune's plus this many seconds


class NoOpSpace(SearchSpace):
    """One integer parameter; nothing is ever built (the task answers from its 'table')."""

    default_task = "noop"

    def parameters(self):
        return {"x": IntRange(0, 10**6)}

    def build(self, arch, *, num_classes=None):
        raise NotImplementedError("a no-op trial builds nothing")

    def target(self, arch):
        return Target((1, 1), 1)

    def describe(self, arch):
        return str(arch["x"])


class NoOpTask(TabularTask):
    """Answers every architecture at once, with its parameter as the signal."""

    default_epochs = 1

    def query(self, key: str) -> Answer:
        return Answer(float(key) / 1e4)

    def charge(self, key: str, *, epochs: int) -> float:
        return 0.0


def noop_trial(config: dict[str, Any]) -> None:
    """The plain Tune trainable: the same answer NoOpTask gives, reported once."""
    from ray import tune

    tune.report({"accuracy": NoOpTask().query(str(config["x"])).signal})


@dataclass(frozen=True)
class Timing:
    """One search, in seconds from its start: the first and the last trial's result on the driver, and the end;
    and the seconds of Ray's start and stop within the fixed cost (the same calls in both searches)."""

    trials: int
    first: float
    last: float
    wall: float
    ray: float

    @property
    def per_trial(self) -> float:
        return (self.last - self.first) / (self.trials - 1)

    @property
    def fixed(self) -> float:
        return self.first + self.wall - self.last


class Timers:
    """Every call of the wrapped functions, by label: when it began and how long it took (seconds)."""

    def __init__(self) -> None:
        self.calls: dict[str, list[tuple[float, float]]] = defaultdict(list)

    def spent(self, label: str) -> float:
        return sum(duration for _, duration in self.calls[label])

    def first(self, label: str) -> float:
        return self.calls[label][0][0]

    def last(self, label: str) -> float:
        return self.calls[label][-1][0]

    @contextmanager
    def wrapping(self, targets: list[tuple[Any, str, str]]) -> Iterator[None]:
        """Times each (owner, attribute, label) while inside, and puts the originals back after."""
        originals = [(owner, name, getattr(owner, name)) for owner, name, _ in targets]
        for (owner, name, original), (_, _, label) in zip(originals, targets):
            setattr(owner, name, self._timed(original, label))
        try:
            yield
        finally:
            for owner, name, original in reversed(originals):
                setattr(owner, name, original)

    def _timed(self, original: Callable, label: str) -> Callable:
        calls = self.calls[label]

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                calls.append((start, time.perf_counter() - start))

        return timed


def search_nasplat(trials: int, out: Path) -> tuple[Timing, dict[str, float]]:
    """nasplat's Ray runner: its timing and where its time went."""
    from rich.console import Console

    from nasplat import api
    from nasplat.registry import STRATEGIES
    from nasplat.run import RunDir, SearchConfig
    from nasplat.runner.ray_searcher import StrategySearcher

    import ray

    timers = Timers()
    strategy = STRATEGIES.get("random")
    config = SearchConfig(space="noop", strategy="random", trials=trials, seed=0, out=str(out), runner="ray",
                          workers=WORKERS)
    targets = [(RunDir, "append", "journal"), (RunDir, "save_state", "journal"), (strategy, "ask", "strategy"),
               (strategy, "tell", "strategy"), (StrategySearcher, "on_trial_complete", "result"),
               (ray, "init", "ray"), (ray, "shutdown", "ray")]
    start = time.perf_counter()
    with timers.wrapping(targets):
        outcome = api.start(config, console=Console(quiet=True), report=False)
    wall = time.perf_counter() - start
    assert outcome.finished == trials, outcome
    timing = Timing(trials, timers.first("result") - start, timers.last("result") - start, wall, timers.spent("ray"))
    between = timers.last("result") - timers.first("result")
    parts = {"journal and snapshot writes": timers.spent("journal"), "strategy ask and tell": timers.spent("strategy")}
    parts["the rest: Tune's dispatch and nasplat's searcher"] = between - sum(parts.values())
    return timing, {k: v / (trials - 1) for k, v in parts.items()}


def search_tune(trials: int) -> tuple[Timing, int]:
    """The plain Ray Tune search of the same trials, Ray started and stopped as nasplat does: its timing and
    the number of worker processes its trials ran on."""
    import ray
    from ray import tune
    from rich.console import Console

    from nasplat.runner.ray import TUNE_ENV
    from nasplat.runner.ray_cluster import ray_session

    marks: list[float] = []
    timers = Timers()

    class Marks(tune.Callback):
        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            marks.append(time.perf_counter())

    start = time.perf_counter()
    with timers.wrapping([(ray, "init", "ray"), (ray, "shutdown", "ray")]), \
            mock.patch.dict(os.environ, {**TUNE_ENV, "TUNE_MAX_PENDING_TRIALS_PG": str(WORKERS)}), \
            ray_session(address=None, workers=WORKERS, cpus_per_trial=1, gpus_per_trial=0,
                        console=Console(quiet=True)), \
            tempfile.TemporaryDirectory(prefix="plain-tune-") as scratch:
        tuner = tune.Tuner(
            tune.with_resources(noop_trial, {"cpu": 1}), param_space={"x": tune.randint(0, 10**6)},
            tune_config=tune.TuneConfig(num_samples=trials, max_concurrent_trials=WORKERS, reuse_actors=True,
                                        metric="accuracy", mode="max"),
            run_config=tune.RunConfig(storage_path=scratch, verbose=0, callbacks=[Marks()],
                                      checkpoint_config=tune.CheckpointConfig(checkpoint_at_end=False)))
        results = tuner.fit()
    wall = time.perf_counter() - start
    assert len(results) == trials and not results.errors, results.errors
    return Timing(trials, marks[0] - start, marks[-1] - start, wall, timers.spent("ray")), \
        len({result.metrics["pid"] for result in results})


def search_local(trials: int, out: Path) -> float:
    """The local runner's seconds per trial, for reference."""
    from rich.console import Console

    from nasplat import api
    from nasplat.run import SearchConfig

    config = SearchConfig(space="noop", strategy="random", trials=trials, seed=0, out=str(out))
    start = time.perf_counter()
    api.start(config, console=Console(quiet=True), report=False)
    return (time.perf_counter() - start) / trials


def _row(trials: int, ours: list[Timing], theirs: list[Timing]) -> str:
    """The table's row of one size: medians of nasplat's searches and of plain Tune's, and the goal."""
    def median(runs: list[Timing], figure: Callable[[Timing], float]) -> float:
        return statistics.median(figure(t) for t in runs)

    per = [median(runs, lambda t: t.per_trial) for runs in (ours, theirs)]
    fixed = [median(runs, lambda t: t.fixed) for runs in (ours, theirs)]
    less_ray = [median(runs, lambda t: t.fixed - t.ray) for runs in (ours, theirs)]
    shown = [f"{f:.2f} s: {median(runs, lambda t: t.first):.2f} + {median(runs, lambda t: t.wall - t.last):.2f} "
             f"({median(runs, lambda t: t.ray):.2f})" for f, runs in zip(fixed, (ours, theirs))]
    met = per[0] <= GOAL_RATIO * per[1] and less_ray[0] <= less_ray[1] + GOAL_FIXED
    return (f"| {trials} | {per[0] * 1e3:.1f} ms | {per[1] * 1e3:.1f} ms | **{per[0] / per[1]:.2f}x** | {shown[0]} | "
            f"{shown[1]} | **{fixed[0] - fixed[1]:+.2f} s** | {less_ray[0] - less_ray[1]:+.2f} s | "
            f"{'met' if met else 'NOT met'} |")


def publish(section: str, lines: list[str], *, write: bool, command: str) -> None:
    """Prints a section's body, and writes it into RESULTS.md where `write` (--no-write leaves it)."""
    body = "\n".join(lines)
    print(body)
    if write:
        write_section(section, body, command=command)


def main() -> None:
    from nasplat.registry import SPACES, register_space, register_task

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="40,200", help="numbers of trials")
    parser.add_argument("--repeats", type=int, default=3, help="searches per runner and size (the median is kept)")
    parser.add_argument("--no-write", action="store_true", help="print the figures; leave RESULTS.md's section")
    args = parser.parse_args()
    if "noop" not in SPACES.names():
        register_space("noop")(NoOpSpace)
        register_task("noop")(NoOpTask)
    sizes = [int(s) for s in args.sizes.split(",")]
    rows, breakdown, loads, local, tune_workers = [], {}, [], {}, []
    with tempfile.TemporaryDirectory(prefix="ray-dispatch-") as tmp:
        for n in sizes:
            local[n] = search_local(n, Path(tmp) / f"local-{n}")
            ours: list[Timing] = []
            theirs: list[Timing] = []
            parts: list[dict[str, float]] = []
            for repeat in range(args.repeats):
                timing, split = search_nasplat(n, Path(tmp) / f"nasplat-{n}-{repeat}")
                ours.append(timing)
                parts.append(split)
                timing, used = search_tune(n)
                theirs.append(timing)
                tune_workers.append(used)
                loads.append(os.getloadavg()[0])
                print(f"{n:>4} trials, repeat {repeat}: nasplat {ours[-1]}, tune {theirs[-1]} on {used} worker(s), "
                      f"load {loads[-1]:.2f}", flush=True)
            rows.append(_row(n, ours, theirs))
            breakdown[n] = {k: statistics.median(p[k] for p in parts) for k in parts[0]}
    lines = [
        f"No-op trials (a table that answers at once), {WORKERS} workers, a Ray instance started for each search; "
        f"median of {args.repeats} searches each, nasplat and plain Tune alternating in one process. Per trial: "
        "(last result - first result) / (trials - 1) on the driver; fixed: start to the first result plus the "
        f"last result to the return, Ray's start and stop included. Goal: per trial at most {GOAL_RATIO}x plain "
        f"Tune's, fixed at most plain Tune's + {GOAL_FIXED:.0f} s, judged less Ray's start and stop: both searches "
        "start and stop Ray with the same call (`ray_session`), whose time varied by several seconds from one "
        "search to the next on this loaded machine.",
        "",
        "| trials | nasplat per trial | plain Tune per trial | ratio | nasplat fixed: first + tail "
        "(Ray start and stop) | plain Tune fixed: first + tail (Ray start and stop) | difference | "
        "difference less Ray's start and stop | goal |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "nasplat's time per trial between the first result and the last (milliseconds, median):",
        "",
        "| part | " + " | ".join(f"{n} trials" for n in sizes) + " |",
        "|---|" + "---|" * len(sizes),
        *(f"| {part} | " + " | ".join(f"{breakdown[n][part] * 1e3:.2f}" for n in sizes) + " |"
          for part in breakdown[sizes[0]]),
        "",
        f"Plain Tune ran its trials on {min(tune_workers)} to {max(tune_workers)} worker process(es) of the "
        f"{WORKERS}: a reused actor takes the next pending trial, and Tune cancels the start of the others (nasplat "
        "holds each worker's first result until all have started, `ray_trial.wait_for_workers`).",
        "The local runner, for reference: " + ", ".join(f"{local[n] * 1e3:.1f} ms per trial at {n} trials"
                                                        for n in sizes) + " (no Ray, no Tune).",
        f"Load average (1 min) after each pair of searches: {min(loads):.2f} to {max(loads):.2f} on "
        f"{os.cpu_count()} CPUs.",
    ]
    publish(SECTION, lines, write=not args.no_write, command="python bench/ray_dispatch.py")


if __name__ == "__main__":
    main()
