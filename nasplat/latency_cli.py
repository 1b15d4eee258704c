"""`nasplat latency`: build a per-op latency lookup table on this machine, and check one against measurements.

    nasplat latency build-lut tinynet [--device cpu] [--runtime torch] [--threads 1] [--batch 1] [--out FILE]
    nasplat latency validate tinynet --lut FILE [-n 20] [--seed 0]

Wired into `nasplat.cli.build_parser` by `add_latency_parser(sub)`; bad input raises ValueError or
LookupError with one line, which `nasplat.cli.main` prints as `nasplat: error: ...` with exit code 2.
"""
from __future__ import annotations

import argparse
import warnings
from pathlib import Path
from typing import Any


def add_latency_parser(sub: Any) -> None:
    """Adds `latency build-lut` and `latency validate` to the subparsers `sub` of the `nasplat` parser."""
    from .cli import _positive_int, whole_number

    lat = sub.add_parser("latency", help="per-op latency lookup tables: build one on this machine, validate it")
    cmds = lat.add_subparsers(dest="latency_command", required=True, metavar="{build-lut,validate}")

    b = cmds.add_parser("build-lut", help="time every op the space can produce on this machine, then calibrate "
                                          "on whole architectures (resumable: rerun with the same --out)")
    b.add_argument("space", help="search space (see `nasplat list`)")
    b.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N: the machine that runs this")
    b.add_argument("--runtime", choices=["torch", "onnxruntime"], default="torch", help="default torch")
    b.add_argument("--threads", type=_positive_int, default=1, help="CPU threads (default 1)")
    b.add_argument("--batch", type=_positive_int, default=1, help="batch size (default 1)")
    b.add_argument("--out", help="the table's file (default runs/latency/<space>-<machine fingerprint>.json)")
    b.add_argument("--calibrate", type=whole_number(0), default=10,
                   help="random architectures measured whole to fit the per-model correction (default 10)")
    b.add_argument("--seed", type=int, default=0, help="seed of the calibration architectures")
    b.add_argument("--limit", type=_positive_int, help="profile only the first N ops (a partial table, to try "
                                                       "the command; the calibration architectures' ops are added)")
    b.set_defaults(func=cmd_build_lut)

    v = cmds.add_parser("validate", help="measure random architectures whole and compare with a table's predictions")
    v.add_argument("space", help="search space the table was built for")
    v.add_argument("--lut", required=True, help="a table from `nasplat latency build-lut`")
    v.add_argument("-n", type=_positive_int, default=20, help="architectures to measure (default 20)")
    v.add_argument("--seed", type=int, default=0)
    v.set_defaults(func=cmd_validate)


def _warn_in_one_line(caught: list[warnings.WarningMessage]) -> None:
    from .cli import console

    for w in caught:
        console.print(f"[yellow]warning:[/] {' '.join(str(w.message).split())}", soft_wrap=True)


def cmd_build_lut(args: argparse.Namespace) -> int:
    from .cli import console
    from .cost.latency import Protocol
    from .cost.lut import LatencyTable, build_lut, default_path
    from .registry import SPACES

    space = SPACES.create(args.space)
    protocol = Protocol(device=args.device, runtime=args.runtime, batch=args.batch, threads=args.threads)
    out = Path(args.out) if args.out else default_path(space, protocol)
    path = build_lut(space, protocol=protocol, out=out, calibrate=args.calibrate, seed=args.seed, progress=console,
                     limit=args.limit)
    table = LatencyTable.load(path)
    fit = table.calibration
    print(f"{len(table)} ops of {space.name} in {path} ({table.describe_machine()})")
    print(f"calibration ({fit['method']}, {fit['n']} architectures): predicted = {fit['scale']:.3f} x summed ops "
          f"{fit['offset_ms']:+.3f} ms")
    print(f"check it: nasplat latency validate {space.name} --lut {path}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from .cost.lut import ACCURACY_BAND, LatencyTable, validate
    from .registry import SPACES
    from .units import format_ms

    space = SPACES.create(args.space)
    table = LatencyTable.load(args.lut)
    table.check_space(space)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = validate(space, table, n=args.n, seed=args.seed)
    _warn_in_one_line(caught)
    for row in result["rows"]:
        print(f"{format_ms(row['predicted']):>9} predicted  {format_ms(row['measured']):>9} measured  "
              f"{row['error']:+6.1%}  {row['describe']}")
    band = f"+-{ACCURACY_BAND:.0%}"
    within = round(result["within"] * result["n"])
    print(f"within {band}: {result['within']:.0%} ({within} of {result['n']})")
    print(f"Spearman rank correlation: {result['spearman']:.3f}")
    print(f"{args.lut}: {within} of {result['n']} random {space.name} architectures predicted within {band}, "
          f"mean |error| {result['mean_abs_error']:.1%}, Spearman {result['spearman']:.3f} "
          f"({table.describe_machine()})")
    return 0
