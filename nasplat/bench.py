"""Strategy benchmarks on a tabular benchmark under its published protocol (`nasplat bench nb201`).

Every strategy searches with seeds 0..N-1 through the same runner as any search, charged simulated time by
the table (`--budget`). The architecture a search returns is the one of best signal among those it queried
(the earliest of equal ones): what the search itself would pick, never the best by the reported column it
did not see. Per strategy and seed, DIR/<strategy>/seed-NNN.json holds that architecture and the
best-so-far curve against simulated time; finished files are skipped, so a killed benchmark resumes (a
search killed midway runs again from its start: it takes seconds). At the end the figures of all seeds go
into a plot (DIR/<name>.png, and beside the results file) and a section of the results file.
"""
from __future__ import annotations

import bisect
import inspect
import json
import logging
import math
import shutil
import statistics
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .arch import Arch
from .constraints import Constraint
from .errors import UserError
from .files import write_json
from .cost.device_table import DeviceTable
from .registry import SPACES, STRATEGIES
from .results import write_section
from .run import SearchConfig, read_journal
from .runner.components import build_task
from .tasks.base import CHARGE
from .tasks.tabular import TableTask
from .units import format_ms, format_time

GRID = 241  # points of the simulated-time axis on which the curves of all seeds are averaged
# options a benchmark gives strategies: its searches are redone from scratch when killed, so the Bayesian
# study stays in memory (bench/RESULTS.md, "Bayesian study storage: journal file against memory")
STRATEGY_OPTIONS: dict[str, dict[str, Any]] = {"bayesian": {"storage": "memory"}}


@dataclass(frozen=True)
class Benchmark:
    name: str  # as on the command line; the file stem of its plot
    title: str  # the title of its section of the results file
    space: str
    task: str


BENCHMARKS = {"nb201": Benchmark("nb201", "NAS-Bench-201 strategies", "nasbench201", "nasbench201")}


@dataclass(frozen=True)
class DeviceLatency:
    """Every search of a benchmark reads latency from a device's table column and, with a `limit` (ms), keeps
    to it; `label` is the limit as the user gave it (p25: the column's 25th percentile)."""

    device: DeviceTable
    limit: float | None = None
    label: str = ""

    def settings(self) -> dict[str, Any]:
        return {"device": self.device.column, "latency_table": str(self.device.path), "latency_limit": self.limit,
                "latency_label": self.label}

    def title(self) -> str:
        limit = f", latency <= {self.label} ({format_ms(self.limit)})" if self.limit is not None else ""
        return f" on {self.device.column}{limit}"

    def slug(self) -> str:
        return f"-{self.device.column}" + (f"-{self.label}" if self.limit is not None else "")

    def feasible(self, table: Any) -> dict[str, float]:
        """Cell string -> latency of the table's rows within the limit (all rows without one)."""
        rows = self.device.table.rows
        latencies = {key: float(rows[key][self.device.column]) for key in table.rows if key in rows}  # type: ignore
        return {k: v for k, v in latencies.items() if self.limit is None or v <= self.limit}


@dataclass(frozen=True)
class BenchOutcome:
    """A benchmark's figures: its table, each strategy's mean reported value, the references, and the mean
    front hypervolume share per strategy (multi-objective benchmarks only)."""

    table: str
    means: dict[str, float]
    references: dict[str, float]
    fronts: dict[str, float] | None


def run_benchmark(bench: Benchmark, *, strategies: Sequence[str], seeds: int, budget: float, out: Path,
                  task_options: Mapping[str, Any], epochs: int | None = None, results: Path,
                  latency: DeviceLatency | None = None, objectives: Sequence[str] = ("accuracy",),
                  command: str | None = None, console: Console | None = None) -> BenchOutcome:
    """Runs what is missing, then writes the plot and the results section; returns its figures.

    With `latency`, every search reads latency from that device's table column, keeps to its limit, and the
    references are the table's feasible cells'; with `objectives` accuracy,latency, each search's returned
    front (signal against latency, of the feasible cells it queried) is scored by its hypervolume as a share
    of the table's own front."""
    console = console or Console(stderr=True)
    if not strategies:
        raise UserError("name at least one strategy")
    for name in strategies:
        STRATEGIES.get(split_spec(name)[0])
    # the searches are quiet; libraries that log each study they create (Optuna) would fill the screen
    logging.getLogger("optuna").setLevel(logging.WARNING)
    space = SPACES.create(bench.space)
    objectives = list(objectives)
    if "latency" in objectives and latency is None:
        raise UserError("--objective accuracy,latency needs a latency source: give --device table:COLUMN")
    constraints = [Constraint("latency", latency.limit)] if latency is not None and latency.limit is not None else []
    source = {"column": latency.device.column, "path": str(latency.device.path)} if latency is not None else None
    base = SearchConfig(space=bench.space, task=bench.task, trials=None, budget=budget, epochs=epochs,
                        task_options=dict(task_options), objectives=objectives, constraints=constraints,
                        device_table=source if (constraints or "latency" in objectives) else None)
    task = build_task(base, space)
    if not isinstance(task, TableTask):
        raise UserError(f"task {bench.task!r} does not answer from a CSV table")
    settings = {"budget": budget, "epochs": epochs or task.default_epochs, "task": task.describe(),
                **(latency.settings() if latency is not None else {}),
                **({"objectives": objectives} if len(objectives) > 1 else {})}
    feasible = latency.feasible(task.table) if latency is not None else None
    stem = bench.name + (latency.slug() if latency is not None else "") + ("-front" if len(objectives) > 1 else "")
    title = bench.title + (latency.title() if latency is not None else "") + \
        (": accuracy and latency" if len(objectives) > 1 else "")
    jobs = [(name, seed) for name in strategies for seed in range(seeds)]
    records: dict[tuple[str, int], dict[str, Any]] = {}
    for name, seed in jobs:
        record = _read_record(out / name / f"seed-{seed:03d}.json", settings)
        if record is not None:
            records[(name, seed)] = record

    quiet = Console(quiet=True)
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console)
    with progress:
        bar = progress.add_task(bench.name, total=len(jobs), completed=len(records))
        for name, seed in jobs:
            if (name, seed) in records:
                continue
            progress.update(bar, description=f"{bench.name} {name} seed {seed}")
            strategy, options = split_spec(name)
            config = SearchConfig(**{**base.to_dict(), "strategy": strategy, "seed": seed, "constraints": constraints,
                                     "strategy_options": {**STRATEGY_OPTIONS.get(strategy, {}), **options},
                                     "out": str(out / "runs" / name / f"seed-{seed:03d}")})
            records[(name, seed)] = _search(config, settings, out / name / f"seed-{seed:03d}.json", console=quiet)
            progress.advance(bar)

    report = list(task.report)
    references = _references(task, feasible)
    figure = _plot(title, strategies, records, report=report[0] if report else task.signal, budget=budget,
                   references=references)
    for path in (out / f"{stem}.png", results.parent / f"{stem}.png"):
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, format="png", dpi=120)
    fronts = _hypervolumes(records, task, feasible) if len(objectives) > 1 and feasible is not None else None
    table = _table(strategies, records, task=task, seeds=seeds, fronts=fronts)
    body = _section(stem, title, table, task=task, settings=settings, strategies=strategies, records=records,
                    references=references, latency=latency, fronts=fronts)
    write_section(title, body, path=results, command=command or _command(bench, strategies, seeds, budget, out,
                                                                         task_options, epochs, latency, objectives))
    column = report[0] if report else "signal"
    done = {name: [r for (s, _), r in records.items() if s == name and r["returned"]] for name in strategies}
    means = {name: statistics.mean(r["returned"][column] for r in rs) for name, rs in done.items() if rs}
    shares = None if fronts is None else {
        name: statistics.mean(v for (s, _), v in fronts.items() if s == name) for name in strategies}
    return BenchOutcome(table, means, references, shares)


def _search(config: SearchConfig, settings: Mapping[str, Any], path: Path, *, console: Console) -> dict[str, Any]:
    """One search from scratch (an unfinished earlier one is discarded); its record, written atomically."""
    from .api import start

    folder = Path(config.out)
    if folder.exists():
        shutil.rmtree(folder)
    started = time.perf_counter()
    outcome = start(config, console=console, sync=False, report=False)
    wall = time.perf_counter() - started
    record = {"strategy": config.strategy, "seed": config.seed, "settings": dict(settings),
              "run": str(outcome.run.path), "end": outcome.reason, "wall_seconds": round(wall, 3),
              **_trace(read_journal(outcome.run.journal_path), config.space)}
    write_json(path, record, sync=False)
    return record


def _read_record(path: Path, settings: Mapping[str, Any]) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except ValueError:
        return None  # a damaged file is redone
    if record.get("settings") != json.loads(json.dumps(settings)):
        raise UserError(f"{path} was written under other settings ({record.get('settings')}); give another --out "
                        f"or remove it")
    return record


def _trace(events: Sequence[Mapping[str, Any]], space_name: str) -> dict[str, Any]:
    """The returned architecture and the incumbent after each charged query, from the journal's results in
    the order they were told."""
    space = SPACES.create(space_name)
    spent, queries, repeats = 0.0, 0, 0
    incumbent: Mapping[str, Any] | None = None
    points: list[tuple[float, float]] = []  # (signal, latency) of the ok results, where latency is known
    curve: dict[str, list[float]] = {"seconds": [], "signal": []}
    for event in events:
        if event.get("event") != "result":
            continue
        charge = float(event.get("held_out", {}).get(CHARGE, 0.0))
        spent += charge
        queries += charge > 0
        repeats += charge == 0 and event["status"] == "ok"
        if event["status"] == "ok" and (incumbent is None or
                                        event["metrics"]["accuracy"] > incumbent["metrics"]["accuracy"]):
            incumbent = event
        if event["status"] == "ok" and "latency" in event["metrics"]:
            points.append((event["metrics"]["accuracy"], event["metrics"]["latency"]))
        if charge > 0 and incumbent is not None:
            curve["seconds"].append(round(spent, 4))
            curve["signal"].append(incumbent["metrics"]["accuracy"])
            for column, value in incumbent.get("held_out", {}).items():
                if column != CHARGE:
                    curve.setdefault(column, []).append(value)
    returned = None
    if incumbent is not None:
        reported = {k: v for k, v in incumbent.get("held_out", {}).items() if k != CHARGE}
        returned = {"arch": space.describe(Arch.from_dict(incumbent["arch"])), "trial": incumbent["trial"],
                    "signal": incumbent["metrics"]["accuracy"], **reported}
    return {"returned": returned, "queries": queries, "repeats": repeats, "simulated_seconds": round(spent, 4),
            "curve": curve, "front": [list(p) for p in front(points)]}


def front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (signal, latency) points no other point beats in both (higher signal, lower latency), by latency."""
    out: list[tuple[float, float]] = []
    for signal, latency in sorted(set(points), key=lambda p: (p[1], -p[0])):
        if not out or signal > out[-1][0]:
            out.append((signal, latency))
    return out


def hypervolume(points: Sequence[tuple[float, float]], *, reference: tuple[float, float]) -> float:
    """The area that the front of `points` dominates up to `reference` (a signal floor, a latency ceiling):
    the 2-D hypervolume, summed as a staircase."""
    floor, ceiling = reference
    area, below = 0.0, floor
    for signal, latency in front(points):
        if latency < ceiling and signal > below:
            area += (signal - below) * (ceiling - latency)
            below = signal
    return area


def _hypervolumes(records: Mapping[tuple[str, int], Mapping[str, Any]], task: TableTask,
                  feasible: Mapping[str, float]) -> dict[tuple[str, int], float]:
    """Per search, the hypervolume of its returned front as a share of the front of every feasible cell of
    the table, both up to that true front's nadir (its lowest signal, its highest latency)."""
    rows = task.table.rows
    true = front([(float(rows[key][task.signal]), latency) for key, latency in feasible.items()])  # type: ignore
    reference = (min(p[0] for p in true), max(p[1] for p in true))
    best = hypervolume(true, reference=reference)
    return {key: hypervolume([tuple(p) for p in record.get("front", [])], reference=reference) / best
            for key, record in records.items()}


def _references(task: TableTask, feasible: Mapping[str, float] | None = None) -> dict[str, float]:
    """The reported value of the best-signal architecture, and the best reported value, among the table's
    cells (its feasible ones, under a latency limit)."""
    rows = [row for key, row in task.table.rows.items() if feasible is None or key in feasible]
    column = task.report[0] if task.report else task.signal
    best_signal = max(rows, key=lambda row: row[task.signal])  # type: ignore[arg-type, return-value]
    which = "feasible " if feasible is not None and len(rows) < len(task.table) else ""
    return {f"best-{task.signal} {which}cell": float(best_signal[column]),  # type: ignore[arg-type]
            f"{which}table optimum" if which else "table optimum": max(float(row[column]) for row in rows)}  # type: ignore


def _at(curve: Mapping[str, list[float]], column: str, t: float) -> float:
    """The incumbent's value of `column` at simulated time t (NaN before the first query)."""
    index = bisect.bisect_right(curve["seconds"], t) - 1
    return curve[column][index] if index >= 0 else math.nan


def _plot(title: str, strategies: Sequence[str], records: Mapping[tuple[str, int], Mapping[str, Any]], *,
          report: str, budget: float, references: Mapping[str, float]) -> Any:
    import numpy as np
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 5), layout="constrained")
    ax = figure.add_subplot()
    grid = np.linspace(0, budget, GRID)
    floor = math.inf
    for name in strategies:
        curves = [r["curve"] for (s, _), r in records.items() if s == name and r["returned"]]
        if not curves:
            continue
        values = np.array([[_at(c, "signal" if report not in c else report, t) for t in grid] for c in curves])
        with warnings.catch_warnings():  # before every seed's first query the column is all NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            mean, std = np.nanmean(values, axis=0), np.nanstd(values, axis=0)
        ax.plot(grid, mean, label=f"{name} ({len(curves)} seeds)")
        ax.fill_between(grid, mean - std, mean + std, alpha=0.2)
        quarter = mean[GRID // 4] - std[GRID // 4]
        floor = min(floor, quarter) if math.isfinite(quarter) else floor
    for (label, value), style in zip(references.items(), (":", "--")):
        ax.axhline(value, color="black", linestyle=style, linewidth=1, label=f"{label}: {value:.2f}")
    if math.isfinite(floor):
        ax.set_ylim(floor, max(references.values(), default=floor + 1) + 0.3)
    ax.set_xlabel("simulated seconds")
    ax.set_ylabel(f"{report} of the incumbent (best signal so far)")
    ax.set_title(f"{title}: mean and std over seeds", fontsize="medium")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", loc="lower right")
    return figure


def _mean_std(values: Sequence[float], *, digits: int = 2) -> str:
    if not values:
        return "-"
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {spread:.{digits}f}"


def _table(strategies: Sequence[str], records: Mapping[tuple[str, int], Mapping[str, Any]], *, task: TableTask,
           seeds: int, fronts: Mapping[tuple[str, int], float] | None = None) -> str:
    columns = list(task.report)
    head = ["strategy", "seeds", *(f"{c} (mean ± std)" for c in columns), f"{task.signal} of returned",
            *(["front hypervolume share"] if fronts is not None else []), "queries", "repeats", "wall per search"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in strategies:
        done = [r for (s, _), r in records.items() if s == name and r["returned"]]
        cells = [name, f"{len(done)}/{seeds}", *(_mean_std([r["returned"][c] for r in done]) for c in columns),
                 _mean_std([r["returned"]["signal"] for r in done]),
                 *([_mean_std([fronts[k] for k, r in records.items() if k[0] == name and r["returned"]], digits=4)]
                   if fronts is not None else []),
                 f"{statistics.mean(r['queries'] for r in done):.1f}" if done else "-",
                 f"{statistics.mean(r['repeats'] for r in done):.1f}" if done else "-",
                 format_time(statistics.mean(r["wall_seconds"] for r in done)) if done else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def split_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """'bayesian:sampler=nsga2' -> ('bayesian', {'sampler': 'nsga2'}): a strategy as a benchmark names it, with
    options after colons (the same strategy may then run twice with other options)."""
    name, *pairs = spec.split(":")
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"strategy {spec!r}: give options as name:key=value, e.g. bayesian:sampler=nsga2")
        options[key] = value
    return name, options


def _defaults(spec: str) -> str:
    """A strategy's own options and their defaults, as the benchmark runs it."""
    name, chosen = split_spec(spec)
    shared = set(inspect.signature(STRATEGIES.get("random")).parameters)
    given = {**STRATEGY_OPTIONS.get(name, {}), **chosen}
    options = [f"{p.name}={given.get(p.name, p.default)}"
               for p in inspect.signature(STRATEGIES.get(name)).parameters.values()
               if p.name not in shared and p.default is not inspect.Parameter.empty]
    return ", ".join(options) or "no options"


def _section(name: str, title: str, table: str, *, task: TableTask, settings: Mapping[str, Any],
             strategies: Sequence[str], records: Mapping[tuple[str, int], Mapping[str, Any]],
             references: Mapping[str, float], latency: DeviceLatency | None,
             fronts: Mapping[tuple[str, int], float] | None) -> str:
    per_epoch, *per_query = task.time_columns
    charge = f"{settings['epochs']} x `{per_epoch}`" + "".join(f" + `{c}`" for c in per_query)
    total = sum(r["wall_seconds"] for r in records.values())
    lines = [
        f"Table `{task.table.path.name}` ({len(task.table)} architectures). Strategies see only `{task.signal}`; "
        f"each query is charged {charge} simulated seconds, up to {settings['budget']:g} s per search; a "
        f"repeated query is free; the query that would cross the budget is not made. A search returns the "
        f"architecture of best `{task.signal}` among those it queried; the table gives that architecture's "
        f"reported columns, which no strategy saw. Queries: charged ones; repeats: free repeated ones."]
    if latency is not None:
        lines.append(
            f"Latency: column `{latency.device.column}` of `{latency.device.path.name}` (ms), read by every search "
            f"as its device (`--device table:{latency.device.column}`)"
            + (f"; limit {latency.label} = {format_ms(latency.limit)}, met by "
               f"{len(latency.feasible(task.table))} cells; strategies check it for free before "
               f"proposing, and an infeasible architecture is never charged" if latency.limit is not None else "")
            + ".")
    if fronts is not None:
        lines.append("Front hypervolume share: the hypervolume of the (signal, latency) front of the cells a search "
                     "queried, as a share of the front of every feasible cell of the table, both up to that true "
                     "front's nadir (its lowest signal, highest latency).")
    lines += ["", table, "",
              f"Reference values of `{task.report[0] if task.report else task.signal}`: "
              + ", ".join(f"{k} {v:.2f}" for k, v in references.items()) + ".",
              "Strategy settings (defaults, not tuned to this table): "
              + "; ".join(f"{s}: {_defaults(s)}" for s in strategies) + ".",
              f"Wall time of the searches: {format_time(total)} in all (one process, sequential).",
              "", f"![{title}]({name}.png)"]
    return "\n".join(lines)


def _command(bench: Benchmark, strategies: Sequence[str], seeds: int, budget: float, out: Path,
             task_options: Mapping[str, Any], epochs: int | None, latency: DeviceLatency | None = None,
             objectives: Sequence[str] = ("accuracy",)) -> str:
    flags = [f"--strategies {','.join(strategies)}", f"--seeds {seeds}", f"--budget {budget:g}s", f"--out {out}"]
    flags += [f"--{k.replace('_', '-')} {v}" for k, v in task_options.items()]
    flags += [f"--epochs {epochs}"] if epochs else []
    if latency is not None:
        flags += [f"--device table:{latency.device.column}"] + ([f"--latency {latency.label}"] if latency.limit else [])
    flags += [f"--objective {','.join(objectives)}"] if len(objectives) > 1 else []
    return f"nasplat bench {bench.name} " + " ".join(flags)
