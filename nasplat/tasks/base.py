"""Task bases: the proxy on which a candidate's accuracy is measured, by training it or from a table."""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from ..strategy import Result

if TYPE_CHECKING:  # torch is heavy: a search answered from a table, and a Ray worker running it, never load it
    import torch
    from torch import nn

EpochCallback = Callable[[int, dict[str, float]], None]


class Task(ABC):
    """Trains a freshly built model within a budget of epochs and returns its metrics.

    Subclasses register with `@register_task(name)`. `data` names the data source: each task has a
    default that needs no download plus loaders for the real formats users have.
    """

    name: ClassVar[str]
    num_classes: int
    base_resolution: int  # proxy input side at proxy_scale 1.0
    default_epochs: ClassVar[int] = 3

    @abstractmethod
    def train_eval(self, model: nn.Module, *, input_size: int, epochs: int, seed: int,
                   on_epoch: EpochCallback | None = None) -> dict[str, float]:
        """Train on the training split at `input_size`, return validation metrics ("accuracy" in %).

        `on_epoch(epoch, metrics)` is called after every epoch, so early-stopping schedulers can act.
        """

    # -- for one-shot strategies, which train a supernet on the task's data with their own loop ---------------
    # Parts: "weights" and "architecture" are the two halves of the training split (DARTS's bi-level split),
    # "train" the whole of it, "val" the validation split. A task without these cannot train a supernet.

    def batches(self, part: Literal["train", "weights", "architecture", "val"], *, input_size: int,
                batch_size: int, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One shuffled pass (by `seed`) over `part`: model-ready inputs and targets, on the task's device."""
        raise NotImplementedError(f"task {self.name!r} cannot feed a supernet; one-shot strategies need a task "
                                  f"with batches(), loss() and evaluate() (e.g. classification)")

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"task {self.name!r} has no training loss for one-shot strategies")

    def evaluate(self, model: nn.Module, *, input_size: int, limit: int | None = None) -> dict[str, float]:
        """Validation metrics ("accuracy" in %) of a trained model, on the first `limit` validation items."""
        raise NotImplementedError(f"task {self.name!r} cannot evaluate a supernet's sub-networks")

    def input_size(self, scale: float) -> int:
        """Proxy input side for a space's proxy_scale: round(scale x base resolution)."""
        return max(8, int(round(scale * self.base_resolution)))

    def describe(self) -> dict[str, Any]:
        return {"task": self.name, "num_classes": self.num_classes, "base_resolution": self.base_resolution}


CHARGE = "charged_seconds"  # the held-out metric under which the runner records a query's simulated seconds


@dataclass(frozen=True)
class Answer:
    """A table's answer for one architecture: the signal a strategy sees and the columns only reported."""

    signal: float
    reported: Mapping[str, float] = field(default_factory=dict)


class TabularTask(ABC):
    """Answers an architecture from a table of measurements instead of training it (NAS-Bench-201 style).

    Rows are keyed by the space's readable form of an Arch (`space.describe(arch)`). The runner tells the
    strategy the signal as "accuracy" and journals the reported columns held out from it, so a search can
    be judged by a metric it never saw. `charge` is the simulated time of a query, known before the query
    is made, so that a runner under a time budget stops before the query that would overrun it. Answers
    never change, so a repeated query tells nothing new and the runner charges it nothing.
    """

    name: ClassVar[str]
    default_epochs: ClassVar[int]  # the training epochs a query simulates, unless the search sets them

    @abstractmethod
    def query(self, key: str) -> Answer:
        """The row of `key`; raises KeyError for an architecture the table lacks."""

    @abstractmethod
    def charge(self, key: str, *, epochs: int) -> float:
        """Simulated seconds of training `key` for `epochs` epochs and evaluating it once; KeyError if absent."""

    def describe(self) -> dict[str, Any]:
        return {"task": self.name}


def table_result(task: TabularTask, key: str, known: Mapping[str, float] | None = None) -> Result:
    """The Result of looking `key` up: the signal as "accuracy" after the `known` metrics (costs measured
    before), the reported columns held out. Failed, not raised, for a key the table lacks, a signal that is
    not finite, or a query that raised (with its traceback, as a training that raised): the local runner and
    a Ray worker, which is sent the key and no space, answer alike."""
    found = dict(known or {})
    try:
        answer = task.query(key)
    except (LookupError, ValueError) as exc:
        return Result("failed", found, str(exc.args[0]) if exc.args else type(exc).__name__)
    except Exception as exc:  # noqa: BLE001 - a bug of the task fails this trial; the driver judges repeats
        return Result.raised(exc, found)
    if not math.isfinite(answer.signal):
        return Result("failed", found, "the table's signal is not finite (NaN or inf)", dict(answer.reported))
    return Result("ok", {**found, "accuracy": answer.signal}, held_out=dict(answer.reported))
