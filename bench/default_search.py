"""The default search, as README's `make search` runs it: wall time and where the result lands.

Runs `nasplat search tinynet --flops 24M` (every setting at its default) as a subprocess, times it, and
checks the returned architecture's MACs at its target configuration against the budget.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from results import write_section

from nasplat.units import format_count, format_time

OUT = Path(__file__).parent / "out" / "default-search"
BUDGET = 24e6


def main() -> None:
    cli = str(Path(sys.executable).with_name("nasplat"))
    start = time.time()
    done = subprocess.run([cli, "search", "tinynet", "--flops", "24M", "--out", str(OUT)],
                          capture_output=True, text=True)
    wall = time.time() - start
    if done.returncode != 0:
        sys.exit(f"the default search failed ({done.returncode}):\n{done.stderr[-2000:]}")
    run = max(OUT.iterdir(), key=lambda p: p.stat().st_mtime)
    info = json.loads((run / "best" / "arch.json").read_text())
    results = [json.loads(line) for line in (run / "journal.jsonl").read_text().splitlines()]
    results = [e for e in results if e["event"] == "result"]
    trained = [e for e in results if e["status"] != "infeasible"]
    macs = info["costs"]["macs"]
    seconds = [e["metrics"]["seconds"] for e in trained if "seconds" in e["metrics"]]
    body = "\n".join([
        "| wall time | trials trained | infeasible asks | median s/trial | best | MACs at target | MACs / 24M | accuracy |",
        "|---|---|---|---|---|---|---|---|",
        f"| {format_time(wall)} | {len(trained)} | {len(results) - len(trained)} | "
        f"{sorted(seconds)[len(seconds) // 2]:.1f} | {info['describe'].split(' | ')[0]} | {format_count(macs)} | "
        f"{macs / BUDGET:.3f} | {info['metrics']['accuracy']:.2f}% |",
        "",
        f"Goal: within 10 minutes on 2 CPU cores, MACs in [0.9, 1.0] x 24M at the target configuration "
        f"{info['target']['input_shape']}: {'met' if wall <= 600 and 0.9 <= macs / BUDGET <= 1.0 else 'NOT met'}.",
        f"torch threads: {os.environ.get('OMP_NUM_THREADS', 'default')}. Wall time includes start-up, data generation (cached on disk after the first run), the width solves "
        "and the final TorchScript/ONNX export and report.",
    ])
    write_section("Default search (nasplat search tinynet --flops 24M)", body,
                  command="python bench/default_search.py")
    print(body)


if __name__ == "__main__":
    main()
