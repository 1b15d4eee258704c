"""`nasplat show`: a run's summary, the report rewritten from the journal where asked."""
from __future__ import annotations

import argparse
from typing import Any

from ..run import RunDir


def add_parser(sub: Any) -> argparse.ArgumentParser:
    sh = sub.add_parser("show", help="print a run's summary")
    sh.add_argument("run")
    sh.add_argument("--refresh", action="store_true", help="rewrite the report from the journal first")
    return sh


def run(args: argparse.Namespace) -> int:
    from ..report import summary_text, write_report

    folder = RunDir.open(args.run)
    if args.refresh or not (folder.report / "summary.md").exists():
        write_report(folder.path)
    print(summary_text(folder.path))
    return 0
