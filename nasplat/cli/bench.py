"""`nasplat bench`: strategies compared on a tabular benchmark under its published protocol."""
from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..units import parse_time
from .options import UsageError, comma_separated, console, device_table_option, positive_int


def add_parser(sub: Any) -> argparse.ArgumentParser:
    b = sub.add_parser("bench", help="benchmark strategies on a tabular benchmark under its published protocol")
    b.add_argument("name", choices=["nb201"], help="nb201: NAS-Bench-201 (CIFAR-10 valid table by default)")
    b.add_argument("--strategies", default="random,evolution,local,bayesian", help="comma-separated strategies")
    b.add_argument("--seeds", type=positive_int, default=100, help="seeds 0..N-1 of each strategy (default 100)")
    b.add_argument("--budget", default="12000s", help="simulated time per search (default 12000s)")
    b.add_argument("--out", default="bench/out/nb201", help="per-seed JSON files, runs and the plot")
    b.add_argument("--table", help="a CSV table in the schema of the shipped one (default: the shipped table)")
    b.add_argument("--signal", help="the column strategies see (default valid_acc_12ep)")
    b.add_argument("--report", help="comma-separated columns only reported; the first is plotted "
                                    "(default valid_acc_200ep,test_acc_200ep)")
    b.add_argument("--time-columns", help="seconds per training epoch[,seconds per evaluation] "
                                          "(default train_seconds_per_epoch,eval_seconds)")
    b.add_argument("--epochs", type=positive_int, help="training epochs charged per query (default 12)")
    b.add_argument("--device", help="table:COLUMN: every search reads latency from that device's column of the "
                                    "latency table (see --latency-table)")
    b.add_argument("--latency-table", help="the CSV table of --device (default: the space's, 14 devices)")
    b.add_argument("--latency", help="latency limit of every search: e.g. 5ms, or pNN, the NN-th percentile of the "
                                     "device's column (p25)")
    b.add_argument("--objective", default="accuracy", help="accuracy, or accuracy,latency (needs --device): "
                                                           "scores each search's front by its hypervolume")
    b.add_argument("--results", default="bench/RESULTS.md", help="the Markdown file whose section is rewritten")
    return b


def run(args: argparse.Namespace) -> int:
    from ..bench import BENCHMARKS, run_benchmark

    strategies = comma_separated(args.strategies)
    options = {k: v for k, v in (("table", args.table), ("signal", args.signal), ("report", args.report),
                                 ("time_columns", args.time_columns)) if v}
    bench = BENCHMARKS[args.name]
    objectives = comma_separated(args.objective)
    summary = run_benchmark(bench, strategies=strategies, seeds=args.seeds,
                            budget=parse_time(args.budget, what="--budget"), out=Path(args.out),
                            task_options=options, epochs=args.epochs, results=Path(args.results),
                            latency=_bench_latency(args, bench, options), objectives=objectives, console=console)
    print(summary.table)
    return 0


def _bench_latency(args: argparse.Namespace, bench: Any, task_options: Mapping[str, Any]) -> Any:
    """--device table:COLUMN [--latency-table CSV] [--latency LIMIT|pNN] as the benchmark takes them."""
    from ..bench import DeviceLatency
    from ..registry import SPACES
    from ..runner.components import device_table, latency_limit

    table = device_table_option(args)
    if table is None:
        if args.device or args.latency:
            raise UsageError("a benchmark reads latency from a device's table: give --device table:COLUMN "
                             "(e.g. table:lat_pixel3) with --latency")
        return None
    space = SPACES.create(bench.space)
    device = device_table(space, column=table["column"], path=table["path"], task=bench.task,
                          task_options=task_options)
    device.check_space(space)
    if not args.latency:
        return DeviceLatency(device)
    limit = latency_limit(args.latency, space=bench.space, table=table, task=bench.task, task_options=task_options)
    return DeviceLatency(device, limit.limit, args.latency)
