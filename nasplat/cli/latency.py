"""`nasplat latency`: lookup tables built on this machine, few-shot predictors of other devices, and the
models to measure on a device that cannot run nasplat.

    nasplat latency build-lut tinynet [--device cpu] [--runtime torch] [--threads 1] [--batch 1] [--out FILE]
    nasplat latency validate tinynet (--lut FILE | --predictor FILE) [--measured CSV] [-n 20] [--seed 0]
    nasplat latency sample nasbench201 -n 20 --runtime onnxruntime --out DIR
    nasplat latency fit nasbench201 --measured DIR/latency.csv --out PRED.json

One verb with four subverbs; bad input raises a UserError with one line, which `nasplat.cli.main` prints
as `nasplat: error: ...` with exit code 2.
"""
from __future__ import annotations

import argparse
import warnings
from pathlib import Path
from typing import Any

from .options import UsageError, console, positive_int, whole_number


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """`latency` and its subverbs build-lut, validate, sample and fit, on the subparsers `sub` of `nasplat`."""
    lat = sub.add_parser("latency", help="per-op latency lookup tables: build one on this machine, validate it")
    cmds = lat.add_subparsers(dest="latency_command", required=True, metavar="{build-lut,validate,sample,fit}")

    b = cmds.add_parser("build-lut", help="time every op the space can produce on this machine, then calibrate "
                                          "on whole architectures (resumable: rerun with the same --out)")
    b.add_argument("space", help="search space (see `nasplat list`)")
    b.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N: the machine that runs this")
    b.add_argument("--runtime", choices=["torch", "onnxruntime"], default="torch", help="default torch")
    b.add_argument("--threads", type=positive_int, default=1, help="CPU threads (default 1)")
    b.add_argument("--batch", type=positive_int, default=1, help="batch size (default 1)")
    b.add_argument("--out", help="the table's file (default runs/latency/<space>-<machine fingerprint>.json)")
    b.add_argument("--calibrate", type=whole_number(0), default=10,
                   help="random architectures measured whole to fit the per-model correction (default 10)")
    b.add_argument("--seed", type=int, default=0, help="seed of the calibration architectures")
    b.add_argument("--limit", type=positive_int, help="profile only the first N ops (a partial table, to try "
                                                       "the command; the calibration architectures' ops are added)")

    v = cmds.add_parser("validate", help="compare a table's or a predictor's figures with measurements: taken "
                                         "here on random architectures, or read from --measured")
    v.add_argument("space", help="search space the table or predictor was made for")
    given = v.add_mutually_exclusive_group(required=True)
    given.add_argument("--lut", help="a table from `nasplat latency build-lut`")
    given.add_argument("--predictor", help="a predictor from `nasplat latency fit`")
    v.add_argument("--measured", help="arch,latency_ms rows measured on the device (as `latency sample`'s script "
                                      "writes them): compared without measuring here")
    v.add_argument("-n", type=positive_int, default=20, help="architectures to measure here (default 20)")
    v.add_argument("--seed", type=int, default=0)

    sa = cmds.add_parser("sample", help="write N diverse ONNX models, a manifest and a standalone timing script "
                                        "(Python, numpy and onnxruntime only) to run on a device")
    sa.add_argument("space", help="search space (see `nasplat list`)")
    sa.add_argument("-n", type=positive_int, default=20, help="models (default 20)")
    sa.add_argument("--runtime", choices=["onnxruntime"], default="onnxruntime", help="what runs them on the device")
    sa.add_argument("--batch", type=positive_int, default=1, help="batch size (default 1)")
    sa.add_argument("--threads", type=positive_int, default=1, help="the script's default CPU threads (default 1)")
    sa.add_argument("--flops", help="MAC budget the sampled architectures keep to (spaces that solve a parameter "
                                    "for it, as TinyNet's width)")
    sa.add_argument("--seed", type=int, default=0)
    sa.add_argument("--out", required=True, help="the folder to copy to the device (resumable: rerun to finish)")

    f = cmds.add_parser("fit", help="fit a device's latency predictor from a few measured architectures")
    f.add_argument("space", help="search space (see `nasplat list`)")
    f.add_argument("--measured", required=True, help="CSV of arch,latency_ms rows measured on the device")
    f.add_argument("--reference", help="a latency table of other devices (tabular spaces; default the space's)")
    f.add_argument("--lut", help="a lookup table of the space (spaces without a reference table, e.g. TinyNet)")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--out", required=True, help="the predictor's JSON file, for search --predictor")
    return lat


def run(args: argparse.Namespace) -> int:
    return SUBVERBS[args.latency_command](args)


def _warn_in_one_line(caught: list[warnings.WarningMessage]) -> None:
    for w in caught:
        console.print(f"[yellow]warning:[/] {' '.join(str(w.message).split())}", soft_wrap=True)


def cmd_build_lut(args: argparse.Namespace) -> int:
    from ..cost.latency import Protocol
    from ..cost.lut import LatencyTable, build_lut, default_path
    from ..registry import SPACES

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
    from ..cost.lut import ACCURACY_BAND, LatencyTable, score, validate
    from ..registry import SPACES
    from ..units import format_ms

    space = SPACES.create(args.space)
    if args.lut:
        source: Any = LatencyTable.load(args.lut)
        source.check_space(space)
        machine = source.describe_machine()
    else:
        from ..cost.predictor import LatencyPredictor

        source = LatencyPredictor.load(args.predictor, space=space)
        machine = f"predictor {args.predictor}"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if args.measured:
            from ..cost.predictor import read_measured

            result = score(space, source, read_measured(space, args.measured))
        elif args.lut:
            result = validate(space, source, n=args.n, seed=args.seed)
        else:
            raise UsageError("--predictor is checked against measurements of its device: give --measured CSV "
                             "(arch,latency_ms rows, as `nasplat latency sample`'s script writes them)")
    _warn_in_one_line(caught)
    for row in result["rows"]:
        print(f"{format_ms(row['predicted']):>9} predicted  {format_ms(row['measured']):>9} measured  "
              f"{row['error']:+6.1%}  {row['describe']}")
    band = f"+-{ACCURACY_BAND:.0%}"
    within = round(result["within"] * result["n"])
    print(f"within {band}: {result['within']:.0%} ({within} of {result['n']})")
    print(f"Spearman rank correlation: {result['spearman']:.3f}")
    print(f"{args.lut or args.predictor}: {within} of {result['n']} {space.name} architectures predicted within "
          f"{band}, mean |error| {result['mean_abs_error']:.1%}, Spearman {result['spearman']:.3f} ({machine})")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from ..constraints import Constraint
    from ..cost.sample import write_sample
    from ..registry import SPACES

    space = SPACES.create(args.space)
    constraints = [Constraint.parse("macs", args.flops)] if args.flops else []
    out = Path(args.out)
    write_sample(space, args.n, out=out, runtime=args.runtime, batch=args.batch, threads=args.threads,
                 seed=args.seed, constraints=constraints, progress=lambda line: console.print(line, soft_wrap=True))
    print(f"{args.n} {space.name} models, their manifest and measure_latency.py are in {out}/")
    print("on the device: python measure_latency.py   (needs Python, numpy and onnxruntime; writes latency.csv)")
    print(f"then here:     nasplat latency fit {space.name} --measured {out}/latency.csv --out PRED.json")
    return 0


def cmd_fit(args: argparse.Namespace) -> int:
    from ..cost.predictor import fit_predictor, read_measured
    from ..registry import SPACES

    space = SPACES.create(args.space)
    measured = read_measured(space, args.measured)
    lut = None
    if args.lut:
        from ..cost.lut import LatencyTable

        lut = LatencyTable.load(args.lut)
        lut.check_space(space)
    predictor = fit_predictor(space, measured, reference=Path(args.reference) if args.reference else None, lut=lut,
                              seed=args.seed)
    out = Path(args.out)
    predictor.save(out)
    described = predictor.describe()
    print(f"fitted on {len(measured)} measured {space.name} architectures: {described.get('method')} -> {out}")
    print(f"search with it: nasplat search {space.name} --predictor {out} --latency LIMIT")
    return 0


SUBVERBS = {"build-lut": cmd_build_lut, "validate": cmd_validate, "sample": cmd_sample, "fit": cmd_fit}
