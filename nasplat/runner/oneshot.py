"""The supernet phase of a one-shot strategy: its data, journal, checkpoints and progress bar.

run_dir/checkpoint.pt holds the strategy's whole state (supernet weights, optimizers, architecture
parameters, its counters) and the journal events of the step it ends, and is replaced atomically after every
epoch, round or sampled path. Its tensors are packed into one flat tensor per dtype (`pack`): a cell
supernet's state holds thousands of small tensors, and pickling each one separately made a checkpoint cost
more than the training step it follows. The checkpoint is written before those events are journaled: a kill between the two leaves
them in the checkpoint only, and `load()` journals them then, so the journal records every finished step
exactly once and a resumed search goes on from the last checkpoint as if never stopped.
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

if TYPE_CHECKING:
    from ..run import RunDir
    from ..tasks.base import Task

CHECKPOINT = "checkpoint.pt"


class _Slot(NamedTuple):
    """Where a packed tensor lies: in the flat tensor of `dtype`, from `offset`, in `shape`."""

    dtype: str
    offset: int
    shape: tuple[int, ...]


def pack(value: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """`value` (dicts, lists and tuples of tensors and plain values) with every tensor replaced by a `_Slot`
    into one flat CPU tensor per dtype; `unpack` reverses it. Tensors come back as views of those (not sharing
    storage with each other as they may have before, which a state dict loaded by copying does not notice)."""
    parts: dict[str, list[torch.Tensor]] = {}
    sizes: dict[str, int] = {}

    def walk(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            dtype = str(v.dtype)  # a string pickles faster than a torch.dtype, thousands of times over
            if dtype not in parts:
                parts[dtype], sizes[dtype] = [], 0
            offset = sizes[dtype]
            parts[dtype].append(v.detach().reshape(-1).cpu())
            sizes[dtype] = offset + v.numel()
            return _Slot(dtype, offset, tuple(v.shape))
        if isinstance(v, dict):
            return {k: walk(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return _rebuilt(v, [walk(x) for x in v])
        return v

    skeleton = walk(value)
    return skeleton, {dtype: torch.cat(ts) for dtype, ts in parts.items()}


def _rebuilt(sequence: list | tuple, items: list) -> list | tuple:
    """`items` in a sequence of `sequence`'s type (a named tuple takes them as arguments)."""
    if isinstance(sequence, list):
        return items
    return type(sequence)(*items) if hasattr(sequence, "_fields") else tuple(items)


def unpack(skeleton: Any, flat: Mapping[str, torch.Tensor]) -> Any:
    def walk(v: Any) -> Any:
        if isinstance(v, _Slot):
            size = math.prod(v.shape)
            return flat[v.dtype][v.offset:v.offset + size].view(v.shape)
        if isinstance(v, dict):
            return {k: walk(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return _rebuilt(v, [walk(x) for x in v])
        return v

    return walk(skeleton)


class Session:
    """What a one-shot strategy's `search()` gets from the runner. Steps are numbered from 1 by the strategy
    (an epoch, a round, a sampled sub-network); `save(state, step=...)` makes one durable."""

    def __init__(self, run: RunDir, *, task: Task, console: Console):
        self.run = run
        self.task = task
        self.console = console
        self.path = run.path / CHECKPOINT

    def load(self) -> dict[str, Any] | None:
        """The last checkpoint's state, or None for a fresh search; journals the events a kill cut off."""
        if not self.path.exists():
            return None
        data = torch.load(self.path, map_location="cpu", weights_only=False)
        if "packed" in data:  # checkpoints written before packing hold the state as it is
            data = unpack(data["packed"], data["flat"])
        journaled = {e.get("step") for e in self.run.events() if e.get("event") == "supernet"}
        for event in data["events"]:
            if event["step"] not in journaled:
                self.run.append(event)
        return data["state"]

    def save(self, state: Mapping[str, Any], *, step: int, events: Sequence[Mapping[str, Any]] = ()) -> None:
        """Checkpoints `state` after `step`, then journals `events` (fields of "supernet" events of that step)."""
        records = [{"event": "supernet", "step": step, **e} for e in events]
        tmp = self.path.with_name(f".{CHECKPOINT}.tmp")
        with open(tmp, "wb") as fh:
            skeleton, flat = pack({"state": dict(state), "events": records})
            torch.save({"packed": skeleton, "flat": flat}, fh)
            fh.flush()
            if self.run.sync:
                os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        for record in records:
            self.run.append(record)

    def log(self, message: str) -> None:
        self.console.print(message)

    @contextmanager
    def progress(self, *, total: int, completed: int, description: str) -> Iterator[Any]:
        """A progress bar with ETA; the context gives a function that advances it by one step."""
        bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                       TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=self.console)
        with bar:
            task = bar.add_task(description, total=total, completed=completed)
            yield lambda: bar.advance(task)


def supernet_phase(run: RunDir, strategy: Any, task: Task, *, console: Console) -> None:
    """Runs the strategy's supernet search unless a resumed run already derived its architecture."""
    if strategy.derived is not None:
        return
    arch = strategy.search(Session(run, task=task, console=console))
    strategy.derived = arch
    run.append({"event": "derived", "arch": arch.to_dict(), "genotype": strategy.space.describe(arch)})
