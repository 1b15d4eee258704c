"""`nasplat export`: a run's best architecture as JSON, weights, TorchScript and ONNX."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .options import comma_separated


def add_parser(sub: Any) -> argparse.ArgumentParser:
    e = sub.add_parser("export", help="write a run's best architecture as JSON, weights, TorchScript, ONNX")
    e.add_argument("run")
    e.add_argument("--format", default="json,weights,torchscript,onnx")
    e.add_argument("--target", action="store_true", help="the untrained model at the target configuration")
    e.add_argument("--out", required=True)
    return e


def run(args: argparse.Namespace) -> int:
    from ..export import export_run

    formats = comma_separated(args.format)
    paths = export_run(args.run, out=Path(args.out), formats=formats, target=args.target)
    for kind, path in paths.items():
        print(f"{kind:<12} {path}")
    return 0
