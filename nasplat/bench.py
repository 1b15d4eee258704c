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
import os
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
from .registry import SPACES, STRATEGIES
from .results import write_section
from .run import SearchConfig, read_journal
from .runner.components import build_task
from .tasks.base import CHARGE
from .tasks.tabular import TableTask
from .units import format_time

GRID = 241  # points of the simulated-time axis on which the curves of all seeds are averaged


@dataclass(frozen=True)
class Benchmark:
    name: str  # as on the command line; the file stem of its plot
    title: str  # the title of its section of the results file
    space: str
    task: str


BENCHMARKS = {"nb201": Benchmark("nb201", "NAS-Bench-201 strategies", "nasbench201", "nasbench201")}


def run_benchmark(bench: Benchmark, *, strategies: Sequence[str], seeds: int, budget: float, out: Path,
                  task_options: Mapping[str, Any], epochs: int | None = None, results: Path,
                  command: str | None = None, console: Console | None = None) -> str:
    """Runs what is missing, then writes the plot and the results section; returns the section's table."""
    console = console or Console(stderr=True)
    if not strategies:
        raise ValueError("name at least one strategy")
    for name in strategies:
        STRATEGIES.get(name)
    # the searches are quiet; libraries that log each study they create (Optuna) would fill the screen
    logging.getLogger("optuna").setLevel(logging.WARNING)
    space = SPACES.create(bench.space)
    base = SearchConfig(space=bench.space, task=bench.task, trials=None, budget=budget, epochs=epochs,
                        task_options=dict(task_options))
    task = build_task(base, space)
    if not isinstance(task, TableTask):
        raise ValueError(f"task {bench.task!r} does not answer from a CSV table")
    settings = {"budget": budget, "epochs": epochs or task.default_epochs, "task": task.describe()}
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
            config = SearchConfig(**{**base.to_dict(), "strategy": name, "seed": seed, "constraints": [],
                                     "out": str(out / "runs" / name / f"seed-{seed:03d}")})
            records[(name, seed)] = _search(config, settings, out / name / f"seed-{seed:03d}.json", console=quiet)
            progress.advance(bar)

    report = list(task.report)
    figure = _plot(bench, strategies, records, report=report[0] if report else task.signal, budget=budget,
                   references=_references(task))
    for path in (out / f"{bench.name}.png", results.parent / f"{bench.name}.png"):
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, format="png", dpi=120)
    table = _table(strategies, records, task=task, seeds=seeds)
    body = _section(bench, table, task=task, settings=settings, strategies=strategies, records=records)
    write_section(bench.title, body, path=results, command=command or _command(bench, strategies, seeds, budget,
                                                                                out, task_options, epochs))
    return table


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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.replace(path)
    return record


def _read_record(path: Path, settings: Mapping[str, Any]) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except ValueError:
        return None  # a damaged file is redone
    if record.get("settings") != json.loads(json.dumps(settings)):
        raise ValueError(f"{path} was written under other settings ({record.get('settings')}); give another --out "
                         f"or remove it")
    return record


def _trace(events: Sequence[Mapping[str, Any]], space_name: str) -> dict[str, Any]:
    """The returned architecture and the incumbent after each charged query, from the journal's results in
    the order they were told."""
    space = SPACES.create(space_name)
    spent, queries, repeats = 0.0, 0, 0
    incumbent: Mapping[str, Any] | None = None
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
            "curve": curve}


def _references(task: TableTask) -> dict[str, float]:
    """The reported value of the table's best-signal architecture, and the table's best reported value."""
    rows = task.table.rows.values()
    column = task.report[0] if task.report else task.signal
    best_signal = max(rows, key=lambda row: row[task.signal])  # type: ignore[arg-type, return-value]
    return {f"best-{task.signal} cell": float(best_signal[column]),  # type: ignore[arg-type]
            "table optimum": max(float(row[column]) for row in rows)}  # type: ignore[arg-type]


def _at(curve: Mapping[str, list[float]], column: str, t: float) -> float:
    """The incumbent's value of `column` at simulated time t (NaN before the first query)."""
    index = bisect.bisect_right(curve["seconds"], t) - 1
    return curve[column][index] if index >= 0 else math.nan


def _plot(bench: Benchmark, strategies: Sequence[str], records: Mapping[tuple[str, int], Mapping[str, Any]], *,
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
    ax.set_title(f"{bench.title}: mean and standard deviation over seeds")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", loc="lower right")
    return figure


def _mean_std(values: Sequence[float]) -> str:
    if not values:
        return "-"
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {spread:.2f}"


def _table(strategies: Sequence[str], records: Mapping[tuple[str, int], Mapping[str, Any]], *, task: TableTask,
           seeds: int) -> str:
    columns = list(task.report)
    head = ["strategy", "seeds", *(f"{c} (mean ± std)" for c in columns), f"{task.signal} of returned",
            "queries", "repeats", "wall per search"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in strategies:
        done = [r for (s, _), r in records.items() if s == name and r["returned"]]
        cells = [name, f"{len(done)}/{seeds}", *(_mean_std([r["returned"][c] for r in done]) for c in columns),
                 _mean_std([r["returned"]["signal"] for r in done]),
                 f"{statistics.mean(r['queries'] for r in done):.1f}" if done else "-",
                 f"{statistics.mean(r['repeats'] for r in done):.1f}" if done else "-",
                 format_time(statistics.mean(r["wall_seconds"] for r in done)) if done else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _defaults(name: str) -> str:
    """A strategy's own options and their defaults, as the benchmark runs it."""
    shared = set(inspect.signature(STRATEGIES.get("random")).parameters)
    options = [f"{p.name}={p.default}" for p in inspect.signature(STRATEGIES.get(name)).parameters.values()
               if p.name not in shared and p.default is not inspect.Parameter.empty]
    return ", ".join(options) or "no options"


def _section(bench: Benchmark, table: str, *, task: TableTask, settings: Mapping[str, Any],
             strategies: Sequence[str], records: Mapping[tuple[str, int], Mapping[str, Any]]) -> str:
    per_epoch, *per_query = task.time_columns
    charge = f"{settings['epochs']} x `{per_epoch}`" + "".join(f" + `{c}`" for c in per_query)
    total = sum(r["wall_seconds"] for r in records.values())
    references = ", ".join(f"{k} {v:.2f}" for k, v in _references(task).items())
    return "\n".join([
        f"Table `{task.table.path.name}` ({len(task.table)} architectures). Strategies see only `{task.signal}`; "
        f"each query is charged {charge} simulated seconds, up to {settings['budget']:g} s per search; a "
        f"repeated query is free; the query that would cross the budget is not made. A search returns the "
        f"architecture of best `{task.signal}` among those it queried; the table gives that architecture's "
        f"reported columns, which no strategy saw. Queries: charged ones; repeats: free repeated ones.",
        "",
        table,
        "",
        f"Reference values of `{task.report[0] if task.report else task.signal}`: {references}.",
        "Strategy settings (defaults, not tuned to this table): "
        + "; ".join(f"{name}: {_defaults(name)}" for name in strategies) + ".",
        f"Wall time of the searches: {format_time(total)} in all (one process, sequential).",
        "",
        f"![{bench.title}]({bench.name}.png)",
    ])


def _command(bench: Benchmark, strategies: Sequence[str], seeds: int, budget: float, out: Path,
             task_options: Mapping[str, Any], epochs: int | None) -> str:
    flags = [f"--strategies {','.join(strategies)}", f"--seeds {seeds}", f"--budget {budget:g}s", f"--out {out}"]
    flags += [f"--{k.replace('_', '-')} {v}" for k, v in task_options.items()]
    flags += [f"--epochs {epochs}"] if epochs else []
    return f"nasplat bench {bench.name} " + " ".join(flags)
