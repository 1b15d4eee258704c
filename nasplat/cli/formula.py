"""`nasplat formula`: TinyNet's tiny formula, fitted from searches at several budgets."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .options import comma_separated, console, positive_int


def add_parser(sub: Any) -> argparse.ArgumentParser:
    f = sub.add_parser("formula", help="TinyNet's tiny formula: search several budgets, fit r and d by GPR")
    f.add_argument("space")
    f.add_argument("--flops", required=True, help="comma-separated budgets, e.g. 12M,24M,50M,100M")
    f.add_argument("--trials", type=positive_int, default=8)
    f.add_argument("--epochs", type=positive_int)
    f.add_argument("--strategy", default="random")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--data")
    f.add_argument("--out", default="runs/formula")
    return f


def run(args: argparse.Namespace) -> int:
    from ..formula import fit_formula

    budgets = comma_separated(args.flops)
    path = fit_formula(args.space, budgets=budgets, trials=args.trials, epochs=args.epochs, seed=args.seed,
                       out=Path(args.out), strategy=args.strategy, data=args.data, console=console)
    print(f"formula written to {path}; use it with: nasplat search {args.space} --flops 24M --prior {path}")
    return 0
