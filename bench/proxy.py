"""Does the classification proxy rank TinyNet architectures, and does it rank them the same twice?

Two groups of random TinyNet architectures, each trained with two seeds at the default recipe:
- "budgets": one architecture per log-spaced MACs budget from 10M to 100M (random r and d, w solved);
- "24M": architectures at the fixed 24M budget (the default search's).
For each group: the spread (max - min of the seed-mean accuracies) and the seed-to-seed Spearman rank
correlation. Every (architecture, seed) result is cached in bench/out/, so a rerun resumes.

    .venv/bin/python bench/proxy.py            # about an hour on 2 cores
    .venv/bin/python bench/proxy.py --archs 4  # a pilot
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from results import write_section
from scipy.stats import spearmanr

from nasplat.arch import Arch
from nasplat.constraints import Constraint
from nasplat.cost import measure
from nasplat.search_spaces.tinynet import D_RANGE, R_RANGE, W_RANGE, TinyNetSpace, resolution
from nasplat.tasks.classification import DEFAULT_EPOCHS, ClassificationTask
from nasplat.tasks.datasets import SyntheticSpec

OUT = Path(__file__).resolve().parent / "out"
LOW, HIGH, FIXED = 10e6, 100e6, 24e6
MIN_USE = 0.7  # an architecture must use this much of its budget (the width caps at 1.2 for small r, d)
SECTION = "Classification proxy: architecture signal"


def budgets(count: int) -> list[float]:
    return [LOW * (HIGH / LOW) ** (i / max(1, count - 1)) for i in range(count)]


def macs(space: TinyNetSpace, r: float, d: float, w: float) -> float:
    return measure(space, space.arch({"r": round(r, 3), "d": round(d, 3), "w": w}))["macs"]


def largest_r(space: TinyNetSpace, d: float, budget: float) -> float | None:
    """The largest r at which depth d fits the budget at the narrowest width (None: not even r=0.3)."""
    if macs(space, R_RANGE.low, d, W_RANGE.low) > budget:
        return None
    lo, hi = R_RANGE.low, R_RANGE.high
    if macs(space, hi, d, W_RANGE.low) <= budget:
        return hi
    for _ in range(7):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if macs(space, mid, d, W_RANGE.low) <= budget else (lo, mid)
    return lo


def sample(space: TinyNetSpace, budget: float, rng: random.Random) -> Arch:
    """A random (r, d) that fits the budget, with w solved to use it: d uniform over its range, then r
    uniform over the resolutions at which that depth still fits."""
    limit = [Constraint("macs", budget)]
    while True:
        d = rng.uniform(D_RANGE.low, D_RANGE.high)
        r_max = largest_r(space, d, budget)
        if r_max is None:
            continue
        arch = space.complete({"r": rng.uniform(R_RANGE.low, r_max), "d": d}, constraints=limit)
        used = measure(space, arch)["macs"] / budget
        if MIN_USE <= used <= 1:
            return arch


class Cache:
    """Results by (architecture key, seed) in one JSON file, rewritten atomically after each training."""

    def __init__(self, path: Path):
        self.path = path
        self.data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}

    def get(self, key: str) -> Any:
        return self.data.get(key)

    def put(self, key: str, value: Any) -> None:
        self.data[key] = value
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, sort_keys=True))
        tmp.replace(self.path)


def settings_key(task: ClassificationTask, epochs: int) -> str:
    """Results are only reused under the same data, recipe and epochs."""
    text = json.dumps({"task": task.describe(), "spec": SyntheticSpec().key(), "epochs": epochs}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def architectures(space: TinyNetSpace, cache: Cache, count: int) -> dict[str, list[tuple[float, Arch]]]:
    groups = {"budgets": budgets(count), "24M": [FIXED] * count}
    out: dict[str, list[tuple[float, Arch]]] = {}
    for name, group in groups.items():
        out[name] = []
        for i, budget in enumerate(group):
            key = f"arch/{name}/{i}/{budget:.0f}"
            if cache.get(key) is None:
                arch = sample(space, budget, random.Random(f"{name}-{i}"))
                cache.put(key, arch.to_json())
            out[name].append((budget, Arch.from_json(cache.get(key))))
    return out


def train(space: TinyNetSpace, task: ClassificationTask, arch: Arch, seed: int, epochs: int) -> dict[str, float]:
    model = space.build(arch, num_classes=task.num_classes)
    return task.train_eval(model, input_size=task.input_size(space.proxy_scale(arch)), epochs=epochs, seed=seed)


def summarise(space: TinyNetSpace, task: ClassificationTask, rows: list[dict[str, Any]], seeds: int) -> str:
    means = [statistics.mean(r["accuracy"]) for r in rows]
    rho = spearmanr([r["accuracy"][0] for r in rows], [r["accuracy"][1] for r in rows])[0] if seeds > 1 else math.nan
    by_budget = spearmanr([r["budget"] for r in rows], means)[0] if len({r["budget"] for r in rows}) > 1 else None
    lines = ["| budget | MACs | r | d | w | proxy input | " + " | ".join(f"seed {s}" for s in range(seeds))
             + " | mean | s / training |", "|" + "---|" * (seeds + 8)]
    for r, mean in zip(rows, means):
        a = r["arch"]
        lines.append(f"| {r['budget'] / 1e6:.1f}M | {r['macs'] / 1e6:.1f}M | {a['r']:g} | {a['d']:g} | {a['w']:g} | "
                     f"{task.input_size(space.proxy_scale(a))}px (target {resolution(a['r'])}px) | "
                     + " | ".join(f"{x:.1f}" for x in r["accuracy"]) + f" | {mean:.1f} | "
                     f"{statistics.mean(r['seconds']):.1f} |")
    lines += ["", f"- spread of mean accuracy: **{max(means) - min(means):.1f} points** "
                  f"({min(means):.1f} to {max(means):.1f})",
              f"- seed-to-seed Spearman: **{rho:.2f}**",
              f"- mean |seed 0 - seed 1|: {statistics.mean(abs(r['accuracy'][0] - r['accuracy'][1]) for r in rows):.1f}"
              " points" if seeds > 1 else "- (one seed)"]
    if by_budget is not None:
        lines.append(f"- Spearman of budget vs mean accuracy: {by_budget:.2f}")
    secs = [s for r in rows for s in r["seconds"]]
    lines.append(f"- seconds per training: mean {statistics.mean(secs):.1f}, max {max(secs):.1f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", type=int, default=10, help="architectures per group")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: write the section from the cached results (unfinished groups say so)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    OUT.mkdir(exist_ok=True)

    space, task = TinyNetSpace(), ClassificationTask(threads=args.threads)
    cache = Cache(OUT / f"proxy-{settings_key(task, args.epochs)}.json")
    groups = architectures(space, cache, args.archs)
    start = time.perf_counter()
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in groups}
    for name, archs in groups.items():  # a group's every architecture once before any twice
        for seed in range(args.seeds):
            for budget, arch in archs:
                key = f"result/{arch.key()}/{seed}"
                if cache.get(key) is None and not args.report_only:
                    result = train(space, task, arch, seed, args.epochs)
                    cache.put(key, result)
                    print(f"[{time.perf_counter() - start:6.0f}s] {name} {budget / 1e6:.0f}M "
                          f"{space.describe(arch).split(' |')[0]} seed {seed}: {result['accuracy']:.1f}% "
                          f"in {result['train_seconds']:.1f}s", flush=True)
    missing: dict[str, int] = {}
    for name, archs in groups.items():
        for budget, arch in archs:
            results = [cache.get(f"result/{arch.key()}/{seed}") for seed in range(args.seeds)]
            if None in results:
                missing[name] = missing.get(name, 0) + results.count(None)
                continue
            rows[name].append({"budget": budget, "arch": arch, "macs": measure(space, arch)["macs"],
                               "accuracy": [r["accuracy"] for r in results],
                               "seconds": [r["train_seconds"] for r in results]})

    def group_summary(name: str) -> str:
        if name in missing:
            return (f"Not finished: {missing[name]} of {args.archs * args.seeds} trainings still to run "
                    "(rerun this script; it resumes from its cache).")
        return summarise(space, task, rows[name], args.seeds)

    spec = SyntheticSpec()
    recipe = task.describe()
    body = "\n".join([
        "Random TinyNet architectures (d uniform in [0.3, 1.4], then r uniform over the resolutions at which "
        f"that depth fits, w solved by the space to use at least {MIN_USE:.0%} of the budget; MACs at the "
        "target, 1000 classes), each trained from scratch with two seeds on the default classification proxy.",
        "",
        f"Data: the generated set (`data=\"synthetic\"`): {spec.train_size} train / {spec.val_size} val images, "
        f"{spec.resolution}px native, 10 classes of textured objects over clutter ({spec.clutter} strokes, "
        f"pixel noise {spec.noise}), seed {spec.seed}. Proxy input: round(r x {task.base_resolution}) px.",
        f"Recipe: {args.epochs} epochs, AdamW lr {recipe['lr']} (one-cycle, 10% warm-up), batch "
        f"{recipe['batch_size']}, weight decay {recipe['weight_decay']}, label smoothing "
        f"{recipe['label_smoothing']}, gradient clipping {recipe['grad_clip']}, {args.threads} threads, "
        "channels-last. Times include a validation pass per epoch.",
        "",
        f"### {args.archs} architectures, one per budget, log-spaced from 10M to 100M MACs",
        "",
        group_summary("budgets"),
        "",
        f"### {args.archs} architectures at 24M MACs",
        "",
        group_summary("24M"),
    ])
    write_section(SECTION, body)
    print(body)


if __name__ == "__main__":
    main()
