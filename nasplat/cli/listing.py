"""`nasplat list`: the registered spaces, strategies and tasks, their options and latency tables."""
from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub: Any) -> argparse.ArgumentParser:
    ls = sub.add_parser("list", help="list the registered spaces, strategies and tasks")
    ls.add_argument("pattern", nargs="?", default="*")
    return ls


def run(args: argparse.Namespace) -> int:
    from ..registry import SPACES, STRATEGIES, TASKS
    from ..runner.components import user_options

    for title, registry in (("spaces", SPACES), ("strategies", STRATEGIES), ("tasks", TASKS)):
        print(f"{title}:")
        for name in registry.names(args.pattern):
            doc = (registry.get(name).__doc__ or "").strip().splitlines()
            print(f"  {name:<16} {doc[0] if doc else ''}")
            options = user_options(registry.get(name))
            if options:
                print(f"  {'':<16} options: {', '.join(sorted(options))}")
            shipped = getattr(registry.get(name), "latency_table", None)
            if registry is SPACES and shipped is not None:
                from ..cost.device_table import latency_columns
                from ..tasks.tabular import load_table

                columns = latency_columns(load_table(shipped, key="arch"))
                print(f"  {'':<16} devices (--device table:COLUMN): {', '.join(columns)}")
    return 0
