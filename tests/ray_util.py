"""What the Ray tests share: the CLI as a subprocess, a run's journal, and the processes of a Ray instance.

Searches run through the CLI in a subprocess (tests/run_cli.py), as users run them: Ray's workers then find
the toy plug-ins in the script's folder, which Ray puts on their path.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from nasplat.run import read_journal
from nasplat.runner.ray_watch import MARK

CLI = [sys.executable, str(Path(__file__).with_name("run_cli.py"))]


def cli(args: list[str], *, env: dict[str, str] | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)


def only_run(out: Path, *, prefix: str = "") -> Path:
    """The one run folder in `out` whose name starts with `prefix`."""
    (run,) = [p for p in out.iterdir() if p.is_dir() and p.name.startswith(prefix)]
    return run


def events(run: Path, kind: str) -> list[dict]:
    return [e for e in read_journal(run / "journal.jsonl") if e["event"] == kind]


def _processes() -> Iterable[Path]:
    return (entry for entry in Path("/proc").iterdir() if entry.name.isdigit())


def descendants(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of every process below `pid`, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in _processes():
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], list(children.get(pid, []))
    while todo:
        child = todo.pop()
        try:
            found.append((child, (Path("/proc") / str(child) / "cmdline").read_bytes().replace(b"\0", b" ").decode()))
        except OSError:
            continue
        todo.extend(children.get(child, []))
    return found


def instance_processes(token: str, folder: str) -> list[int]:
    """The live processes of the Ray instance nasplat started with `token` in `folder`: those whose command
    line names the folder or whose environment carries the token (zombies, which hold nothing, left out)."""
    found = []
    for entry in _processes():
        try:
            if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            named = folder.encode() in (entry / "cmdline").read_bytes()
            marked = f"{MARK}={token}".encode() in (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError):
            continue
        if named or marked:
            found.append(int(entry.name))
    return found


def wait_for(condition: Callable[[], object], *, seconds: float, what: str) -> None:
    deadline = time.time() + seconds
    while not condition():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def kill_all(pids: Iterable[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
