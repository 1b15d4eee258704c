"""Supernet weight step of DARTS against PC-DARTS: time and peak memory, in the papers' search setting.

Setting of the reference figures (the papers' search code on this kind of machine): full precision, C=16,
8 cells, 3x32x32 inputs, 10 classes, batch 64, 2 torch threads; one weight step = forward, backward and an
SGD update of the weights. DARTS is the supernet with every channel through every op (M=1) and no edge
normalisation; PC-DARTS sends 1/4 of the channels through the ops (M=4) and normalises edges.

Each configuration runs in its own fresh process (peak memory is that process's maximum resident set,
`ru_maxrss`, which includes the ~0.3 GB of the interpreter and torch) and times `--steps` steps after two
warm-up steps; the figure is the median step. The binarized supernets (weights only, and weights and
activations) are measured too, and so is the papers' design written plainly (bench/reference_supernet.py,
without nasplat's speed work) in the same rounds, so that the ratio to the reference is taken side by side
on the day's machine as well as against the fixed figures above. The rounds alternate the configurations,
and each measurement is kept in bench/out/supernet-step/, so a rerun goes on where it stopped.

    .venv/bin/python bench/supernet_step.py      # about 15 minutes on 2 cores
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out" / "supernet-step"
SECTION = "Supernet step: DARTS against PC-DARTS"
REFERENCE = {"darts": (12.8, 9.8), "pc-darts": (3.2, 3.7)}  # seconds per step, GB: the papers' code here
GOAL = 0.8  # nasplat's PC-DARTS at most this fraction of the reference's time and memory
CONFIGS = {  # name -> (partial channels M, edge normalisation, binarization)
    "darts": (1, False, "none"),
    "pc-darts": (4, True, "none"),
    "pc-darts-binary-weights": (4, True, "weights"),
    "pc-darts-binary-both": (4, True, "both"),
    "reference-darts": (1, False, "none"),
    "reference-pc-darts": (4, True, "none"),
}


def measure(name: str, *, steps: int, batch: int, channels: int, layers: int, threads: int) -> dict[str, float]:
    """One configuration in this process: median step seconds and peak resident GB."""
    import torch
    import torch.nn.functional as F

    from nasplat.registry import SPACES

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    m, edge_norm, binarize = CONFIGS[name]
    if name.startswith("reference-"):
        from reference_supernet import SearchNetwork

        net = SearchNetwork(channels=channels, layers=layers, partial=m, edge_normalization=edge_norm)
    else:
        space = SPACES.create("binary-cells", channels=channels, layers=layers, binarize=binarize)
        net = space.supernet(partial_channels=m, edge_normalization=edge_norm)
    optimizer = torch.optim.SGD(net.weight_parameters(), lr=0.025, momentum=0.9, weight_decay=3e-4)
    x = torch.randn(batch, 3, 32, 32)
    y = torch.randint(0, 10, (batch,))
    times = []
    for step in range(steps + 2):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        optimizer.step()
        if step >= 2:
            times.append(time.perf_counter() - start)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # ru_maxrss is in KiB on Linux
    return {"step_s": statistics.median(times), "steps": times, "peak_gb": peak_gb}


def run(name: str, round_: int, args: argparse.Namespace) -> dict[str, float]:
    cache = OUT / f"{name}-round{round_}-b{args.batch}-c{args.channels}-l{args.layers}-t{args.threads}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    command = [sys.executable, __file__, "--child", name, "--steps", str(args.steps), "--batch", str(args.batch),
               "--channels", str(args.channels), "--layers", str(args.layers), "--threads", str(args.threads)]
    load = os.getloadavg()[0]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{name} failed:\n{done.stderr[-3000:]}")
    figures = {**json.loads(done.stdout.strip().splitlines()[-1]), "load": max(load, os.getloadavg()[0])}
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(figures))
    print(f"round {round_} {name}: {figures['step_s']:.2f} s/step, peak {figures['peak_gb']:.2f} GB", flush=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--configs", default=",".join(CONFIGS),
                        help=f"comma-separated, of {', '.join(CONFIGS)} (pc-darts and reference-pc-darts at least)")
    args = parser.parse_args()
    names = args.configs.split(",")
    if set(names) - set(CONFIGS) or not {"pc-darts", "reference-pc-darts"} <= set(names):
        parser.error(f"--configs {args.configs}: name pc-darts, reference-pc-darts and any of {', '.join(CONFIGS)}")
    if args.child:
        print(json.dumps(measure(args.child, steps=args.steps, batch=args.batch, channels=args.channels,
                                 layers=args.layers, threads=args.threads)))
        return
    rows: dict[str, list[dict[str, float]]] = {name: [] for name in CONFIGS if name in names}
    for r in range(args.rounds):  # alternate, so that a slow phase of the shared machine hits every config
        for name in rows:
            rows[name].append(run(name, r, args))
    report(rows, args)


def report(rows: dict[str, list[dict[str, float]]], args: argparse.Namespace) -> None:
    from results import write_section

    step = {n: statistics.median(r["step_s"] for r in runs) for n, runs in rows.items()}
    peak = {n: max(r["peak_gb"] for r in runs) for n, runs in rows.items()}
    lines = [f"Setting: batch {args.batch}, C={args.channels}, {args.layers} cells, 3x32x32, 10 classes, "
             f"{args.threads} torch threads; one weight step = forward + backward + SGD. Median of "
             f"{args.rounds} rounds x {args.steps} timed steps, each round a fresh process per configuration "
             f"(rounds alternate the configurations). Peak = the process's maximum resident set. The machine's "
             f"1-minute load average during the measurements: up to "
             f"{max(r.get('load', 0) for runs in rows.values() for r in runs):.1f} (2 cores).", "",
             "| supernet | M | binarized | s/step | peak GB | reference s/step | reference GB |",
             "|---|---|---|---|---|---|---|"]
    for name in rows:
        m, _, binarize = CONFIGS[name]
        ref = REFERENCE.get(name.removeprefix("reference-"))
        lines.append(f"| {name} | {m} | {binarize} | {step[name]:.2f} | {peak[name]:.2f} | "
                     f"{ref[0] if ref else '-'} | {ref[1] if ref else '-'} |")
    def verdict(against: str, time_s: float, gb: float) -> str:
        t_ratio, m_ratio = step["pc-darts"] / time_s, peak["pc-darts"] / gb
        met = t_ratio <= GOAL and m_ratio <= GOAL
        return (f"nasplat's PC-DARTS against {against}: **{t_ratio:.2f}x** the time and **{m_ratio:.2f}x** the "
                f"memory (goal: at most {GOAL}x of both: {'met' if met else 'NOT met'}).")

    lines += ["", "- " + verdict("the papers' design run side by side (reference-pc-darts)",
                                 step["reference-pc-darts"], peak["reference-pc-darts"]),
              "- " + verdict("the issue's fixed reference figures", *REFERENCE["pc-darts"]),
              "- The side-by-side reference itself: " + " and ".join(
                  f"{n.removeprefix('reference-')} {step[n] / REFERENCE[n.removeprefix('reference-')][0]:.2f}x the time "
                  f"and {peak[n] / REFERENCE[n.removeprefix('reference-')][1]:.2f}x the memory"
                  for n in ("reference-pc-darts", "reference-darts") if n in rows) + " of the fixed reference figures."]
    if "darts" in rows:
        lines.append(f"- Within this run, nasplat's PC-DARTS takes {step['pc-darts'] / step['darts']:.2f}x the time "
                     f"and {peak['pc-darts'] / peak['darts']:.2f}x the memory of its DARTS.")
    command = "python bench/supernet_step.py" + ("" if list(rows) == list(CONFIGS) else f" --configs {args.configs}")
    write_section(SECTION, "\n".join(lines), command=command)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
