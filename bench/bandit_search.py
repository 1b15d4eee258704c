"""BNAS against PC-DARTS on binary cells: search wall time side by side, then the derived genotypes retrained.

BNAS's claim is a search 40% faster than PC-DARTS's at similar accuracy. Both search the same space on the
same data (`nasplat search binary-cells --strategy S`, the settings below): PC-DARTS with bench/
oneshot_search.py's settings (6 bi-level epochs), BNAS with 2 warm-up epochs of the same bi-level training and
then its UCB rounds (T = 1: 35 sampled paths of 6 batches each). The search time is the wall time from the
run's start to its derived genotype, summed over sessions when a run was resumed. Each derived genotype is then
retrained from scratch with the same seeds and epochs (oneshot_search.py's `retrained`, whose cache it shares,
since space and task are the same). Search runs live in bench/out/bandit/, so a rerun resumes or reuses them.

How this differs from the papers: CIFAR-10 on a GPU, C=16 and 8 cells, 50 PC-DARTS epochs and a 600-epoch
retraining of 20 cells; here C=8 and 5 cells with binarized weights, 4,000 generated images at 32 px, and the
evaluated network itself retrained for 3 epochs, on one torch thread (two benchmarks share the 2 cores).

    .venv/bin/python bench/bandit_search.py            # 15 minutes on one core with the retrainings cached
                                                       # by bench/oneshot_search.py, 25 without
    .venv/bin/python bench/bandit_search.py --smoke    # tiny settings, a few minutes; prints, writes no section
"""
from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path
from typing import Any
import torch
from oneshot_search import SPACE, STRATEGY_OPTIONS, TASK, _mean_sd, retrained
from results import write_section
from searches import derived_events, search_seconds

from nasplat.arch import Arch
from nasplat.registry import SPACES
from nasplat.run import SearchConfig
from nasplat.runner.components import build_task

OUT = Path(__file__).resolve().parent / "out" / "bandit"
SECTION = "BNAS against PC-DARTS on binary cells: search time and retrained accuracy"
OPTIONS = {"pc-darts": STRATEGY_OPTIONS["pc-darts"],
           "bnas": {"warmup_epochs": 2, "repeats": 1, "train_steps": 6, "batch_size": 64, "eval_limit": 250}}
SMOKE_SPACE = {"channels": 4, "layers": 3, "binarize": "weights"}
SMOKE_TASK = {"limit_train": 64, "limit_val": 32, "batch_size": 16}
SMOKE_OPTIONS = {"pc-darts": {"search_epochs": 1, "batch_size": 16, "eval_limit": 16},
                 "bnas": {"warmup_epochs": 1, "train_steps": 1, "batch_size": 16, "eval_limit": 16}}


def search(strategy: str, *, space: dict, task: dict, options: dict, out: Path) -> tuple[Arch, float]:
    """The derived genotype and the search's wall seconds; the run in `out` is resumed, or started, as needed."""
    events = derived_events(SearchConfig(space="binary-cells", strategy=strategy, trials=1, epochs=1, seed=0,
                                         out=str(out), space_options=space, task_options=task,
                                         strategy_options=options))
    return Arch.from_dict(next(e for e in events if e["event"] == "derived")["arch"]), search_seconds(events)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="retraining seeds per genotype")
    parser.add_argument("--epochs", type=int, default=3, help="retraining epochs")
    parser.add_argument("--smoke", action="store_true", help="tiny settings, to check that the script runs")
    args = parser.parse_args()
    torch.set_num_threads(1)  # one core each: this and another benchmark share the machine's two
    space_options, task_options = (SMOKE_SPACE, SMOKE_TASK) if args.smoke else (SPACE, TASK)
    options = SMOKE_OPTIONS if args.smoke else OPTIONS
    out = OUT / ("smoke" if args.smoke else "search")
    space = SPACES.create("binary-cells", **space_options)
    task = build_task(SearchConfig(space="binary-cells", task_options=task_options), space)
    rows = []
    for strategy in ("pc-darts", "bnas"):
        arch, seconds = search(strategy, space=space_options, task=task_options, options=options[strategy],
                               out=out / strategy)
        print(f"{strategy}: searched in {seconds:.0f}s: {space.describe(arch)}", flush=True)
        rows.append((strategy, arch, seconds,
                     [retrained(space, task, arch, seed=s, epochs=args.epochs) for s in range(args.seeds)]))
    report(rows, args, space, space_options, task_options, options)


def report(rows: list, args: argparse.Namespace, space: Any, space_options: dict, task_options: dict,
           options: dict) -> None:
    lines = [f"Space: binary-cells {space_options}; task: generated 10-class set at 32 px, {task_options}. "
             f"Strategy settings: {options}. Search time: wall seconds to the derived genotype, one torch thread. "
             f"Each genotype retrained from scratch for {args.epochs} epochs with seeds 0..{args.seeds - 1} (the "
             f"task's AdamW one-cycle schedule).", "",
             "| strategy | search (s) | genotype | MACs (FP + BOPs/64) | accuracy over seeds (%) |",
             "|---|---:|---|---|---|"]
    for strategy, arch, seconds, runs in rows:
        lines.append(f"| {strategy} | {seconds:.0f} | `{space.describe(arch)}` | {runs[0]['macs'] / 1e6:.2f}M | "
                     f"{_mean_sd([r['accuracy'] for r in runs])} |")
    (_, _, pc_seconds, pc_runs), (_, _, bnas_seconds, bnas_runs) = rows
    lines += ["", f"BNAS's search took {bnas_seconds / pc_seconds:.2f}x PC-DARTS's time (the paper: 0.6x); its "
                  f"genotype retrained to {statistics.mean(r['accuracy'] for r in bnas_runs):.2f}% against "
                  f"{statistics.mean(r['accuracy'] for r in pc_runs):.2f}%.",
              f"Load average (1 min) at the end: {os.getloadavg()[0]:.2f} on 2 CPUs (each search uses one)."]
    if not args.smoke:  # tiny figures stay out of RESULTS.md
        write_section(SECTION, "\n".join(lines), command="python bench/bandit_search.py")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
