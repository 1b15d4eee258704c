"""Hardware-aware search on real devices' measurements: NAS-Bench-201 CIFAR-10 under latency limits of phones,
a Raspberry Pi, an ASIC, a server CPU and a GPU (the shipped HW-NAS-Bench / HELP latencies).

Two stages, each a set of `nasplat bench nb201` runs (per strategy and seed a JSON record under --out, skipped
when present, so a killed run resumes; the per-setting tables and plots go to --out/sections.md):

- constrained: each device at each limit (p25, p50: the column's percentiles), every strategy with --seeds
  seeds at --budget simulated seconds. A strategy checks the limit for free before proposing (the table
  answers), so no query is spent on an infeasible cell. Reported: each strategy's mean `valid_acc_200ep` of
  the returned cell, next to the best-by-signal feasible cell (the best a search that sees only the 12-epoch
  signal can return) and the feasible optimum. Goal: the best strategy within 0.25 points of the
  best-by-signal feasible cell on every device and limit.
- front: each device, --objective accuracy,latency, no limit: the hypervolume of each search's returned front
  (signal against latency) as a share of the table's true front. Goal: >= 0.97 for the best strategy.

Differs from the papers' setting: HW-NAS-Bench and HELP report latencies, not searches under them; the
strategies here are nasplat's defaults, untuned, and the limits are percentiles of each device's column.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from results import write_section

from nasplat.bench import BENCHMARKS, DeviceLatency, run_benchmark
from nasplat.registry import SPACES
from nasplat.runner.components import device_table
from nasplat.units import format_ms

DEVICES = ("lat_pixel3", "lat_raspi4", "lat_eyeriss", "lat_gold_6226", "lat_1080ti_1")
GAP = 0.25  # goal: the best strategy within this many points of the best-by-signal feasible cell
SHARE = 0.97  # goal: the best strategy's mean front hypervolume share


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", default=",".join(DEVICES))
    parser.add_argument("--limits", default="p25,p50")
    parser.add_argument("--strategies", default="random,evolution,local,bayesian")
    parser.add_argument("--front-strategies", default="random,bayesian,bayesian:sampler=nsga2",
                        help="those that take two objectives (name:key=value sets an option)")
    parser.add_argument("--seeds", type=int, default=30)
    parser.add_argument("--budget", type=float, default=12000.0, help="simulated seconds per search")
    parser.add_argument("--stages", default="constrained,front")
    parser.add_argument("--out", default="bench/out/hw")
    args = parser.parse_args()
    out = Path(args.out)
    bench, space = BENCHMARKS["nb201"], SPACES.create("nasbench201")
    devices = [d for d in args.devices.split(",") if d]
    stages = set(args.stages.split(","))
    sections = out / "sections.md"
    command = "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    if "constrained" in stages:
        strategies = args.strategies.split(",")
        rows, met = [], 0
        for column in devices:
            device = device_table(space, column=column)
            for label in args.limits.split(","):
                latency = DeviceLatency(device, device.percentile(float(label[1:])), label)
                found = run_benchmark(bench, strategies=strategies, seeds=args.seeds, budget=args.budget,
                                      out=out / f"{column}-{label}", task_options={}, results=sections,
                                      latency=latency)
                reference, optimum = found.references.values()
                best = max(found.means, key=found.means.get)
                gap = reference - found.means[best]
                met += gap <= GAP
                feasible = latency.feasible(_task())
                rank, needed = _ranks(out / f"{column}-{label}" / best, feasible, reference - GAP)
                rows.append([column, label, format_ms(latency.limit), str(len(feasible)), f"{reference:.2f}",
                             f"{optimum:.2f}", *(f"{found.means[s]:.2f}" for s in strategies), best,
                             f"{gap:+.2f}", "yes" if gap <= GAP else "**no**", f"{rank:.1f}", str(needed)])
        head = ["device", "limit", "ms", "feasible cells", "best-by-signal feasible", "feasible optimum",
                *strategies, "best", "reference - best", f"within {GAP}", "signal rank of best's cells (mean)",
                f"cells of top signal within {GAP}"]
        body = "\n".join([
            f"NAS-Bench-201 CIFAR-10, {args.budget:g} simulated seconds per search, {args.seeds} seeds per strategy "
            f"and setting; latency read from each device's column of the shipped table "
            f"(`--device table:COLUMN`), limits at the column's percentiles (`--latency pNN`). Figures: mean "
            f"`valid_acc_200ep` of the returned cell (the best by the 12-epoch signal among those a search "
            f"queried). Every strategy checks the limit for free before proposing: no query was spent on an "
            f"infeasible cell. Goal: the best strategy within {GAP} points of the best-by-signal feasible cell "
            f"on every device and limit: **met on {met} of {len(rows)}**.", "",
            _markdown(head, rows), "",
            "Why a setting misses: the reference is one cell, the best of thousands by the signal. Signal rank: "
            "where the best strategy's returned cells stand among the feasible cells by signal (1 = the "
            "reference itself), averaged over seeds. The last column counts the feasible cells that rank at the "
            f"top by signal with nothing below {GAP} points under the reference in between: a search must find "
            f"one of these (in about 120 queries) to return a cell within {GAP} points.",
            f"Per-setting tables (queries, repeats, test accuracy, wall time) and plots: `{sections}`."])
        write_section("Hardware-aware search: NAS-Bench-201 under real devices' latency limits", body,
                      command=command)
    if "front" in stages:
        strategies = args.front_strategies.split(",")
        rows, met = [], 0
        for column in devices:
            device = device_table(space, column=column)
            found = run_benchmark(bench, strategies=strategies, seeds=args.seeds, budget=args.budget,
                                  out=out / f"{column}-front", task_options={}, results=sections,
                                  latency=DeviceLatency(device), objectives=("accuracy", "latency"))
            best = max(found.fronts, key=found.fronts.get)
            met += found.fronts[best] >= SHARE
            size, hits = _front_hits(out / f"{column}-front" / best, latency_of=device)
            rows.append([column, *(f"{found.fronts[s]:.4f}" for s in strategies), best,
                         "yes" if found.fronts[best] >= SHARE else "**no**", str(size), f"{hits:.1f}"])
        body = "\n".join([
            f"NAS-Bench-201 CIFAR-10, `--objective accuracy,latency` with latency read from each device's column, "
            f"no limit, {args.budget:g} simulated seconds per search, {args.seeds} seeds. Figure: mean hypervolume "
            f"of the (12-epoch signal, latency) front of the cells a search queried, as a share of the front of "
            f"all 15,625 cells, both up to the true front's nadir. Goal: >= {SHARE} for the best strategy: "
            f"**met on {met} of {len(rows)} devices**.", "",
            _markdown(["device", *strategies, "best", f">= {SHARE}", "cells on the true front",
                       "of them on the best's front (mean)"], rows), "",
            "A search of about 120 queries has one or two of the true front's cells on its own front; the rest "
            "of its share comes from cells near the front. On the devices where random search's share is lowest "
            "(Eyeriss, the 1080 Ti) the best strategy's is too: the front there is harder to approach from "
            "random starts, and TPE's multi-objective sampler does not close the gap within the budget "
            "(NSGA-II, in the same run, does worse on every device)."])
        write_section("Hardware-aware search: accuracy-latency fronts on real devices", body, command=command)


def _ranks(folder: Path, feasible: dict[str, float], floor: float) -> tuple[float, int]:
    """The mean signal rank of the cells a strategy returned (1: the best feasible cell by signal), and how
    many of the top feasible cells by signal precede the first whose reported accuracy is below `floor`."""
    import json
    import statistics

    rows = _task().rows
    by_signal = sorted(feasible, key=lambda key: -float(rows[key]["valid_acc_12ep"]))  # type: ignore[arg-type]
    needed = next((i for i, key in enumerate(by_signal) if float(rows[key]["valid_acc_200ep"]) < floor),  # type: ignore
                  len(by_signal))
    signals = [float(rows[key]["valid_acc_12ep"]) for key in by_signal]  # type: ignore[arg-type]
    ranks = []
    for record in sorted(folder.glob("seed-*.json")):
        returned = json.loads(record.read_text())["returned"]["signal"]
        ranks.append(1 + sum(s > returned for s in signals))
    return statistics.mean(ranks), needed


def _front_hits(folder: Path, *, latency_of) -> tuple[int, float]:  # noqa: ANN001
    """How many cells the table's true (signal, latency) front holds, and how many of them the strategy's
    searches had on their returned fronts, on average."""
    import json
    import statistics

    from nasplat.bench import front

    rows, column = _task().rows, latency_of.column
    lat = latency_of.table.rows
    true = set(front([(float(rows[k]["valid_acc_12ep"]), float(lat[k][column])) for k in rows]))  # type: ignore
    hits = [len(true & {tuple(p) for p in json.loads(r.read_text())["front"]}) for r in folder.glob("seed-*.json")]
    return len(true), statistics.mean(hits)


def _task():  # noqa: ANN202 - the benchmark's table task
    from nasplat.registry import TASKS

    return TASKS.create("nasbench201").table


def _markdown(head: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
                      *("| " + " | ".join(row) + " |" for row in rows)])


if __name__ == "__main__":
    main()
