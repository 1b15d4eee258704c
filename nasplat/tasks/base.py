"""Task base: the proxy on which a candidate's accuracy is measured."""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

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

    def input_size(self, scale: float) -> int:
        """Proxy input side for a space's proxy_scale: round(scale x base resolution)."""
        return max(8, int(round(scale * self.base_resolution)))

    def describe(self) -> dict[str, Any]:
        return {"task": self.name, "num_classes": self.num_classes, "base_resolution": self.base_resolution}
