"""Bayesian study storage: Optuna's journal file in the run directory against an in-memory study, side by side.

The same NAS-Bench-201 search (bayesian TPE, 12,000 simulated seconds, latency read from the Pixel 3 column
under its 25th percentile, so that the free check also tells Optuna its rejected proposals) runs with
`storage=journal` and `storage=memory`, alternating, for each seed; the wall times are compared as a ratio and
the returned cells must be the same. A few minutes; nothing to resume.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from results import write_section
from rich.console import Console

from nasplat.api import start
from nasplat.constraints import Constraint
from nasplat.registry import SPACES
from nasplat.run import SearchConfig, read_journal
from nasplat.runner.components import device_table

COLUMN, PERCENTILE = "lat_pixel3", 25


def _search(storage: str, seed: int, limit: float, out: Path) -> tuple[float, str, int]:
    config = SearchConfig(space="nasbench201", strategy="bayesian", trials=None, budget=12000.0, seed=seed,
                          out=str(out), constraints=[Constraint("latency", limit)],
                          device_table={"column": COLUMN, "path": None}, strategy_options={"storage": storage})
    started = time.perf_counter()
    outcome = start(config, console=Console(quiet=True), sync=False, report=False)
    wall = time.perf_counter() - started
    results = [e for e in read_journal(outcome.run.journal_path) if e["event"] == "result" and e["status"] == "ok"]
    best = max(results, key=lambda e: e["metrics"]["accuracy"])
    return wall, str(best["arch"]), len(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    device = device_table(SPACES.create("nasbench201"), column=COLUMN)
    limit = device.percentile(PERCENTILE)
    rows, ratios = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            journal = _search("journal", seed, limit, Path(tmp) / f"journal-{seed}")
            memory = _search("memory", seed, limit, Path(tmp) / f"memory-{seed}")
            if journal[1:] != memory[1:]:
                raise SystemExit(f"seed {seed}: the two storages returned different searches")
            ratios.append(memory[0] / journal[0])
            rows.append(f"| {seed} | {journal[2]} | {journal[0]:.2f} | {memory[0]:.2f} | {ratios[-1]:.2f} |")
            print(rows[-1], flush=True)
    body = "\n".join([
        f"NAS-Bench-201, bayesian (TPE), 12,000 simulated seconds, latency from `{COLUMN}` under its "
        f"{PERCENTILE}th percentile ({limit:.2f} ms): the same search with the study in Optuna's journal file "
        f"(`storage=journal`, the default: resumable, optuna-dashboard) and in memory (`storage=memory`, what "
        f"`nasplat bench` uses), alternating per seed. Both return the same trials and cell on every seed.", "",
        "| seed | trials | journal (s) | memory (s) | memory / journal |", "|---|---|---|---|---|", *rows, "",
        f"Median ratio: **{statistics.median(ratios):.2f}**.",
    ])
    write_section("Bayesian study storage: journal file against memory", body)


if __name__ == "__main__":
    main()
