"""bench/RESULTS.md as the benchmark scripts write it; NASPLAT_RESULTS names another file (tests use it)."""
from __future__ import annotations

import os
from pathlib import Path

from nasplat.results import write_section as _write_section

RESULTS = Path(os.environ.get("NASPLAT_RESULTS") or Path(__file__).resolve().parent / "RESULTS.md")


def write_section(name: str, body: str, *, command: str | None = None) -> None:
    """Replaces (or appends) the section `name` of RESULTS with `body`, stamped with machine, date and command."""
    _write_section(name, body, path=RESULTS, command=command)
