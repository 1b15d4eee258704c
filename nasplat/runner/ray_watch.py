"""The watcher that stops a Ray instance nasplat started, once the driver that started it has ended.

Ray's processes mostly end with the driver that started them, but not all: after a kill -9 of the driver,
Ray's dashboard and runtime-env agents live on (Ray 2.60), and after a driver stuck in a bad state nothing
stops the rest. So the driver starts this watcher before it starts Ray, in a session of its own (a Ctrl-C
at the terminal does not reach it), with a pipe on its standard input whose other end only the driver
holds: the end of the pipe is the end of the driver, whether it returned, raised or was killed.

Every process of the instance carries the environment variable MARK set to the instance's token (the
driver sets it while Ray starts, and Ray's processes hand their environment down to their workers and
agents), so the watcher stops those and no other: other Ray instances on the machine are left alone.
Then it removes the instance's temporary folder (its sockets, logs and spilled objects).

Run as a script by its path, it imports the standard library alone: it starts in a few hundredths of a
second and needs nothing of nasplat or Ray. It reads /proc, so it stops processes on Linux only; elsewhere
Ray's own shutdown at the driver's normal end is all there is.
"""
from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from pathlib import Path

MARK = "NASPLAT_RAY_INSTANCE"  # the environment variable that marks the processes of one Ray instance
GRACE_SECONDS = 3.0  # how long the instance's processes get to end after SIGTERM before SIGKILL
ROUNDS = 5  # scans for processes of the instance (one may start while the others are stopped)


def marked(token: str) -> list[int]:
    """The processes whose environment carries MARK=token (their environment as it was when they started)."""
    needle = f"{MARK}={token}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environment = (entry / "environ").read_bytes()
        except OSError:  # ended meanwhile, or not ours to read
            continue
        if needle in environment.split(b"\0"):
            found.append(int(entry.name))
    return found


def _signal(pids: list[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def stop(token: str) -> None:
    """SIGTERM to each process of the instance, SIGKILL to those still there after GRACE_SECONDS."""
    for _ in range(ROUNDS):
        pids = marked(token)
        if not pids:
            return
        _signal(pids, signal.SIGTERM)
        deadline = time.monotonic() + GRACE_SECONDS
        while pids and time.monotonic() < deadline:
            time.sleep(0.05)
            pids = [pid for pid in pids if Path(f"/proc/{pid}").exists() and not _zombie(pid)]
        _signal(pids, signal.SIGKILL)


def _zombie(pid: int) -> bool:
    """An ended process that its parent has not waited for yet: it holds no resources, and no signal ends it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def main(argv: list[str]) -> int:
    """`ray_watch.py TOKEN FOLDER`: waits for the end of standard input, then stops the instance and
    removes its folder."""
    token, folder = argv
    sys.stdin.buffer.read()  # returns when the driver closes the pipe or ends
    if Path("/proc").is_dir():
        stop(token)
    shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
