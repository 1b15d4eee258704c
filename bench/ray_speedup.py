"""Speed-up of the Ray runner on a real search: 20 TinyNet trials at --flops 24M, 2 workers against 1.

Both searches are `nasplat search tinynet --flops 24M --strategy random --trials 20 --seed 0 --runner ray
--cpus-per-trial 1` (one CPU and one torch thread per trial, the task's default epochs), run as
subprocesses and timed from start to exit. Random search with one seed asks the same 20 architectures
whatever the results, so the two searches train the same networks. The generated data is made (and cached
on disk) before either is timed. Each finished search's figures are kept in bench/out/ray-speedup/, so a
rerun skips it.

    .venv/bin/python bench/ray_speedup.py      # about 25 minutes on 2 cores
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from results import write_section

from nasplat.run import read_journal
from nasplat.tasks.classification import ClassificationTask

OUT = Path(__file__).resolve().parent / "out" / "ray-speedup"
SECTION = "Ray runner: speed-up of a 20-trial TinyNet search"
GOAL = 1.7


def search(workers: int, trials: int) -> dict[str, float]:
    """Runs (or reads back) the search at `workers`: its wall time and its trials' own seconds."""
    cache = OUT / f"workers-{workers}-trials-{trials}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    out = OUT / f"runs-{workers}"
    command = [str(Path(sys.executable).with_name("nasplat")), "search", "tinynet", "--flops", "24M", "--strategy",
               "random", "--trials", str(trials), "--seed", "0", "--runner", "ray", "--workers", str(workers),
               "--cpus-per-trial", "1", "--out", str(out)]
    start = time.time()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.time() - start
    if done.returncode != 0:
        sys.exit(f"the search at {workers} worker(s) failed ({done.returncode}):\n{done.stderr[-2000:]}")
    run = max(out.iterdir(), key=lambda p: p.stat().st_mtime)
    results = [e for e in read_journal(run / "journal.jsonl") if e["event"] == "result"]
    trained = [e for e in results if e["status"] == "ok"]
    figures = {"wall": wall, "trials": len(trained), "infeasible": len(results) - len(trained),
               "trial_seconds": sum(e["metrics"]["seconds"] for e in trained),
               "median_trial": statistics.median(e["metrics"]["seconds"] for e in trained),
               "archs": [e["arch"]["params"] for e in sorted(results, key=lambda e: e["trial"])]}
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(figures, indent=1))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    args = parser.parse_args()
    ClassificationTask().data()  # the generated data, made once and cached on disk, outside the timings
    one = search(1, args.trials)
    print(f"1 worker: {one['wall']:.0f} s", flush=True)
    two = search(2, args.trials)
    print(f"2 workers: {two['wall']:.0f} s", flush=True)
    speedup = one["wall"] / two["wall"]
    same = one["archs"] == two["archs"]
    rows = [f"| {w} | {f['wall']:.0f} s | {f['trials']} | {f['trial_seconds']:.0f} s | {f['median_trial']:.1f} s |"
            for w, f in ((1, one), (2, two))]
    body = "\n".join([
        f"`nasplat search tinynet --flops 24M --strategy random --trials {args.trials} --seed 0 --runner ray "
        "--cpus-per-trial 1 --workers W`: one CPU and one torch thread per trial, the task's default epochs, "
        "a Ray instance started for each search. Wall time from start to exit (Ray's start, the final "
        "TorchScript/ONNX export and the report included).",
        "",
        "| workers | wall time | trials | seconds inside trials (sum) | median trial |",
        "|---|---|---|---|---|",
        *rows,
        "",
        f"Speed-up at 2 workers: **{speedup:.2f}x** (goal at least {GOAL}x: {'met' if speedup >= GOAL else 'NOT met'}). "
        f"Same architectures in both searches: {'yes' if same else 'no'}. A trial at 2 workers takes "
        f"{two['median_trial'] / one['median_trial']:.2f}x as long as alone (median): two trainings share the "
        "machine's memory bandwidth and caches, and the driver shares its 2 cores.",
        f"torch threads per trial: 1; machine threads: {os.cpu_count()}.",
    ])
    write_section(SECTION, body, command="python bench/ray_speedup.py")
    print(body)


if __name__ == "__main__":
    main()
