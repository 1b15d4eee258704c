"""Searched genotypes against random genotypes of the same cost, after equal retraining (binary cells).

For each one-shot strategy, a search on the generated 10-class set at 32 px (`nasplat search binary-cells
--strategy S`, the settings below); then the derived genotype and `--randoms` random genotypes whose MACs
(full-precision MACs + BOPs/64) lie within 10% of it are each retrained from scratch with the same seeds and
epochs, and compared on validation accuracy. Every search resumes from its run folder and every retraining
is kept as JSON in bench/out/oneshot/, so a rerun goes on where it stopped.

How this differs from the papers: they search on CIFAR-10 for 50 epochs (PC-DARTS) or T=3 passes per round
(CP-NAS) with C=16 and 8 cells on a GPU, then retrain 20 cells at C=36 for 600 epochs. Here the space is
C=8, 5 cells, binarized weights (BNAS's XNOR), the search a few epochs (PC-DARTS) or 6 batches per sampled
path (CP-NAS, T=1) on 4,000 generated images, and the retraining the evaluated network itself (same C and
cells) for 3 epochs, on one torch thread (so that two benchmarks share the 2 cores).

    .venv/bin/python bench/oneshot_search.py      # about 40 minutes on one core
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from pathlib import Path

import torch
from results import write_section

from nasplat import api
from nasplat.arch import Arch
from nasplat.cost import measure
from nasplat.registry import SPACES
from nasplat.run import SearchConfig, read_journal
from nasplat.runner.components import build_task

OUT = Path(__file__).resolve().parent / "out" / "oneshot"
SECTION = "One-shot search on binary cells: searched against random genotypes"
SPACE = {"channels": 8, "layers": 5, "binarize": "weights"}
TASK = {"limit_train": 4000, "limit_val": 1000, "batch_size": 64}
STRATEGY_OPTIONS = {
    "pc-darts": {"search_epochs": 6, "batch_size": 64, "eval_limit": 500},
    "darts": {"search_epochs": 6, "batch_size": 64, "eval_limit": 500},
    "cp-nas": {"warmup_steps": 60, "train_steps": 6, "batch_size": 64, "eval_limit": 250},
}


def searched(strategy: str, seed: int) -> Arch:
    """The genotype the strategy derives (its search run resumed, or started, in bench/out/oneshot/)."""
    folder = OUT / "search" / f"{strategy}-seed{seed}"
    runs = sorted(folder.glob("*")) if folder.exists() else []
    if runs:
        derived = [e for e in read_journal(runs[-1] / "journal.jsonl") if e["event"] == "derived"]
        if derived:
            return Arch.from_dict(derived[0]["arch"])
        outcome = api.resume(runs[-1])
    else:
        config = SearchConfig(space="binary-cells", strategy=strategy, trials=1, epochs=1, seed=seed, out=str(folder),
                              space_options=SPACE, task_options=TASK, strategy_options=STRATEGY_OPTIONS[strategy])
        outcome = api.start(config)
    events = read_journal(outcome.run.path / "journal.jsonl")
    return Arch.from_dict(next(e for e in events if e["event"] == "derived")["arch"])


def randoms(space, arch: Arch, *, count: int, seed: int) -> list[Arch]:
    """`count` random genotypes whose MACs lie within 10% of `arch`'s (drawn in a fixed order)."""
    target = measure(space, arch)["macs"]
    rng = random.Random(seed)
    found: list[Arch] = []
    for _ in range(5000):
        candidate = space.complete(space.sample(rng))
        if candidate != arch and abs(measure(space, candidate)["macs"] / target - 1) <= 0.10:
            found.append(candidate)
            if len(found) == count:
                return found
    sys.exit(f"found only {len(found)} random genotypes within 10% of {target:.3g} MACs")


def retrained(space, task, arch: Arch, *, seed: int, epochs: int) -> dict:
    cache = OUT / "retrain" / f"{arch.key()}-seed{seed}-e{epochs}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    metrics = task.train_eval(space.build(arch, num_classes=task.num_classes), input_size=task.input_size(1.0),
                              epochs=epochs, seed=seed)
    record = {"arch": arch.to_dict(), "describe": space.describe(arch), "seed": seed, **metrics,
              **measure(space, arch)}
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(record))
    print(f"  seed {seed}: {metrics['accuracy']:.2f}%  {space.describe(arch)[:90]}", flush=True)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategies", default="pc-darts,cp-nas")
    parser.add_argument("--seeds", type=int, default=3, help="retraining seeds per genotype")
    parser.add_argument("--randoms", type=int, default=3, help="random genotypes per searched one")
    parser.add_argument("--epochs", type=int, default=3, help="retraining epochs")
    args = parser.parse_args()
    torch.set_num_threads(1)  # one core each: this and another benchmark share the machine's two
    space = SPACES.create("binary-cells", **SPACE)
    task = build_task(SearchConfig(space="binary-cells", task_options=TASK), space)
    rows = []
    for strategy in args.strategies.split(","):
        arch = searched(strategy, 0)
        print(f"{strategy}: {space.describe(arch)}", flush=True)
        mine = [retrained(space, task, arch, seed=s, epochs=args.epochs) for s in range(args.seeds)]
        others = [[retrained(space, task, r, seed=s, epochs=args.epochs) for s in range(args.seeds)]
                  for r in randoms(space, arch, count=args.randoms, seed=1)]
        rows.append((strategy, arch, mine, others))
    report(rows, args, space)


def _mean_sd(values: list[float]) -> str:
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}" if len(values) > 1 else f"{values[0]:.2f}"


def report(rows: list, args: argparse.Namespace, space) -> None:
    """One section per strategy, so that a rerun of one strategy leaves the others' figures in place."""
    for strategy, arch, mine, others in rows:
        lines = [f"Space: binary-cells {SPACE}; task: generated 10-class set at 32 px, {TASK}. Search settings: "
                 f"{STRATEGY_OPTIONS[strategy]}. Every genotype retrained from scratch for {args.epochs} epochs "
                 f"with seeds 0..{args.seeds - 1} (the task's AdamW one-cycle schedule). Random genotypes: the "
                 f"first {args.randoms} samples within 10% of the searched genotype's MACs.", "",
                 "| genotype | MACs (FP + BOPs/64) | accuracy over seeds (%) |", "|---|---|---|",
                 f"| {strategy} (searched): `{space.describe(arch)}` | {mine[0]['macs'] / 1e6:.2f}M | "
                 f"**{_mean_sd([r['accuracy'] for r in mine])}** |"]
        for runs in others:
            lines.append(f"| random: `{runs[0]['describe']}` | {runs[0]['macs'] / 1e6:.2f}M | "
                         f"{_mean_sd([r['accuracy'] for r in runs])} |")
        best = statistics.mean(r["accuracy"] for r in mine)
        pool = [statistics.mean(r["accuracy"] for r in runs) for runs in others]
        lines += ["", f"{strategy}: searched {best:.2f}% against random {statistics.mean(pool):.2f}% on average "
                      f"(beats {sum(best > p for p in pool)} of {len(pool)})."]
        write_section(f"{SECTION} ({strategy})", "\n".join(lines),
                      command=f"python bench/oneshot_search.py --strategies {strategy}")
        print("\n".join(lines))


if __name__ == "__main__":
    main()
