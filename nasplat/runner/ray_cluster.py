"""Where the Ray runner's trials run: a Ray instance started for the run, or a cluster it joins.

Started for the run: no dashboard, bound to 127.0.0.1, quiet, with as many CPUs as its workers need, in a
temporary folder of its own, and stopped at the end however the driver ends: a watcher process
(`ray_watch`) stops what Ray's shutdown left, or all of it after a kill -9 of the driver. Joined
(`--ray-address auto | host:port | ray://host:port`, or RAY_ADDRESS as `ray job submit` sets it): the
address is checked first, so a wrong one gets one line within seconds rather than Ray's long retries, and
the cluster is never stopped. A process in which Ray is running already (a test, a notebook) keeps its
instance.

When a trial's worker fails, `lost_node` tells whether its node died, for the journal's `retry` events.
"""
from __future__ import annotations

import logging
import math
import os
import re
import secrets
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

from rich.console import Console

from ..errors import UserError
from . import ray_watch

CONNECT_SECONDS = 5.0  # how long a --ray-address may take to accept a connection
WATCHER_SECONDS = 30.0  # how long the driver's normal end waits for the watcher to clean up
RAYLET_SECONDS = 1.0  # how long a node's raylet may take to accept a connection before the node counts as lost


class RayUnavailable(UserError):
    """No Ray cluster at the address given, or none with the resources a trial needs (one line, exit 2)."""


@dataclass(frozen=True)
class RaySession:
    workers: int  # trials at a time
    address: str  # where: "local" for an instance started for the run, else the address joined
    cpus: float  # CPUs of the cluster
    gpus: float

    def describe(self) -> dict[str, Any]:
        return {"runner": "ray", "ray_address": self.address, "workers": self.workers,
                "cluster_cpus": self.cpus, "cluster_gpus": self.gpus}


def _host_port(address: str) -> tuple[str, int]:
    rest = address.removeprefix("ray://")
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise RayUnavailable(f"--ray-address {address}: give auto, host:port (the address `ray start --head` "
                             f"prints) or ray://host:port")
    return host, int(port)


def _check_reachable(address: str) -> None:
    host, port = _host_port(address)
    try:
        socket.create_connection((host, port), timeout=CONNECT_SECONDS).close()
    except OSError as exc:
        raise RayUnavailable(f"--ray-address {address}: no Ray cluster answers there "
                             f"({exc.strerror or type(exc).__name__}); start one with `ray start --head` and give "
                             f"the address it prints, or leave --ray-address out to start Ray for this run") from None


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """Sets environment variables for the block, then restores them."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def _started(*, cpus: int, quiet: dict[str, Any]) -> Iterator[None]:
    """A Ray instance of this process's own, in a new temporary folder, watched (see `ray_watch`) from
    before it starts: whatever ends the driver, the watcher then stops the instance and removes the folder."""
    import ray

    token = secrets.token_hex(8)
    # under /tmp, as Ray's own folders are: a socket's path must stay under about 100 characters
    folder = tempfile.mkdtemp(prefix="nasplat-ray-", dir="/tmp" if os.path.isdir("/tmp") else None)
    watcher = subprocess.Popen([sys.executable, ray_watch.__file__, token, folder], stdin=subprocess.PIPE,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        with environment({ray_watch.MARK: token}):  # Ray's processes inherit it, and their workers from them
            # "local": a new instance even where `ray start` runs a cluster on this machine (which ray.init joins)
            ray.init(address="local", num_cpus=cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
                     _temp_dir=folder, **quiet)
        yield
    finally:
        ray.shutdown()
        assert watcher.stdin is not None
        watcher.stdin.close()
        try:
            watcher.wait(timeout=WATCHER_SECONDS)
        except subprocess.TimeoutExpired:  # it goes on on its own; the driver's end need not wait for it
            pass


def _join(address: str, *, quiet: dict[str, Any]) -> None:
    import ray

    if address != "auto":
        _check_reachable(address)
    try:
        ray.init(address=address, **quiet)
    except (ConnectionError, RuntimeError, TimeoutError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RayUnavailable(f"--ray-address {address}: could not join a Ray cluster there ({first}); start one "
                             f"with `ray start --head`, or leave --ray-address out to start Ray for this run") from None


# how Ray's messages name a failed actor ("The actor <id> is unavailable", "actor_id: <id>") and a dead node
_ACTOR = re.compile(r"\bactor(?:_id:)? ([0-9a-f]{32})\b", re.IGNORECASE)
_DEAD_NODE = re.compile(r"node has died\. Node Id: ([0-9a-f]{56})", re.IGNORECASE)


def lost_node(message: str) -> str | None:
    """The id of the node that died under the actor (a trial's worker) that Ray's failure `message` names,
    else None. Ray says so itself once it has marked the node dead; the driver mostly hears of the lost
    worker first (its connection closed) and the node's death only after its missed heartbeats (about 15 s),
    so a node whose raylet no longer accepts connections counts as dead too."""
    import ray
    from ray._private import state  # the actor table, straight from GCS (ray.util.state needs the dashboard)

    said = _DEAD_NODE.search(message)
    if said:
        return said.group(1)
    actor = _ACTOR.search(message)
    if actor is None or not ray.is_initialized():
        return None
    node_id = state.actors(actor_id=actor.group(1)).get("Address", {}).get("NodeID")
    node = next((n for n in ray.nodes() if n["NodeID"] == node_id), None)
    if node is None:
        return None
    if not node["Alive"]:
        return node_id
    try:
        socket.create_connection((node["NodeManagerAddress"], node["NodeManagerPort"]), timeout=RAYLET_SECONDS).close()
    except OSError:
        return node_id
    return None


def fit_workers(requested: int | None, *, cpus: float, gpus: float | None, cpus_per_trial: float,
                gpus_per_trial: float, console: Console) -> int:
    """The trials that can run at a time: `requested`, capped (with a warning) at what the CPUs and GPUs
    hold (`gpus` None: not counted yet); all that they hold when nothing is requested. A trial that needs
    more than there is is an input error rather than a search that waits forever."""
    fits = int(cpus // cpus_per_trial)
    if gpus_per_trial > 0 and gpus is not None:
        fits = min(fits, int(gpus // gpus_per_trial))
    need = f"{cpus_per_trial:g} CPU" + (f" and {gpus_per_trial:g} GPU" if gpus_per_trial else "")
    there = f"{cpus:g} CPU" + (f" and {gpus:g} GPU" if gpus_per_trial and gpus is not None else "")
    if fits < 1:
        raise RayUnavailable(f"a trial needs {need} and Ray has {there}; lower --cpus-per-trial / "
                             "--gpus-per-trial, or add nodes")
    if requested is not None and requested > fits:
        console.print(f"[yellow]warning: --workers {requested} at {need} per trial needs more than the {there} "
                      f"there are: running {fits} trials at a time[/]")
        return fits
    return requested or fits


@contextmanager
def ray_session(*, address: str | None, workers: int | None, cpus_per_trial: float, gpus_per_trial: float,
                console: Console) -> Iterator[RaySession]:
    """Connects to Ray (starting it where no address is given) for one search, and disconnects (stopping
    what it started) at the end; yields where the trials run and how many run at a time."""
    import ray

    address = address or os.environ.get("RAY_ADDRESS") or None
    owned = not ray.is_initialized()
    quiet = {"log_to_driver": False, "logging_level": logging.ERROR, "configure_logging": True}
    with ExitStack() as stack:
        if owned and address is None:  # sized to the workers, which this machine's CPUs cap
            workers = fit_workers(workers, cpus=float(os.cpu_count() or 1), gpus=None,
                                  cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial, console=console)
            stack.enter_context(_started(cpus=math.ceil(workers * cpus_per_trial), quiet=quiet))
        elif owned:
            _join(address, quiet=quiet)
            stack.callback(ray.shutdown)  # disconnects: the cluster goes on
        resources = ray.cluster_resources()
        cpus, gpus = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
        workers = fit_workers(workers, cpus=cpus, gpus=gpus, cpus_per_trial=cpus_per_trial,
                              gpus_per_trial=gpus_per_trial, console=console)
        where = ("local" if address is None else address) if owned else "already running"
        yield RaySession(workers, where, cpus, gpus)
