"""`nasplat retrain`: a run's best architecture trained from scratch."""
from __future__ import annotations

import argparse
from typing import Any

from .options import console, positive_int


def add_parser(sub: Any) -> argparse.ArgumentParser:
    r = sub.add_parser("retrain", help="train a run's best architecture from scratch")
    r.add_argument("run")
    r.add_argument("--epochs", type=positive_int, required=True)
    r.add_argument("--data", help="data source (default: the run's)")
    r.add_argument("--seed", type=int, default=0)
    return r


def run(args: argparse.Namespace) -> int:
    from ..retrain import retrain

    result = retrain(args.run, epochs=args.epochs, data=args.data, seed=args.seed, console=console)
    print(f"retrained {args.run} for {args.epochs} epochs: accuracy {result['accuracy']:.2f}% "
          f"(bundle in {result['bundle']})")
    return 0
