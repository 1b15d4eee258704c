"""Where the Ray runner's trials run: a Ray instance started for the run, or a cluster it joins.

Started for the run: no dashboard, bound to 127.0.0.1, quiet, with as many CPUs as its workers need, and
stopped at the end. Joined (`--ray-address auto | host:port | ray://host:port`, or RAY_ADDRESS as `ray job
submit` sets it): the address is checked first, so a wrong one gets one line within seconds rather than
Ray's long retries. A process in which Ray is running already (a test, a notebook) keeps its instance.
"""
from __future__ import annotations

import logging
import math
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from rich.console import Console

CONNECT_SECONDS = 5.0  # how long a --ray-address may take to accept a connection


class RayUnavailable(ValueError):
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


def _start(*, cpus: int, quiet: dict[str, Any]) -> None:
    import ray

    # "local": a new instance even where `ray start` runs a cluster on this machine (which ray.init would join)
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, _node_ip_address="127.0.0.1", **quiet)


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
    if owned and address is None:  # sized to the workers, which this machine's CPUs cap
        workers = fit_workers(workers, cpus=float(os.cpu_count() or 1), gpus=None, cpus_per_trial=cpus_per_trial,
                              gpus_per_trial=gpus_per_trial, console=console)
        _start(cpus=math.ceil(workers * cpus_per_trial), quiet=quiet)
    elif owned:
        _join(address, quiet=quiet)
    try:
        resources = ray.cluster_resources()
        cpus, gpus = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
        workers = fit_workers(workers, cpus=cpus, gpus=gpus, cpus_per_trial=cpus_per_trial,
                              gpus_per_trial=gpus_per_trial, console=console)
        where = ("local" if address is None else address) if owned else "already running"
        yield RaySession(workers, where, cpus, gpus)
    finally:
        if owned:
            ray.shutdown()
