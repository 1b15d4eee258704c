"""Where nasplat writes a traceback for the user to read and report: a run's logs/ folder, else the user's cache.

A bug's one-line summary names the file, so that the terminal stays readable and the whole traceback is
still there to send (the CLI's internal errors, a search stopped by a repeated exception).
"""
from __future__ import annotations

import datetime
import os
from pathlib import Path


def traceback_folder(run: Path | None) -> Path:
    """`run`/logs where a run folder is at hand, else $XDG_CACHE_HOME/nasplat/tracebacks (~/.cache unless
    XDG_CACHE_HOME names an absolute folder, as the XDG spec asks)."""
    if run is not None:
        return run / "logs"
    cache = os.environ.get("XDG_CACHE_HOME", "")
    return (Path(cache) if os.path.isabs(cache) else Path.home() / ".cache") / "nasplat" / "tracebacks"


def write_traceback(text: str, *, folder: Path, name: str | None = None) -> Path:
    """Writes `text` to folder/<name>.txt, by default traceback-<local time>-<pid>.txt; returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = folder / f"{name or f'traceback-{stamp}-{os.getpid()}'}.txt"
    path.write_text(text)
    return path
