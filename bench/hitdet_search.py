"""Hit-Detector's central claim on the generated detection set: searching backbone, neck and head jointly
against searching only the backbone under a fixed FPN neck and head, at the same MAC budget; mAP and search time.

Both searches are `nasplat search hitdet --strategy hitdet --flops 2G` (default space, costed at 3 x 512 x 512),
one with `components=backbone,neck,head` (screening of each component, then the joint search), one with
`components=backbone` (screening and search of the backbone alone; the neck is the plain FPN's 1 x 1 laterals
and 3 x 3 fused convolutions, the head two 3 x 3 convolutions, which cost 1.36G of the 2G). Each derived
detector is then retrained from scratch with seeds 0..2 on the task's recipe and scored by COCO mAP@[.5:.95]
and mAP@.5 (pycocotools) on the validation images. Search runs live in bench/out/hitdet/search-*/ and every
retraining's metrics in bench/out/hitdet/retrain/, so a killed run resumes where it stopped.

How this differs from the paper: COCO at 1333 x 800 with Faster R-CNN, 8 GPUs and a 12-epoch schedule; here
a one-stage FCOS-style detector, generated shapes at 64 px, a few search epochs and a short retraining on
one torch thread (two benchmarks share the 2 cores).

    .venv/bin/python bench/hitdet_search.py            # about an hour on one core, resumable
    .venv/bin/python bench/hitdet_search.py --smoke    # tiny settings, a few minutes; prints, writes no section
"""
from __future__ import annotations

import argparse
import os
import statistics
from collections.abc import Sequence
from pathlib import Path

import torch
from results import write_section
from searches import cached_metrics, derived_events, search_seconds

from nasplat.arch import Arch
from nasplat.constraints import Constraint
from nasplat.registry import SPACES
from nasplat.run import SearchConfig
from nasplat.runner.components import build_task

OUT = Path(__file__).resolve().parent / "out" / "hitdet"
SECTION = "Hit-Detector: joint backbone, neck and head search against a backbone-only search, at equal MACs"
FLOPS = "2G"
TASK = {"base_resolution": 64, "limit_train": 1000, "limit_val": 200, "batch_size": 32}  # the searches'
# the retraining's: all 4,000 generated training images (on 1,000 the FPN detector overfit within 10 epochs), and
# a higher peak lr than the task's 2e-3 (in a short unrecorded probe on the FPN detector, 2e-3 barely learned)
RETRAIN = {"base_resolution": 64, "limit_val": 200, "batch_size": 32, "lr": 8e-3}
SEARCH = {"screen_epochs": 3, "search_epochs": 6, "batch_size": 32, "eval_limit": 100}
SMOKE_SPACE = {"stem": 8, "stages": "8:1,16:1,24:1,32:1", "neck": 16, "head_layers": 1}
SMOKE_TASK = {"base_resolution": 64, "limit_train": 64, "limit_val": 32, "batch_size": 16}
SMOKE_SEARCH = {"screen_epochs": 1, "search_epochs": 1, "warmup_epochs": 0, "batch_size": 16, "eval_limit": 16}
VARIANTS = {"joint": "backbone,neck,head", "backbone-only": "backbone"}


def searched(components: str, *, space: dict, task: dict, options: dict, out: Path) -> tuple[Arch, float, dict]:
    """The derived detector, the search's wall seconds and the ops each component's screening kept; the run in
    `out` is resumed, or started, as needed."""
    events = derived_events(SearchConfig(space="hitdet", strategy="hitdet", trials=1, epochs=1, seed=0, out=str(out),
                                         constraints=[Constraint.parse("macs", FLOPS)], space_options=space,
                                         task_options=task, strategy_options={**options, "components": components},
                                         export=[]))
    kept = {e["screened"]: e["kept"] for e in events if e["event"] == "supernet" and "screened" in e}
    return (Arch.from_dict(next(e for e in events if e["event"] == "derived")["arch"]), search_seconds(events), kept)


def retrained(space, task, arch: Arch, *, seed: int, epochs: int, out: Path) -> dict:
    metrics, fresh = cached_metrics(out / f"{arch.key()}-seed{seed}-e{epochs}.json", lambda: task.train_eval(
        space.build(arch, num_classes=task.num_classes), input_size=task.input_size(1.0), epochs=epochs, seed=seed))
    if fresh:
        print(f"  seed {seed}: mAP {metrics['map']:.2f} mAP50 {metrics['map50']:.2f} "
              f"({metrics['train_seconds']:.0f}s)", flush=True)
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="retraining seeds per detector")
    parser.add_argument("--epochs", type=int, default=12, help="retraining epochs")
    parser.add_argument("--smoke", action="store_true", help="tiny settings, to check that the script runs")
    args = parser.parse_args()
    torch.set_num_threads(1)  # one core each: this and another benchmark share the machine's two
    space_options, task_options, retrain_options, options = ((SMOKE_SPACE, SMOKE_TASK, SMOKE_TASK, SMOKE_SEARCH)
                                                             if args.smoke else ({}, TASK, RETRAIN, SEARCH))
    out = OUT / ("smoke" if args.smoke else "full")
    space = SPACES.create("hitdet", **space_options)
    task = build_task(SearchConfig(space="hitdet", task_options=retrain_options), space)
    rows = []
    for name, components in VARIANTS.items():
        arch, seconds, kept = searched(components, space=space_options, task=task_options, options=options,
                                       out=out / f"search-{name}")
        print(f"{name}: searched in {seconds:.0f}s, {space.cost(arch) / 1e9:.2f}G MACs: {space.describe(arch)}",
              flush=True)
        rows.append((name, arch, seconds, kept, [retrained(space, task, arch, seed=s, epochs=args.epochs,
                                                           out=out / "retrain") for s in range(args.seeds)]))
    report(rows, args=args, space=space, task_options=task_options, retrain_options=retrain_options, options=options)


def _mean_sd(values: Sequence[float]) -> str:
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}" if len(values) > 1 else f"{values[0]:.2f}"


def report(rows: list, *, args: argparse.Namespace, space, task_options: dict, retrain_options: dict,
           options: dict) -> None:
    lines = [f"Searches: `nasplat search hitdet --strategy hitdet --flops {FLOPS}`, strategy options {options}, "
             f"one torch thread. Task: the generated detection set, {task_options}. MACs at 3 x 512 x 512. Each "
             f"derived detector retrained from scratch with {retrain_options} for {args.epochs} epochs, seeds "
             f"0..{args.seeds - 1}; COCO mAP@[.5:.95] and mAP@.5 (%) on the validation images, mean ± sd.", "",
             "| search | search (s) | MACs | mAP | mAP@.5 | retraining (s, mean) | derived |",
             "|---|---:|---:|---|---|---:|---|"]
    for name, arch, seconds, _, runs in rows:
        lines.append(f"| {name} | {seconds:.0f} | {space.cost(arch) / 1e9:.2f}G | "
                     f"{_mean_sd([r['map'] for r in runs])} | {_mean_sd([r['map50'] for r in runs])} | "
                     f"{statistics.mean(r['train_seconds'] for r in runs):.0f} | "
                     f"`{space.describe(arch)}` |")
    lines += ["", "Ops each screening kept (in order of group norm):", ""]
    for name, _, _, kept, _ in rows:
        lines += [f"- {name}, {component}: {', '.join(ops)}" for component, ops in kept.items()]
    (_, joint, joint_s, _, joint_runs), (_, alone, alone_s, _, alone_runs) = rows
    wins = sum(a["map"] > b["map"] for a, b in zip(joint_runs, alone_runs))
    lines += ["", f"Joint against backbone-only: mAP {statistics.mean(r['map'] for r in joint_runs):.2f} against "
                  f"{statistics.mean(r['map'] for r in alone_runs):.2f} (higher in {wins} of {len(joint_runs)} "
                  f"same-seed pairs), at {space.cost(joint) / space.cost(alone):.2f}x the MACs and "
                  f"{joint_s / alone_s:.2f}x the search time.",
              f"Load average (1 min) at the end: {os.getloadavg()[0]:.2f} on 2 CPUs (this bench uses one)."]
    if not args.smoke:  # tiny figures stay out of RESULTS.md
        write_section(SECTION, "\n".join(lines), command="python bench/hitdet_search.py")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
