"""A run's journal read back, and its report: the Pareto plot, the search progress and a summary.

The report reads only the run directory (config.json, journal.jsonl, best/arch.json), so it can be
drawn for a finished, interrupted or still running search, and again at any later time.
"""
from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .arch import Arch
from .constraints import METRICS, Constraint, format_metric
from .run import read_journal
from .units import format_count

if TYPE_CHECKING:
    from .space import SearchSpace

JOURNAL = "journal.jsonl"
TOP = 5


def trial_results(events: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The latest "result" event of each trial (a resumed run may rerun one), in trial order."""
    latest = {event["trial"]: dict(event) for event in events if event.get("event") == "result"}
    return [latest[trial] for trial in sorted(latest)]


def best_result(results: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The ok result of highest accuracy, the earlier trial on ties (as the runner picks); None if none."""
    ranked = _ranked(results)
    return ranked[0] if ranked else None


def pareto_front(results: Sequence[Mapping[str, Any]], *,
                 objectives: Sequence[str] = ("accuracy", "macs")) -> list[dict[str, Any]]:
    """The ok results that no other dominates on `objectives` (accuracy higher, costs lower), ordered by the
    second objective; of results with equal values, the earliest trial only."""
    from .strategy import OBJECTIVES

    def values(result: Mapping[str, Any]) -> tuple[float, ...]:  # every objective as if maximised
        return tuple(_value(result, o) * (1 if OBJECTIVES[o] else -1) for o in objectives)

    scored = [r for r in _scored(results) if all(math.isfinite(_value(r, o)) for o in objectives)]
    front: list[dict[str, Any]] = []
    seen: set[tuple[float, ...]] = set()
    for result in sorted(scored, key=lambda r: r["trial"]):
        mine = values(result)
        dominated = any(all(a >= b for a, b in zip(values(other), mine)) and values(other) != mine
                        for other in scored)
        if not dominated and mine not in seen:
            seen.add(mine)
            front.append(result)
    return sorted(front, key=lambda r: tuple(_value(r, o) for o in objectives[1:2]) + (r["trial"],))


def summary_text(run_dir: str | Path) -> str:
    """The run's summary as Markdown (readable as plain text too): what ran, how it went, the best."""
    return _summary(_Run.open(Path(run_dir)))


def write_report(run_dir: str | Path) -> Path:
    """Writes report/pareto.png, report/progress.png and report/summary.md, and for an operation-space
    reduction (cp-nas, bnas, abandit) report/reduction.png; returns the report folder."""
    run = _Run.open(Path(run_dir))
    folder = run.path / "report"
    folder.mkdir(exist_ok=True)
    _save(_pareto_figure(run), folder / "pareto.png")
    _save(_progress_figure(run), folder / "progress.png")
    text = _summary(run) + "\n![Pareto front](pareto.png)\n\n![Search progress](progress.png)\n"
    rounds = abandoned_by_round(run.events)
    if rounds:
        _save(_reduction_figure(run, rounds), folder / "reduction.png")
        text += "\n![Operations abandoned, round by round](reduction.png)\n"
    best = run.best()
    if best is not None and run.space is not None and hasattr(run.space, "draw"):  # spaces of cells draw them
        drawn = run.space.draw(Arch.from_dict(best["arch"]), folder / "cells")
        text += "".join(f"\n![{p.stem} cell](cells/{p.name})\n" for p in drawn)
    _replace(folder / "summary.md", lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return folder


def _summary(run: _Run) -> str:
    config = run.config
    lines = [f"# Run {run.path.name}", ""]
    task_options = ", ".join(f"{k}={v}" for k, v in config.get("task_options", {}).items())
    lines += [
        f"- space: {run.space_name}{_options(config.get('space_options'))}",
        f"- strategy: {config.get('strategy', '?')}{_options(config.get('strategy_options'))}",
        f"- task: {run.task_name}" + (f" ({task_options})" if task_options else ""),
        f"- constraints: {', '.join(str(c) for c in run.constraints) or 'none'}",
        f"- trials: {run.count('ok')} ok, {run.count('infeasible')} infeasible, {run.count('failed')} failed"
        + (f", {run.count('stopped')} stopped early by the scheduler" if run.count("stopped") else "")
        + (f" (of {config['trials']} planned)" if config.get("trials") else "")
        + (f", {config['budget']:g} simulated seconds budgeted" if config.get("budget") else "")
        + (f", {config['epochs']} epochs each" if config.get("epochs") else ""),
        f"- status: {run.status()}",
        "",
    ]
    best = run.best()
    if best is None:
        lines += ["No trial finished ok, so there is no best architecture yet.", ""]
        return "\n".join(lines)
    metrics = best["metrics"]
    lines += [
        f"## Best architecture: trial {best['trial']}", "",
        f"`{run.describe(best['arch'])}`", "",
        f"- accuracy: {_accuracy(best):.2f}%",
        f"- MACs: {_count(metrics.get('macs'))}",
        f"- params: {_count(metrics.get('params'))}",
        *([f"- latency: {format_metric('latency', metrics['latency'])} measured"
           + (f" ({format_metric('latency', metrics['latency_predicted'])} predicted)"
              if "latency_predicted" in metrics else "")] if "latency" in metrics else []),
        *([f"- Pareto front of {', '.join(run.objectives)}: {len(pareto_front(run.results, objectives=run.objectives))}"
           f" architectures in report/pareto/"] if len(run.objectives) > 1 else []),
        f"- target input shape: {run.target_shape(best['arch'])}",
        "",
        f"## Top {TOP}", "",
        "| rank | trial | accuracy (%) | MACs | params | architecture |",
        "|---:|---:|---:|---:|---:|---|",
    ]
    for rank, result in enumerate(_ranked(run.results)[:TOP], start=1):
        lines.append(f"| {rank} | {result['trial']} | {_accuracy(result):.2f} | "
                     f"{_count(result['metrics'].get('macs'))} | {_count(result['metrics'].get('params'))} | "
                     f"`{run.describe(result['arch'])}` |")
    supernet = [e for e in run.events if e.get("event") == "supernet"]
    derived = run.last("derived")
    if derived is not None:
        lines += ["", "## Supernet", "",
                  f"{len(supernet)} checkpointed steps (epochs, rounds or sampled paths; see journal.jsonl), then "
                  f"derived: `{derived.get('genotype', '?')}`"]
    from .export import FILES

    # a run answered from a table trained nothing: its bundle has an architecture and no weights
    trained = (run.path / "best" / FILES["weights"]).exists()
    lines += ["", "## Use it", "",
              *([f"    nasplat export {run.path} --format json,torchscript,onnx --out DIR",
                 f"    nasplat retrain {run.path} --epochs N"] if trained else
                [f"    nasplat export {run.path} --target --out DIR   # the untrained network, to train in full"]),
              ""]
    retrain = run.last("retrain")
    if retrain is not None:
        accuracy = retrain.get("metrics", {}).get("accuracy")
        shown = f"{accuracy:.2f}%" if isinstance(accuracy, (int, float)) else "no accuracy recorded"
        lines += [f"Retrained for {retrain.get('epochs', '?')} epochs: {shown}.", ""]
    return "\n".join(lines)


@dataclass
class _Run:
    """What the report needs of a run directory, read once."""

    path: Path
    config: dict[str, Any]
    events: list[dict[str, Any]]
    results: list[dict[str, Any]]
    bundle: dict[str, Any] | None

    @classmethod
    def open(cls, path: Path) -> _Run:
        config_file = path / "config.json"
        config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.exists() else {}
        events = read_journal(path / JOURNAL)
        return cls(path, config, events, trial_results(events), _read_best(path / "best" / "arch.json"))

    @property
    def objectives(self) -> tuple[str, ...]:
        return tuple(self.config.get("objectives") or ("accuracy",))

    @property
    def space_name(self) -> str:
        if "space" in self.config:
            return str(self.config["space"])
        return self.results[0]["arch"]["space"] if self.results else "?"

    @property
    def task_name(self) -> str:
        """config.json's task; None there means the space's default task."""
        if self.config.get("task"):
            return str(self.config["task"])
        return f"{self.space.default_task} (the space's default)" if self.space else "the space's default"

    @property
    def constraints(self) -> list[Constraint]:
        return [Constraint.from_dict(c) for c in self.config.get("constraints", [])]

    def count(self, status: str) -> int:
        return sum(result.get("status") == status for result in self.results)

    def best(self) -> dict[str, Any] | None:
        """The trial in best/ when that bundle names one of the journal's ok trials (so the summary
        describes what `nasplat export` gives), else the journal's best."""
        trial = (self.bundle or {}).get("metrics", {}).get("trial")
        exported = [r for r in _scored(self.results)
                    if r["trial"] == trial and r["arch"] == (self.bundle or {}).get("arch")]
        return exported[0] if exported else best_result(self.results)

    def last(self, kind: str) -> dict[str, Any] | None:
        return next((e for e in reversed(self.events) if e.get("event") == kind), None)

    def status(self) -> str:
        end = self.last("end")
        start = self.last("start")
        if end is None:
            return "no end recorded (still running, or killed)"
        took = end.get("time", 0) - start.get("time", 0) if start else None
        return f"ended ({end.get('reason', '?')})" + (f" after {took:.0f}s" if took is not None else "")

    def describe(self, arch: Mapping[str, Any]) -> str:
        """The space's readable form of an architecture; the bundle's when it is that architecture."""
        if self.bundle and self.bundle.get("arch") == dict(arch) and "describe" in self.bundle:
            return str(self.bundle["describe"])
        parsed = Arch.from_dict(arch)
        return self.space.describe(parsed) if self.space else " ".join(f"{k}={v}" for k, v in parsed.items())

    def target_shape(self, arch: Mapping[str, Any]) -> str:
        if self.bundle and self.bundle.get("arch") == dict(arch) and "target" in self.bundle:
            return "x".join(str(n) for n in self.bundle["target"]["input_shape"])
        if self.space is None:
            return "unknown"
        return "x".join(str(n) for n in self.space.target(Arch.from_dict(arch)).input_shape)

    @cached_property
    def space(self) -> SearchSpace | None:
        """The run's space, or None where it is not installed: a report must not fail for want of it."""
        from .registry import SPACES

        try:
            return SPACES.get(self.space_name)(**self.config.get("space_options", {}))
        except (LookupError, ImportError):
            return None


def _read_best(path: Path) -> dict[str, Any] | None:
    """best/arch.json, parsed without the checks of nasplat.export (no torch needed to read a report);
    a missing or damaged one only means the report describes the best trial from the journal."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _pareto_figure(run: _Run) -> Any:
    """Accuracy against the run's cost objective (latency in an accuracy,latency search), else MACs."""
    from matplotlib.figure import Figure

    cost = run.objectives[1] if len(run.objectives) > 1 else "macs"
    label = {"macs": "MACs (fvcore 'flops')", "latency": "latency (ms)", "params": "params"}[cost]
    figure = Figure(figsize=(7, 4.5), layout="constrained")
    ax = figure.add_subplot()
    scored = [r for r in _scored(run.results) if _on_log_axis(r, cost)]
    infeasible = [r for r in run.results if r.get("status") == "infeasible" and _on_log_axis(r, cost)]
    limits = [c.limit for c in run.constraints if c.metric == cost]
    if scored:
        ax.scatter([_value(r, cost) for r in scored], [_accuracy(r) for r in scored], s=18, color="tab:blue",
                   alpha=0.6, label="trial")
        front = pareto_front(scored, objectives=("accuracy", cost))
        ax.plot([_value(r, cost) for r in front], [_accuracy(r) for r in front], "o-", color="tab:orange",
                drawstyle="steps-post", markersize=6, label="Pareto front")
    else:
        ax.set_ylim(0, 100)
        ax.text(0.5, 0.5, "no trial finished ok", ha="center", va="center", transform=ax.transAxes)
    best = run.best()
    if best is not None and _on_log_axis(best, cost):
        ax.scatter([_value(best, cost)], [_accuracy(best)], marker="*", s=250, color="tab:red", zorder=5,
                   label=f"best (trial {best['trial']})")
    if infeasible:  # no accuracy: drawn along the bottom, at their cost
        ax.scatter([_value(r, cost) for r in infeasible], [0.03] * len(infeasible), marker="x", color="tab:gray",
                   transform=ax.get_xaxis_transform(), label="infeasible")
    for constraint in run.constraints:
        if constraint.metric == cost:
            ax.axvline(constraint.limit, linestyle="--", color="black", linewidth=1, label=str(constraint))
    xs = [_value(r, cost) for r in scored + infeasible] + limits
    ax.set_xscale("log")
    default = (1, 100) if cost == "latency" else (1e6, 1e9)
    ax.set_xlim(min(xs, default=default[0]) / 1.3, max(xs, default=default[1]) * 1.3)  # autoscale skips the bottom row
    ax.set_xlabel(label)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{run.path.name}: accuracy vs {METRICS[cost]}")
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small", loc="best")
    return figure


def _progress_figure(run: _Run) -> Any:
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(7, 4.5), layout="constrained")
    ax = figure.add_subplot()
    scored = _scored(run.results)
    if scored:
        trials = [r["trial"] for r in scored]
        accuracies = [_accuracy(r) for r in scored]
        ax.scatter(trials, accuracies, s=18, color="tab:blue", alpha=0.6, label="trial accuracy")
        ax.plot(trials, list(itertools.accumulate(accuracies, max)), color="tab:red", drawstyle="steps-post",
                label="best so far")
    else:
        ax.set_ylim(0, 100)
        ax.text(0.5, 0.5, "no trial finished ok", ha="center", va="center", transform=ax.transAxes)
    unscored = [r for r in run.results if r.get("status") in ("infeasible", "failed", "stopped")]
    if unscored:
        ax.scatter([r["trial"] for r in unscored], [0.03] * len(unscored), marker="x", color="tab:gray",
                   transform=ax.get_xaxis_transform(), label="infeasible, failed or stopped")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{run.path.name}: search progress")
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small", loc="best")
    return figure


def abandoned_by_round(events: Sequence[Mapping[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    """Round -> what each edge abandoned in it, with the scores of all its ops then (`abandoned` of the
    supernet events of a reduction strategy; records without those scores are left out)."""
    rounds: dict[int, list[dict[str, Any]]] = {}
    for event in events:
        if event.get("event") == "supernet":
            for record in event.get("abandoned", ()):
                if isinstance(record.get("scores"), Mapping):
                    rounds.setdefault(int(record["round"]), []).append(dict(record))
    return dict(sorted(rounds.items()))


def _reduction_figure(run: _Run, rounds: Mapping[int, Sequence[Mapping[str, Any]]]) -> Any:
    """One panel per round: edges down, ops across, each edge's scores scaled to its own range (the
    lowest 0, the highest 1: abandoning compares ops within an edge), x on the op it abandoned, blank where an
    op was gone already."""
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    ops: list[str] = []
    edges: list[tuple[str, int]] = []
    for records in rounds.values():
        for record in records:
            ops += [op for op in record["scores"] if op not in ops]
            if (record["group"], record["edge"]) not in edges:
                edges.append((record["group"], record["edge"]))
    columns = min(len(rounds), 4)
    rows = math.ceil(len(rounds) / columns)
    figure = Figure(figsize=(1.2 + columns * (0.32 * len(ops) + 0.9), 1.4 + rows * (0.2 * len(edges) + 1.6)),
                    layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False, sharey=True)
    cmap = colormaps["viridis"].with_extremes(bad="#eeeeee")
    image = None
    for ax, (round_, records) in zip(axes.flat, rounds.items()):
        grid = np.full((len(edges), len(ops)), np.nan)
        dropped = []
        for record in records:
            row = edges.index((record["group"], record["edge"]))
            scores = {op: (math.inf if s is None else float(s)) for op, s in record["scores"].items()}
            finite = [s for s in scores.values() if math.isfinite(s)]
            low, high = (min(finite), max(finite)) if finite else (0.0, 0.0)
            for op, score in scores.items():
                grid[row, ops.index(op)] = 1.0 if score == math.inf else \
                    (score - low) / (high - low) if high > low else 0.5
            dropped.append((ops.index(record["op"]), row))
        image = ax.imshow(grid, cmap=cmap, vmin=0, vmax=1, aspect="auto", interpolation="nearest")
        ax.scatter(*zip(*dropped), marker="x", color="red", s=30, linewidths=1.5)
        ax.set_title(f"round {round_}: {len(records[0]['scores'])} ops left", fontsize=9)
        ax.set_xticks(range(len(ops)), ops, rotation=90, fontsize=7)
    for ax in axes[:, 0]:  # shared along each row
        ax.set_yticks(range(len(edges)), [f"{g} {e}" for g, e in edges], fontsize=6)
    for ax in list(axes.flat)[len(rounds):]:
        ax.axis("off")
    figure.colorbar(image, ax=axes, shrink=0.6, label="score within the edge (0 lowest, 1 highest)")
    figure.suptitle(f"{run.path.name}: operations abandoned per edge (red x), round by round")
    return figure


def _save(figure: Any, path: Path) -> None:
    _replace(path, lambda tmp: figure.savefig(tmp, format="png", dpi=120))


def _replace(path: Path, write: Callable[[Path], object]) -> None:
    """Writes through `write(tmp)` then renames, so a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _scored(results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The ok results that carry an accuracy, in trial order."""
    return [dict(r) for r in results
            if r.get("status") == "ok" and isinstance(r.get("metrics", {}).get("accuracy"), (int, float))]


def _ranked(results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return sorted(_scored(results), key=lambda r: (-_accuracy(r), r["trial"]))


def _accuracy(result: Mapping[str, Any]) -> float:
    return float(result["metrics"]["accuracy"])


def _value(result: Mapping[str, Any], metric: str) -> float:
    value = result.get("metrics", {}).get(metric)
    return float(value) if isinstance(value, (int, float)) else math.inf


def _on_log_axis(result: Mapping[str, Any], metric: str) -> bool:
    return 0 < _value(result, metric) < math.inf


def _count(value: Any) -> str:
    return format_count(value) if isinstance(value, (int, float)) else "?"


def _options(options: Mapping[str, Any] | None) -> str:
    return f" ({', '.join(f'{k}={v}' for k, v in options.items())})" if options else ""
