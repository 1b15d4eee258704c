"""Dispatch overhead per trial: the Ray runner against the local runner, on no-op trials.

A no-op trial is a lookup in a table that answers at once (no constraint, so nothing is built or
measured): what is left is what a runner spends per trial. Each search goes through `nasplat.api.start` as
`nasplat search` does (journal fsynced, strategy snapshot at every ask), without the final report, at 40
and 200 trials, the Ray runner at 2 workers on a Ray instance started for the search. The breakdown times
the pieces from inside: Ray's start and stop, Tune's set-up before the first trial and its teardown after
the last, journal and snapshot writes, and the strategy's ask and tell; what remains of the time between
the first trial and the last is Tune's dispatch. A bare Ray actor pool on the same machine is the floor.
As extra information (not the goal's definition), the same searches on a Ray instance that is running
already (started before `api.start` and stopped after it, as `--ray-address` joins one) show what Tune costs
without Ray's start and stop.

    .venv/bin/python bench/ray_dispatch.py      # about 3 minutes on 2 cores
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from results import write_section
from rich.console import Console

from nasplat import api
from nasplat.registry import SPACES, STRATEGIES, register_space, register_task
from nasplat.run import RunDir, SearchConfig
from nasplat.runner import ray_cluster
from nasplat.runner.ray_searcher import StrategySearcher
from nasplat.space import IntRange, SearchSpace, Target
from nasplat.tasks.base import Answer, TabularTask

SECTION = "Ray runner: dispatch overhead per trial"
DISPATCH = "Tune dispatch of the other trials (less the two rows above)"
WORKERS = 2


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


class Timers:
    """Seconds spent inside wrapped functions, by label, and the first and last time some were called."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = defaultdict(float)
        self.first: dict[str, float] = {}
        self.last: dict[str, float] = {}
        self._originals: list[tuple[Any, str, Callable]] = []

    def restore(self) -> None:
        for owner, name, original in reversed(self._originals):
            setattr(owner, name, original)

    def wrap(self, owner: Any, name: str, label: str) -> None:
        original: Callable = getattr(owner, name)
        self._originals.append((owner, name, original))

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            self.first.setdefault(label, start)
            try:
                return original(*args, **kwargs)
            finally:
                end = time.perf_counter()
                self.spent[label] += end - start
                self.last[label] = end

        setattr(owner, name, timed)


def search(runner: str, trials: int, out: Path) -> tuple[float, dict[str, float]]:
    """One search's wall time and its breakdown (for the Ray runner). Runner "joined": the Ray runner on a
    Ray instance started before the timed search and stopped after it."""
    import ray
    from ray import tune

    if runner == "joined":
        ray_cluster._start(cpus=WORKERS, quiet={"log_to_driver": False, "logging_level": "ERROR"})
        try:
            return search("ray", trials, out)
        finally:
            ray.shutdown()

    timers = Timers()
    strategy = STRATEGIES.get("random")
    for owner, name, label in [(RunDir, "append", "journal"), (RunDir, "save_state", "journal"),
                               (strategy, "ask", "strategy"), (strategy, "tell", "strategy"),
                               (ray_cluster, "_start", "ray start"), (ray, "shutdown", "ray stop"),
                               (tune.Tuner, "fit", "tune"), (StrategySearcher, "suggest", "suggest"),
                               (StrategySearcher, "on_trial_complete", "complete")]:
        timers.wrap(owner, name, label)
    extra = {"runner": "ray", "workers": WORKERS} if runner == "ray" else {}
    config = SearchConfig(space="noop", strategy="random", trials=trials, seed=0, out=str(out), **extra)
    start = time.perf_counter()
    try:
        outcome = api.start(config, console=Console(quiet=True), report=False)
    finally:
        timers.restore()
    wall = time.perf_counter() - start
    assert outcome.finished == trials, outcome
    parts: dict[str, float] = {}
    if runner == "ray":
        fit_start, fit_end = timers.first["tune"], timers.last["tune"]
        first_result, last_result = timers.first["complete"], timers.last["complete"]
        parts = {
            "Ray start (ray.init)": timers.spent["ray start"],
            "Tune set-up and the first trial (its worker started)": first_result - fit_start,
            "journal and snapshot writes": timers.spent["journal"],
            "strategy ask and tell": timers.spent["strategy"],
            DISPATCH: (last_result - first_result) - timers.spent["journal"] - timers.spent["strategy"],
            "Tune teardown after the last trial": fit_end - last_result,
            "Ray stop (ray.shutdown)": timers.spent["ray stop"],
        }
        parts["the rest (config checks, run folder, best/, end)"] = wall - sum(parts.values())
    else:
        parts = {"journal and snapshot writes": timers.spent["journal"],
                 "strategy ask and tell": timers.spent["strategy"]}
    return wall, parts


def actor_pool_ms(calls: int = 2000) -> float:
    """Milliseconds per call of a no-op method on a pool of WORKERS bare Ray actors: Ray's own floor."""
    import ray
    from ray.util import ActorPool

    ray.init(num_cpus=WORKERS, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        @ray.remote(num_cpus=1)
        class Echo:
            def call(self, x: int) -> int:
                return x

        pool = ActorPool([Echo.remote() for _ in range(WORKERS)])
        list(pool.map(lambda a, v: a.call.remote(v), range(50)))  # warm
        start = time.perf_counter()
        list(pool.map(lambda a, v: a.call.remote(v), range(calls)))
        return (time.perf_counter() - start) / calls * 1e3
    finally:
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="40,200", help="numbers of trials")
    parser.add_argument("--repeats", type=int, default=2, help="searches per runner and size (the median is kept)")
    args = parser.parse_args()
    if "noop" not in SPACES.names():
        register_space("noop")(NoOpSpace)
        register_task("noop")(NoOpTask)
    sizes = [int(s) for s in args.sizes.split(",")]
    rows, extra, breakdowns = [], [], {}
    with tempfile.TemporaryDirectory(prefix="ray-dispatch-") as tmp:
        for n in sizes:
            walls: dict[str, list[float]] = {"local": [], "ray": [], "joined": []}
            for repeat in range(args.repeats):
                for runner in walls:
                    wall, parts = search(runner, n, Path(tmp) / f"{runner}-{n}-{repeat}")
                    walls[runner].append(wall)
                    if runner == "ray":
                        breakdowns.setdefault(n, []).append(parts)
                    print(f"{runner:>6} {n:>4} trials: {wall:.2f} s ({wall / n * 1e3:.1f} ms/trial), "
                          f"load {os.getloadavg()[0]:.2f}", flush=True)
            local, on_ray = statistics.median(walls["local"]), statistics.median(walls["ray"])
            joined = statistics.median(walls["joined"])
            goal = 0.1 if n <= 40 else 0.03
            rows.append(f"| {n} | {local:.2f} s | {local / n * 1e3:.1f} ms | {on_ray:.2f} s | {on_ray / n * 1e3:.0f} ms | "
                        f"{(on_ray - local) / n * 1e3:.0f} ms | {goal * 1e3:.0f} ms | "
                        f"{'met' if on_ray / n <= goal else 'NOT met'} |")
            extra.append(f"| {n} | {joined:.2f} s | {joined / n * 1e3:.0f} ms | {(joined - local) / n * 1e3:.0f} ms |")
    floor = actor_pool_ms()
    lines = [
        f"No-op trials (a table that answers at once), random strategy, the Ray runner at {WORKERS} workers on a "
        f"Ray instance started for each search; median of {args.repeats} searches each. Wall time from "
        "`api.start` to its return, Ray's start and stop included, the final report excluded.",
        "",
        "| trials | local runner | local per trial | Ray runner | Ray per trial | overhead per trial (Ray - local) "
        "| goal (Ray per trial) | |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "Extra information, not the goal's measure: the same searches on a Ray instance running already "
        "(started before and stopped after the timed search, as one joined with `--ray-address`):",
        "",
        "| trials | Ray runner, Ray running already | per trial | overhead per trial (- local) |",
        "|---|---|---|---|",
        *extra,
        "",
        "Where the Ray runner's time goes (seconds, median over the searches of each size):",
        "",
        "| part | " + " | ".join(f"{n} trials" for n in sizes) + " |",
        "|---|" + "---|" * len(sizes),
    ]
    for part in breakdowns[sizes[0]][0]:
        lines.append(f"| {part} | " + " | ".join(f"{statistics.median(b[part] for b in breakdowns[n]):.2f}"
                                                   for n in sizes) + " |")
    per_trial = {n: statistics.median(b[DISPATCH] for b in breakdowns[n]) / (n - 1) * 1e3 for n in sizes}
    lines += [
        "",
        "Tune's dispatch per trial: " + ", ".join(f"{v:.1f} ms at {n} trials" for n, v in per_trial.items())
        + f"; a bare pool of {WORKERS} Ray actors answers a no-op call in {floor:.2f} ms. Settings: actors "
        "reused, auto-loggers off, verbose 0, no checkpoints, Tune's experiment snapshots off, at most "
        f"{WORKERS} trials pending, one report per trial (the last epoch's metrics ride with the result), and "
        "each worker's first result held until every worker has started (without it, Tune ran every no-op "
        "trial on the first worker and requested and cancelled a second actor at each trial).",
        f"Load average (1 min) at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs.",
    ]
    write_section(SECTION, "\n".join(lines), command="python bench/ray_dispatch.py")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
