"""Many workers: 2,000 one-second trials on 64 Ray workers, for random, evolution and bayesian.

Ray is started with 64 logical CPUs (`ray.init(num_cpus=64)`) and each search joins it with `--workers 64`,
as `nasplat search --ray-address` joins a cluster. On a 2-core machine the 64 worker processes share the
cores; since a trial only sleeps for a second and answers from a table (NAS-Bench-201's, with a one-second
delay per query: `SlowTable`, defined here and shipped to the workers by value, as Ray ships what a driver
script defines), what the run measures is the driver: whether it asks, journals and tells 64 trials a
second. The space is NAS-Bench-201's (6 parameters of 5 operations), so that the strategies have a real
landscape and TPE a real fit to make.

Measured per strategy, in the driver process: trials per second against the ideal of 64 (steady: from the
first result to the last; end to end: from `api.start` to its return, Ray's start not included), the
driver's CPU time as a share of the wall time (of one core; the machine has two), the run folder's sizes,
and where the driver's time goes between the first result and the last (the strategy's ask and tell, the
journal and snapshot writes, the rest: Tune's dispatch and nasplat's searcher). For the bayesian strategy,
the ask time as the history grows. Each strategy's figures are kept in bench/out/ray-scale/, so a rerun
skips it (`--fresh` reruns).

    .venv/bin/python bench/ray_scale.py      # about 8 minutes on 2 cores
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

import optuna
from ray_dispatch import Timers, publish

from nasplat.registry import TASKS
from nasplat.tasks.base import Answer

OUT = Path(__file__).resolve().parent / "out" / "ray-scale"
SECTION = "Ray at 64 workers"
CPUS = 64
GOAL = 0.7  # of the ideal CPUS trials per second
# strategy as `--strategy`, with its options; the bayesian strategy twice: as it comes, and as set for many workers
HISTORY = 200  # the bayesian strategy's history=, set for many workers
STRATEGIES = {
    "random": ("random", {}),
    "evolution": ("evolution", {}),
    "bayesian": ("bayesian", {}),
    "bayesian-history": ("bayesian", {"storage": "memory", "history": HISTORY}),
}
PLAIN = "plain-tune"  # --strategies' name for plain Ray Tune's search of the same trials
PLAIN_SECONDS = 240  # plain Tune's time budget: it runs most of its trials on one worker (see run_plain_tune)

ASK_AT = (100, 500, 1000, 1500, 2000)  # the trial counts at which the ask time is shown (median of the 50 before)
# the bayesian strategy's ask measured without Ray: label -> (options, whether TPE infers the space as Optuna does)
ASK_VARIANTS = {
    "TPE inferring the space (as before)": ({"storage": "memory"}, True),
    "TPE on the declared space, storage=journal": ({}, False),
    "TPE on the declared space, storage=memory": ({"storage": "memory"}, False),
    f"the same, history={HISTORY}": ({"storage": "memory", "history": HISTORY}, False),
}
INFERRING_TRIALS = 1000  # the variant inferring the space stops here: its asks alone would take minutes more


class SlowTable(TASKS.get("nasbench201")):
    """NAS-Bench-201's table, each query delayed by `delay` seconds: a trial that costs the driver what a
    real one does, and the machine nothing."""

    def __init__(self, *, delay: float = 1.0, **options: Any):
        super().__init__(**options)
        self.delay = delay

    def query(self, key: str) -> Answer:
        time.sleep(self.delay)
        return super().query(key)


def _cpu_busy() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine so far, from /proc/stat."""
    fields = [float(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


class Arrivals:
    """The results as the driver's searcher receives them: when, and from which worker process; and the
    driver's CPU time when the last of the CPUS workers delivered its first result."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.workers: set[int] = set()
        self.all_up: tuple[int, float, float] | None = None  # (results so far, time, driver CPU seconds)

    def patch(self, searcher: type) -> Any:
        """Patches `searcher.on_trial_complete` to note each result first."""
        original = searcher.on_trial_complete

        def on_trial_complete(self_: Any, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            self.note(result or {})
            original(self_, trial_id, result, error)

        return mock.patch.object(searcher, "on_trial_complete", on_trial_complete)

    def note(self, result: dict) -> None:
        self.times.append(time.perf_counter())
        self.workers.add(result.get("pid", -1))
        if self.all_up is None and len(self.workers) == CPUS:
            self.all_up = (len(self.times), self.times[-1], _driver_cpu())

    def figures(self, *, trials: int, start: float, cpu: float, busy: tuple[float, float]) -> dict[str, Any]:
        """Throughput and CPU shares of a search that began at `start` (perf_counter), with the driver's CPU
        seconds and the machine's jiffies (`_cpu_busy`) then; called as it returns."""
        wall, cpu_end, busy_end = time.perf_counter() - start, _driver_cpu(), _cpu_busy()
        times, quarter = self.times, trials // 4
        out = {"trials": trials, "wall": wall, "first": times[0] - start, "end_to_end": trials / wall,
               "workers_seen": len(self.workers),
               "quarters": [quarter / (times[min(q * quarter + quarter, trials - 1)] - times[q * quarter])
                            for q in range(4)],
               "driver_cpu": (cpu_end - cpu) / wall,
               "machine_busy": (busy_end[0] - busy[0]) / (busy_end[1] - busy[1]), "load": os.getloadavg()[0],
               "between": times[-1] - times[0]}
        if self.all_up is not None:  # steady: once every worker had delivered a result
            count, up, cpu_up = self.all_up
            out.update(up=up - start, steady=(trials - count) / (times[-1] - up),
                       steady_driver_cpu=(cpu_end - cpu_up) / (times[-1] - up))
        return out


def _driver_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run(name: str, *, trials: int, seed: int) -> dict[str, Any]:
    """One search on the running Ray: its figures (see the module's docstring)."""
    from rich.console import Console

    from nasplat import api
    from nasplat.registry import STRATEGIES as REGISTERED
    from nasplat.run import RunDir, SearchConfig
    from nasplat.runner.ray_searcher import StrategySearcher

    strategy, options = STRATEGIES[name]
    cls = REGISTERED.get(strategy)
    timers, arrivals = Timers(), Arrivals()
    targets = [(cls, "ask", "ask"), (cls, "tell", "tell"), (cls, "state", "journal"), (RunDir, "append", "journal"),
               (RunDir, "save_state", "journal")]
    with tempfile.TemporaryDirectory(prefix="ray-scale-") as out:
        config = SearchConfig(space="nasbench201", task="nasbench201-slow", strategy=strategy, strategy_options=options,
                              trials=trials, seed=seed, out=out, runner="ray", workers=CPUS, export=[])
        busy, cpu, start = _cpu_busy(), _driver_cpu(), time.perf_counter()
        with timers.wrapping(targets), arrivals.patch(StrategySearcher):
            outcome = api.start(config, console=Console(quiet=True), report=False)
        figures = arrivals.figures(trials=trials, start=start, cpu=cpu, busy=busy)
        sizes = {f.name: f.stat().st_size for f in outcome.run.path.iterdir() if f.is_file()}
    assert outcome.finished == trials, outcome
    asks = [d for _, d in timers.calls["ask"]]
    per_trial = {k: 1e3 * timers.spent(k) / trials for k in ("ask", "tell", "journal")}
    per_trial["rest"] = 1e3 * figures.pop("between") / trials - sum(per_trial.values())
    return {"strategy": name, "options": options, **figures, "sizes": sizes, "per_trial_ms": per_trial,
            "ask_ms": {n: statistics.median(asks[max(0, n - 50):n]) * 1e3 for n in ASK_AT if n <= len(asks)}}


def run_plain_tune(trials: int) -> dict[str, Any]:
    """Plain Ray Tune on the running Ray: its own random search over the same space, with the same settings as
    nasplat's (CPUS trials at a time, actors reused, at most CPUS pending, auto-loggers off, verbose 0, no
    checkpoints), each trial a 1 s sleep that reports once: Tune's own throughput on this machine. Stopped after
    PLAIN_SECONDS (Tune's time budget): a finished trial's actor takes the next pending trial and Tune cancels the
    start of that trial's own actor, so that the trials run on the few workers up first, at about one a second
    each, while the others start and are cancelled; 2,000 trials would take half an hour."""
    from ray import tune

    from nasplat.registry import SPACES
    from nasplat.runner.ray import TUNE_ENV

    arrivals = Arrivals()

    class Noted(tune.Callback):
        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            arrivals.note(trial.last_result)

    space = {name: tune.choice(list(p.values)) for name, p in SPACES.get("nasbench201")().parameters().items()}
    with mock.patch.dict(os.environ, {**TUNE_ENV, "TUNE_MAX_PENDING_TRIALS_PG": str(CPUS)}), \
            tempfile.TemporaryDirectory(prefix="plain-tune-") as scratch:
        busy, cpu, start = _cpu_busy(), _driver_cpu(), time.perf_counter()
        tuner = tune.Tuner(
            tune.with_resources(_sleeping_trial, {"cpu": 1}), param_space=space,
            tune_config=tune.TuneConfig(num_samples=trials, max_concurrent_trials=CPUS, reuse_actors=True,
                                        time_budget_s=PLAIN_SECONDS),
            run_config=tune.RunConfig(storage_path=scratch, verbose=0, callbacks=[Noted()],
                                      checkpoint_config=tune.CheckpointConfig(checkpoint_at_end=False)))
        tuner.fit()
        done = len(arrivals.times)
        figures = arrivals.figures(trials=done, start=start, cpu=cpu, busy=busy)
    return {"strategy": "plain Ray Tune", "options": {}, **figures, "sizes": {},
            "per_trial_ms": {"rest": 1e3 * figures.pop("between") / done}, "ask_ms": {}}


def _sleeping_trial(config: dict[str, Any]) -> None:
    from ray import tune

    time.sleep(1.0)
    tune.report({"accuracy": 0.0})


def measure(name: str, *, trials: int, seed: int, fresh: bool) -> dict[str, Any]:
    """The figures of `name`: read back, or measured on a Ray instance of CPUS logical CPUs started for it."""
    import ray

    cache = OUT / f"{name}-{trials}.json"
    if cache.exists() and not fresh:
        return json.loads(cache.read_text())
    start = time.perf_counter()
    ray.init(address="local", num_cpus=CPUS, include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=False, logging_level="ERROR")
    try:
        started = time.perf_counter() - start
        figures = run_plain_tune(trials) if name == PLAIN else run(name, trials=trials, seed=seed)
        figures["ray_start"] = started
    finally:
        ray.shutdown()
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(figures, indent=1))
    return figures


def ask_cost(label: str, *, trials: int, fresh: bool) -> dict[str, float]:
    """The bayesian strategy's ask (ms, median of the 50 asks before each of ASK_AT) as its history grows, asked
    and told in this process with CPUS trials in flight (the oldest told first) and no Ray: the ask as the
    driver pays it. Read back from bench/out/ray-scale unless `fresh`."""
    from collections import deque

    from nasplat.registry import SPACES
    from nasplat.strategies.bayesian import SAMPLERS, BayesianSearch
    from nasplat.strategy import Result

    cache = OUT / f"ask-{label.replace(' ', '-').replace('/', '')}-{trials}.json"
    if cache.exists() and not fresh:
        return json.loads(cache.read_text())
    options, inferring = ASK_VARIANTS[label]
    trials = min(trials, INFERRING_TRIALS) if inferring else trials
    space, table = SPACES.get("nasbench201")(), TASKS.get("nasbench201")()
    tpe = {"tpe": lambda seed, declared: optuna.samplers.TPESampler(seed=seed, multivariate=True)} if inferring else {}
    asks: list[float] = []
    with tempfile.TemporaryDirectory(prefix="ask-cost-") as workdir, mock.patch.dict(SAMPLERS, tpe):
        strategy = BayesianSearch(space, seed=0, workdir=Path(workdir), **options)
        in_flight: deque = deque()
        for _ in range(trials):
            if len(in_flight) == CPUS:
                trial = in_flight.popleft()
                strategy.tell(trial, Result("ok", {"accuracy": table.query(space.describe(trial.arch)).signal}))
            start = time.perf_counter()
            in_flight.append(strategy.ask())
            asks.append(time.perf_counter() - start)
    figures = {str(n): statistics.median(asks[n - 50:n]) * 1e3 for n in ASK_AT if n <= trials}
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(figures))
    return figures


def _row(f: dict[str, Any]) -> str:
    """The table's row of one strategy's figures."""
    parts = ", ".join(f"{k} {v:.1f}" for k, v in f["per_trial_ms"].items())
    files = ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in sorted(f["sizes"].items()) if v > 10_000)
    steady = (f"{f['steady']:.1f} (**{f['steady'] / CPUS:.0%}**), from {f['up']:.0f} s; driver CPU "
              f"{f['steady_driver_cpu']:.0%}") if "steady" in f else f"never: {f['workers_seen']} of {CPUS} workers up"
    name = _label(f)
    return (f"| {name} | {steady} | {f['end_to_end']:.1f} ({f['end_to_end'] / CPUS:.0%}) in "
            f"{f['wall']:.0f} s; driver CPU {f['driver_cpu']:.0%} | {' / '.join(f'{q:.0f}' for q in f['quarters'])} | "
            f"{f['machine_busy']:.0%} | {files} | {parts} | {f['load']:.1f} |")


def _label(f: dict[str, Any]) -> str:
    """A strategy's row name: its name and the options it ran with."""
    return f["strategy"] + "".join(f" {k}={v}" for k, v in f["options"].items())


def _verdict(f: dict[str, Any]) -> str:
    """One line on the goal for a strategy's figures."""
    name = _label(f)
    if "steady" not in f:
        return (f"- {name}: never had all {CPUS} workers running: {f['trials']} trials in {f['wall']:.0f} s, on "
                f"{f['workers_seen']} worker processes.")
    short = GOAL * CPUS - f["steady"]
    return (f"- {name}: {f['steady'] / CPUS:.0%} of the ideal once every worker ran, "
            + ("the goal met." if short <= 0 else f"short of the goal by {short:.1f} trials/s.")
            + f" Workers up after {f['up']:.0f} s.")


def main() -> None:
    from nasplat.registry import register_task

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    names = [*STRATEGIES, PLAIN]
    parser.add_argument("--strategies", default=",".join(names), help="of: " + ", ".join(names))
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fresh", action="store_true", help="measure again what bench/out/ray-scale holds")
    parser.add_argument("--no-write", action="store_true", help="print the figures; leave RESULTS.md's section")
    args = parser.parse_args()
    register_task("nasbench201-slow")(SlowTable)
    asks = {}
    for label in ASK_VARIANTS:
        asks[label] = ask_cost(label, trials=args.trials, fresh=args.fresh)
        print(label, json.dumps(asks[label]), flush=True)
    figures = []
    for name in args.strategies.split(","):
        figures.append(measure(name, trials=args.trials, seed=args.seed, fresh=args.fresh))
        print(json.dumps(figures[-1]), flush=True)
    lines = [
        f"{args.trials} trials of NAS-Bench-201's space, each a table lookup delayed by 1 s, `--workers {CPUS}` on a "
        f"Ray instance of {CPUS} logical CPUs on this {os.cpu_count()}-core machine (the worker processes share the "
        f"cores; a sleeping trial leaves the driver as the bottleneck once they have started). Ideal: {CPUS} trials/s; "
        f"goal at least {GOAL:.0%} of it. Steady: from the moment every worker had delivered a result to the last "
        "result; end to end: from `api.start` to its return (Ray's start excluded, the workers' included). Driver "
        "CPU: the driver process's CPU time over the wall time (100% = one core of the two). Driver time per "
        "trial (ms, over the whole run): the strategy's ask and tell, the journal and snapshot writes (with the "
        "strategy's state()), and the rest of the time between the first result and the last (Tune, Ray, "
        "nasplat's searcher, waiting).",
        "",
        "| strategy | trials/s steady (of ideal) | end to end | trials/s by quarter of the run | machine busy | "
        "run folder | driver time per trial | load (1 min) |",
        "|---|---|---|---|---|---|---|---|",
        *(_row(f) for f in figures),
        "",
        *(_verdict(f) for f in figures),
        "",
        "Notes. 64 logical CPUs on 2 real cores: Ray starts two worker processes at a time here, so the workers "
        "come up over one to two minutes, which the end-to-end figures include and the steady ones leave out. "
        "Each worker holds its first result until every worker has started (`ray_trial.wait_for_workers`); plain "
        "Tune, without that, ran its trials on the few workers up first while it started and cancelled the others. "
        "In steady state the machine, not the driver, was the limit: both cores stayed busy while the driver "
        "used the share of one shown; the rest went to the 64 worker processes (Tune's trainable around each "
        "trial), Ray's daemons, and other jobs on this shared machine (the load column counts them too). "
        "Each worker unpickles the search's job once (`ray_trial.ShippedJob`; Tune hands a with_parameters "
        "object over anew at every trial).",
        "",
        "Ask time in the searches above as the history grows (ms, median of the 50 asks before): "
        + "; ".join(f"{f['strategy']}: " + ", ".join(f"{ms:.1f} at {n}" for n, ms in f["ask_ms"].items())
                    for f in figures if f["ask_ms"]) + ".",
        "",
        f"The bayesian strategy's ask without Ray (in this process, {CPUS} trials in flight, the oldest told first, "
        "NAS-Bench-201's answers; ms, median of the 50 asks before):",
        "",
        "| ask | " + " | ".join(f"at {n}" for n in ASK_AT) + " |",
        "|---|" + "---|" * len(ASK_AT),
        *(f"| {label} | " + " | ".join(f"{ms[str(n)]:.1f}" if str(n) in ms else "-" for n in ASK_AT) + " |"
          for label, ms in asks.items()),
    ]
    publish(SECTION, lines, write=not args.no_write, command="python bench/ray_scale.py")


if __name__ == "__main__":
    main()
