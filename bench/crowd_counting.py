"""NAS-Count's two claims on the generated crowds: a searched AMSNet against a hand-designed counting network
of the same MACs, and SPPLoss against plain MSE; MAE and MSE (root mean squared error) over three seeds.

The searched network: `nasplat search crowd --strategy pc-darts --flops 5G` (default space: C=24, depth 3,
output stride 4, costed at 3 x 512 x 512), trained with the counting task's default SPPLoss. The hand-designed
one (`CSRNetLike` below): CSRNet's design scaled down, a VGG front end of 3 x 3 convolutions with two 2 x 2
max-pools (output stride 4, as the searched network's) and a back end of dilation-2 3 x 3 convolutions, then
the same softplus density head as the crowd space's; its width multiplier is solved so its MACs at 512 match
the searched network's. Each network is retrained from scratch with SPPLoss and with MSE, seeds 0..2, on the
task's recipe (AdamW, one-cycle, clipped gradients). The search run lives in bench/out/crowd/search/ and every
retraining's metrics in bench/out/crowd/retrain/, so a killed run resumes where it stopped.

How this differs from the paper: ShanghaiTech, UCF and WorldExpo images on GPUs, a search of days and a
retraining of hundreds of epochs; here 800 generated 64 px crowds (200 to validate), a search of a few
epochs and a retraining of `--epochs`, on one torch thread (two benchmarks share the 2 cores).

    .venv/bin/python bench/crowd_counting.py            # about an hour on one core, resumable
    .venv/bin/python bench/crowd_counting.py --smoke    # tiny settings, a few minutes; prints, writes no section
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from results import write_section
from searches import cached_metrics, derived_events, search_seconds
from torch import nn

from nasplat.arch import Arch
from nasplat.constraints import Constraint
from nasplat.cost import count_costs
from nasplat.registry import SPACES
from nasplat.run import SearchConfig
from nasplat.runner.components import build_task
from nasplat.search_spaces.crowd import DensityHead

OUT = Path(__file__).resolve().parent / "out" / "crowd"
SECTION = "Crowd counting: searched AMSNet against a CSRNet-like network, SPPLoss against MSE"
FLOPS = "5G"
SEARCH = {"search_epochs": 20, "batch_size": 32, "eval_limit": 200}
TASK: dict = {}
SMOKE_SPACE = {"channels": 8, "depth": 2}
SMOKE_TASK = {"limit_train": 64, "limit_val": 32, "batch_size": 16}
SMOKE_SEARCH = {"search_epochs": 1, "warmup_epochs": 0, "batch_size": 16, "eval_limit": 16}
LOSSES = ("spp", "mse")


class CSRNetLike(nn.Module):
    """CSRNet (Li et al., CVPR 2018) at a width multiplier: VGG-style front end, dilated back end, density head.

    CSRNet keeps VGG-16 up to conv4_3 (output stride 8) and adds six dilation-2 convolutions; this keeps the
    layer pattern at output stride 4 (two pools), so that its density map has the searched network's size.
    """

    FRONT = (64, 64, "pool", 128, 128, "pool", 256, 256, 256)
    BACK = (256, 256, 128, 64)

    def __init__(self, *, width: float, maps: int = 1):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for spec, dilation in [(s, 1) for s in self.FRONT] + [(s, 2) for s in self.BACK]:
            if spec == "pool":
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
                continue
            c_out = max(4, round(spec * width))
            layers += [nn.Conv2d(c_in, c_out, 3, padding=dilation, dilation=dilation, bias=False),
                       nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            c_in = c_out
        self.body = nn.Sequential(*layers)
        self.head = DensityHead(c_in, maps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def macs(model: nn.Module, side: int = 512) -> float:
    return count_costs(model, (1, 3, side, side))["macs"]


def matched_width(target: float) -> tuple[float, float]:
    """The width multiplier whose CSRNetLike costs `target` MACs at 512 (bisection; MACs grow with width), and
    the MACs it costs."""
    low, high = 0.01, 1.0
    for _ in range(30):
        middle = (low + high) / 2
        low, high = (middle, high) if macs(CSRNetLike(width=middle)) < target else (low, middle)
    width = min((low, high), key=lambda w: abs(macs(CSRNetLike(width=w)) / target - 1))
    return width, macs(CSRNetLike(width=width))


def searched(*, space: dict, task: dict, options: dict, out: Path) -> tuple[Arch, float]:
    """The derived architecture and the search's wall seconds; the run in `out` is resumed, or started."""
    events = derived_events(SearchConfig(space="crowd", strategy="pc-darts", trials=1, epochs=1, seed=0, out=str(out),
                                         constraints=[Constraint.parse("macs", FLOPS)], space_options=space,
                                         task_options=task, strategy_options=options, export=[]))
    return Arch.from_dict(next(e for e in events if e["event"] == "derived")["arch"]), search_seconds(events)


def retrained(name: str, build, *, space, loss: str, seed: int, epochs: int, task_options: dict, out: Path) -> dict:
    """Metrics of `build()` trained from scratch with `loss` and `seed`, cached in `out`."""
    task = build_task(SearchConfig(space="crowd", task_options={**task_options, "loss": loss}), space)
    metrics, fresh = cached_metrics(out / f"{name}-{loss}-seed{seed}-e{epochs}.json", lambda: task.train_eval(
        build(), input_size=task.input_size(1.0), epochs=epochs, seed=seed))
    if fresh:
        print(f"  {name} {loss} seed {seed}: MAE {metrics['mae']:.2f} MSE {metrics['mse']:.2f} "
              f"({metrics['train_seconds']:.0f}s)", flush=True)
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="retraining seeds per network and loss")
    parser.add_argument("--epochs", type=int, default=30, help="retraining epochs")
    parser.add_argument("--smoke", action="store_true", help="tiny settings, to check that the script runs")
    args = parser.parse_args()
    torch.set_num_threads(1)  # one core each: this and another benchmark share the machine's two
    space_options, task_options, options = ((SMOKE_SPACE, SMOKE_TASK, SMOKE_SEARCH) if args.smoke
                                            else ({}, TASK, SEARCH))
    out = OUT / ("smoke" if args.smoke else "full")
    space = SPACES.create("crowd", **space_options)
    arch, seconds = searched(space=space_options, task=task_options, options=options,
                             out=out / f"search-e{options['search_epochs']}")
    amsnet_macs = macs(space.build(arch, num_classes=1))
    width, csrnet_macs = matched_width(amsnet_macs)
    print(f"searched in {seconds:.0f}s: {space.describe(arch)}, {amsnet_macs / 1e9:.2f}G MACs; CSRNet-like width "
          f"{width:.3f}: {csrnet_macs / 1e9:.2f}G", flush=True)
    builders = {"amsnet": lambda: space.build(arch, num_classes=1), "csrnet": lambda: CSRNetLike(width=width)}
    keys = {"amsnet": f"amsnet-{arch.key()}", "csrnet": f"csrnet-w{width:.4f}"}  # the retraining caches' names
    rows = {(name, loss): [retrained(keys[name], build, space=space, loss=loss, seed=s, epochs=args.epochs,
                                     task_options=task_options, out=out / "retrain") for s in range(args.seeds)]
            for name, build in builders.items() for loss in LOSSES}
    report(rows, args=args, space=space, arch=arch, seconds=seconds, figures=(amsnet_macs, width, csrnet_macs),
           task_options=task_options)


def _mean_sd(values: Sequence[float]) -> str:
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}" if len(values) > 1 else f"{values[0]:.2f}"


def report(rows: dict, *, args: argparse.Namespace, space, arch: Arch, seconds: float,
           figures: tuple[float, float, float], task_options: dict) -> None:
    amsnet_macs, width, csrnet_macs = figures
    names = {"amsnet": f"searched AMSNet ({amsnet_macs / 1e9:.2f}G MACs)",
             "csrnet": f"CSRNet-like, width {width:.3f} ({csrnet_macs / 1e9:.2f}G MACs)"}
    lines = [f"Search: `nasplat search crowd --strategy pc-darts --flops {FLOPS}`, strategy options {SEARCH}, "
             f"{seconds:.0f} s on one torch thread; derived `{space.describe(arch)}`. Task: the generated crowds "
             f"(800 train / 200 validation images at 64 px, 1 to 60 heads each) {task_options or ''}; MACs at "
             f"3 x 512 x 512. Each network retrained from scratch for {args.epochs} epochs, seeds "
             f"0..{args.seeds - 1}; validation MAE and MSE (root mean squared count error) in heads, mean ± sd.", "",
             "| network | loss | MAE | MSE |", "|---|---|---|---|"]
    for (name, loss), runs in rows.items():
        lines.append(f"| {names[name]} | {loss} | {_mean_sd([r['mae'] for r in runs])} | "
                     f"{_mean_sd([r['mse'] for r in runs])} |")

    def mae(name: str, loss: str) -> float:
        return statistics.mean(r["mae"] for r in rows[name, loss])

    wins = sum(a["mae"] < b["mae"] for name in names for a, b in zip(rows[name, "spp"], rows[name, "mse"]))
    lines += ["", f"Searched against hand-designed, SPPLoss: MAE {mae('amsnet', 'spp'):.2f} against "
                  f"{mae('csrnet', 'spp'):.2f} ({mae('amsnet', 'spp') / mae('csrnet', 'spp'):.2f}x). "
                  f"SPPLoss against MSE: MAE {mae('amsnet', 'spp'):.2f} against {mae('amsnet', 'mse'):.2f} on the "
                  f"searched network, {mae('csrnet', 'spp'):.2f} against {mae('csrnet', 'mse'):.2f} on the "
                  f"CSRNet-like one; SPPLoss has the lower MAE in {wins} of {2 * args.seeds} same-seed pairs.",
              f"Load average (1 min) at the end: {os.getloadavg()[0]:.2f} on 2 CPUs (this bench uses one)."]
    if not args.smoke:  # tiny figures stay out of RESULTS.md
        write_section(SECTION, "\n".join(lines), command="python bench/crowd_counting.py")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
