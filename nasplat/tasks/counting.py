"""Crowd-counting proxy: trains a density-map regressor for a few epochs and reports its count errors.

Counting by density (MCNN, CSRNet, NAS-Count): the model maps an image to a 1-channel density map and the
count is the map's sum. The default data is generated (no download; see `crowd_data.CrowdSpec`);
`shanghaitech:PATH` reads ShanghaiTech-style folders. Images and maps are resized to each trial's input
size once and kept, the maps keeping their counts.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import UserError
from ..registry import register_task
from . import crowd_data
from .image_task import ImageTask, subset
from .spp_loss import LEVELS, SPPLoss

LOSSES = ("spp", "mse")


def count_errors(predicted: torch.Tensor, true: torch.Tensor) -> tuple[float, float]:
    """(MAE, MSE) of counts as the crowd-counting field reports them: the "MSE" is the root of the mean
    squared error, so that both are in heads."""
    error = predicted.double() - true.double()
    return error.abs().mean().item(), error.pow(2).mean().sqrt().item()


def accuracy_from_mae(mae: float) -> float:
    """100 / (1 + MAE): what strategies maximise. It ranks models exactly as MAE does (lower MAE, higher
    accuracy), lies in (0, 100] like a classification accuracy in % (the bandit scorers scale accuracy by
    0.01 and expect it in [0, 1]), and, unlike a clipped relative accuracy, still tells bad models apart."""
    return 100.0 / (1.0 + mae)


@register_task("counting")
class CountingTask(ImageTask):
    """Density-map regression: AdamW under a one-cycle schedule, clipped gradients, SPPLoss or plain MSE.

    `data` is "synthetic" (generated, the default) or "shanghaitech:PATH" (see `crowd_data`).
    `base_resolution` is the proxy side at proxy_scale 1.0 and the side the data is stored at (default 64,
    small enough to train on a CPU; the counting target configuration is 3 x 512 x 512). `loss` is "spp"
    (`SPPLoss` over `spp_levels`) or "mse". A model outputs N x 1 x h x w, possibly smaller than its input
    (output stride 1, 2, 4 or 8): the target map is sum-pooled to the output's size, keeping its count.
    `limit_train` / `limit_val` keep a fixed random subset of each split, for quick runs and tests.

    Metrics: "mae" and "mse" (root mean squared error, as the field reports it) of the validation counts,
    "accuracy" = 100 / (1 + MAE) for the strategies, which maximise accuracy (see `accuracy_from_mae`), and
    "loss", the validation loss.
    """

    num_classes = 1  # output channels: one density map
    default_epochs: ClassVar[int] = 10  # a few hundred images: an epoch is a few dozen steps

    def __init__(self, *, data: str = "synthetic", base_resolution: int | None = None, batch_size: int = 32,
                 lr: float = 2e-3, weight_decay: float = 1e-4, grad_clip: float | None = 1.0, loss: str = "spp",
                 spp_levels: Sequence[int] = LEVELS, limit_train: int | None = None,
                 limit_val: int | None = None, device: str = "cpu", threads: int | None = None):
        if loss not in LOSSES:
            raise UserError(f"loss={loss!r} is not a counting loss; use one of {', '.join(LOSSES)}")
        super().__init__(batch_size=batch_size, lr=lr, weight_decay=weight_decay, grad_clip=grad_clip,
                         limit_train=limit_train, limit_val=limit_val, device=device, threads=threads)
        self.criterion = SPPLoss(levels=spp_levels) if loss == "spp" else nn.MSELoss()
        self.source = crowd_data.open_crowd_source(data, resolution=base_resolution)
        self.data_name = data
        self.base_resolution = self.source.resolution
        self.loss_name = loss
        self.spp_levels = tuple(spp_levels)
        self._data: crowd_data.CrowdData | None = None

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "data": self.data_name, "batch_size": self.batch_size, "lr": self.lr,
                "weight_decay": self.weight_decay, "grad_clip": self.grad_clip, "loss": self.loss_name,
                **({"spp_levels": list(self.spp_levels)} if self.loss_name == "spp" else {}),
                "limit_train": self.limit_train, "limit_val": self.limit_val}

    # -- data -----------------------------------------------------------------------------------------------

    def data(self) -> crowd_data.CrowdData:
        if self._data is None:
            full = self.source.load()
            self._data = crowd_data.CrowdData(*subset(full.train_x, full.train_density, self.limit_train),
                                              *subset(full.val_x, full.val_density, self.limit_val))
        return self._data

    def splits(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        data = self.data()
        return data.train_x, data.train_density, data.val_x, data.val_density

    def targets_at(self, targets: torch.Tensor, size: int) -> torch.Tensor:
        return crowd_data.resize_density(targets, (size, size))

    # -- training -------------------------------------------------------------------------------------------

    def training_loss(self, model: nn.Module, x: torch.Tensor, t: torch.Tensor, mean: torch.Tensor,
                      std: torch.Tensor) -> torch.Tensor:
        return self.loss(model(x), t)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The training loss of density maps `output` against `target`, the target pooled to the output's
        size with its count kept."""
        _check_density(output)
        return self.criterion(output, crowd_data.resize_density(target, tuple(output.shape[-2:])))

    def _evaluate(self, model: nn.Module, val_x: torch.Tensor, val_d: torch.Tensor, mean: torch.Tensor,
                  std: torch.Tensor) -> dict[str, float]:
        model.eval()
        predicted, true, loss = [], [], 0.0
        for i in range(0, len(val_x), self.batch_size):
            target = val_d[i:i + self.batch_size].to(self.device)
            with torch.no_grad():
                output = model(self._prepare(val_x[i:i + self.batch_size], mean, std))
                loss += self.loss(output, target).item() * len(target)
            predicted.append(output.sum(dim=(1, 2, 3)).cpu())
            true.append(target.sum(dim=(1, 2, 3)).cpu())
        mae, rmse = count_errors(torch.cat(predicted), torch.cat(true))
        if not (math.isfinite(loss) and math.isfinite(mae)):
            raise FloatingPointError("evaluation diverged: the validation loss or counts are not finite")
        return {"accuracy": accuracy_from_mae(mae), "mae": mae, "mse": rmse, "loss": loss / len(val_x)}


def _check_density(output: torch.Tensor) -> None:
    if output.ndim != 4 or output.shape[1] != 1:
        raise ValueError(f"a counting model outputs a density map N x 1 x h x w; got shape {tuple(output.shape)} "
                         f"(build the model with num_classes=1)")

