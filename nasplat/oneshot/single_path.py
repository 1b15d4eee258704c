"""What the single-path strategies (CP-NAS, BNAS, the anti-bandit) share: a sampled path of a supernet as a plain
module, and the endless training batches each path trains on."""
from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn


class PathModel(nn.Module):
    """One single-path sub-network of a supernet, as a plain module (for the task's evaluate()).

    Batch norm keeps using batch statistics in eval mode: the supernet's running statistics mix every path
    it trained, which misjudges any one of them (the usual practice of single-path NAS)."""

    def __init__(self, supernet: nn.Module, path: Mapping[str, tuple[int, ...]]):
        super().__init__()
        self.supernet = supernet
        self.path = dict(path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.supernet(x, path=self.path)

    def train(self, mode: bool = True) -> PathModel:
        super().train(mode)
        for module in self.supernet.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.train(True)
        return self


def endless_batches(task: Any, *, size: int, batch_size: int, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The task's training batches without end, pass after pass, each pass shuffled by its own seed."""
    for n in itertools.count():
        yield from task.batches("train", input_size=size, batch_size=batch_size, seed=seed + n)


__all__ = ["PathModel", "endless_batches"]
