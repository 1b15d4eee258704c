"""CP-NAS's claim: a 1-bit Child trained under its full-precision Parent's supervision is more accurate.

The same binarized network (weights and activations, the CP-NAS Child; or, with `--binarize weights`, its
kernels alone, where a Child this small and this briefly trained learns at all) is trained twice from the same
initial weights, seeds and batches: once with cross-entropy alone, once as CP-NAS trains its Child, with a
full-precision Parent of the same genotype trained beside it, the kernel-level child-parent loss (the Child's
reconstructed kernels pulled toward the Parent's) and the centre loss on its last features. The figure is the
Child's validation accuracy; the Parent's is reported for scale. Genotypes are random (fixed seed), so that
the comparison is not about one lucky cell. Each finished training is kept as JSON in bench/out/cp/, so a
rerun goes on where it stopped.

How this differs from the paper: CIFAR-10 and ImageNet on GPUs, networks of 20 cells, hundreds of epochs,
and the supervision inside the search; here C=8 and 5 cells, the generated 10-class set at 32 px, a few
epochs, and the supervision measured on standalone networks (the search's sampled paths train the same way).

    .venv/bin/python bench/cp_supervision.py      # about 30 minutes on one core
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
from pathlib import Path

import torch
from results import write_section
from torch import nn

from nasplat.oneshot.cp_loss import CenterLoss
from nasplat.registry import SPACES, STRATEGIES
from nasplat.run import SearchConfig
from nasplat.runner.components import build_task

OUT = Path(__file__).resolve().parent / "out" / "cp"
SECTION = "CP-NAS: the Child with and without its Parent's supervision"
SPACE = {"channels": 8, "layers": 5}
TASK = {"limit_train": 3000, "limit_val": 1000, "batch_size": 64}
WEIGHTS = (1e-2, 1e-3)  # the kernel-level and centre losses' weights, the cp-nas strategy's defaults


class Plain(nn.Module):
    """A standalone network with the supernet's call signature (the CP-NAS training step passes a path)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, path: object = None) -> torch.Tensor:
        return self.net(x)

    def weight_parameters(self) -> list[nn.Parameter]:
        return list(self.parameters())


def train(space, task, arch, *, supervised: bool, seed: int, epochs: int, lr: float,
          weights: tuple[float, float] = WEIGHTS) -> dict:
    """The Child's (and Parent's) accuracy after `epochs`; supervised with the (kernel, centre) loss `weights`."""
    tag = "ce" if not supervised else "cp" if weights == WEIGHTS else f"cp-k{weights[0]:g}-c{weights[1]:g}"
    cache = OUT / f"{arch.key()}-{tag}-seed{seed}-e{epochs}-lr{lr:g}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    torch.manual_seed(seed)
    child = Plain(space.build(arch, num_classes=task.num_classes))
    parent = Plain(SPACES.create("binary-cells", **{**SPACE, "binarize": "none"}).build(
        arch.replace(binarize="none"), num_classes=task.num_classes))
    parent.load_state_dict(child.state_dict(), strict=False)  # the Child has extra BNs; the kernels match
    strategy = STRATEGIES.create("cp-nas", space, seed=seed, kernel_weight=weights[0] if supervised else 0.0,
                                 center_weight=weights[1] if supervised else 0.0)
    from nasplat.strategies.reduction import Features

    optimizers = [torch.optim.Adam(n.parameters(), lr=lr) for n in (child, parent)]
    features = Features(child)
    center = CenterLoss(task.num_classes, features.dim, weight=strategy.center_weight)
    size = task.input_size(1.0)
    for epoch in range(epochs):
        for x, y in task.batches("train", input_size=size, batch_size=TASK["batch_size"], seed=seed * 1000 + epoch):
            strategy.train_step(child, parent, optimizers, center, features, task, None, x, y)
    record = {"arch": arch.to_dict(), "supervised": supervised, "seed": seed, "epochs": epochs,
              "child": task.evaluate(child, input_size=size)["accuracy"],
              "parent": task.evaluate(parent, input_size=size)["accuracy"]}
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(record))
    print(f"{arch.key()} seed {seed} {'CP' if supervised else 'CE'}: child {record['child']:.2f}%, "
          f"parent {record['parent']:.2f}%", flush=True)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--genotypes", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--binarize", choices=("both", "weights"), default="both",
                        help="the Child's binarization: both (CP-NAS's 1-bit Child) or weights (XNOR kernels only)")
    parser.add_argument("--kernel-weight", type=float, default=WEIGHTS[0], help="the kernel-level loss's weight")
    parser.add_argument("--center-weight", type=float, default=WEIGHTS[1], help="the centre loss's weight")
    args = parser.parse_args()
    weights = (args.kernel_weight, args.center_weight)
    torch.set_num_threads(1)  # one core each: this and another benchmark share the machine's two
    space = SPACES.create("binary-cells", **SPACE, binarize=args.binarize)
    task = build_task(SearchConfig(space="binary-cells", task_options=TASK), space)
    rng = random.Random(0)
    archs = [space.complete(space.sample(rng)) for _ in range(args.genotypes)]
    pairs = [(train(space, task, a, supervised=False, seed=s, epochs=args.epochs, lr=args.lr),
              train(space, task, a, supervised=True, seed=s, epochs=args.epochs, lr=args.lr, weights=weights))
             for a in archs for s in range(args.seeds)]
    plain = [p[0]["child"] for p in pairs]
    cp = [p[1]["child"] for p in pairs]
    wins = sum(b > a for a, b in pairs_acc(pairs))
    what = "weights and activations" if args.binarize == "both" else "its kernels only (XNOR), activations full precision"
    lines = [f"Space binary-cells { {**SPACE, 'binarize': args.binarize} } (the Child binarizes {what}), {args.genotypes} random "
             f"genotypes x seeds 0..{args.seeds - 1}, {args.epochs} epochs of Adam at lr {args.lr} on the generated "
             f"set at 32 px ({TASK}). CP: kernel loss weight {weights[0]:g}, centre loss weight {weights[1]:g}.", "",
             "| Child trained with | Child accuracy (%) | Parent accuracy (%) |", "|---|---|---|",
             f"| cross-entropy only | {statistics.mean(plain):.2f} ± {statistics.stdev(plain):.2f} | - |",
             f"| + Parent's supervision (CP-NAS) | {statistics.mean(cp):.2f} ± {statistics.stdev(cp):.2f} | "
             f"{statistics.mean(p[1]['parent'] for p in pairs):.2f} |", "",
             f"Paired by genotype and seed, the supervised Child is better in {wins} of {len(pairs)} pairs, by "
             f"{statistics.mean(b - a for a, b in pairs_acc(pairs)):+.2f} points on average."]
    both = args.binarize == "both"
    qualifiers = ([] if both else ["XNOR weights"]) + (
        [] if weights == WEIGHTS else [f"kernel weight {weights[0]:g}, centre weight {weights[1]:g}"])
    flags = ("" if both else f" --binarize {args.binarize}") + (
        "" if weights == WEIGHTS else f" --kernel-weight {weights[0]:g} --center-weight {weights[1]:g}")
    if (args.genotypes, args.seeds) != (2, 3):
        flags += f" --genotypes {args.genotypes} --seeds {args.seeds}"
    write_section(SECTION + (f" ({'; '.join(qualifiers)})" if qualifiers else ""), "\n".join(lines),
                  command="python bench/cp_supervision.py" + flags)
    print("\n".join(lines))


def pairs_acc(pairs: list) -> list[tuple[float, float]]:
    return [(a["child"], b["child"]) for a, b in pairs]


if __name__ == "__main__":
    main()
