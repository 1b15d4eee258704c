"""Sections of a Markdown results file such as bench/RESULTS.md: each benchmark rewrites its own section,
stamped with the machine, the date and the command that produced it, and leaves the others as they are."""
from __future__ import annotations

import datetime
import os
import platform
import re
import sys
from pathlib import Path

HEADER = "# nasplat benchmark results\n\nEach section is written by the script it names; rerun that command to refresh it.\n"


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}"


def write_section(name: str, body: str, *, path: Path, command: str | None = None) -> None:
    """Replaces (or appends) the section `name` of the file at `path` with `body`, stamped with machine,
    date and command (default: this process's command line)."""
    command = command or "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    stamp = (f"Machine: {machine()}  \nDate: {datetime.date.today().isoformat()}  \n"
             f"Command: `{command}`\n\n")
    block = f"<!-- bench:{name} -->\n## {name}\n\n{stamp}{body.strip()}\n<!-- /bench:{name} -->\n"
    path = Path(path)
    text = path.read_text() if path.exists() else HEADER
    pattern = re.compile(rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->\n", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + block
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)
