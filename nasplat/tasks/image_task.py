"""What the image proxies (classification, counting) share: data resized per input size and kept, inputs
normalised by the training split's channel statistics, seeded re-initialisation, the AdamW one-cycle
training loop, and the batches one-shot strategies train supernets on. A subclass says what its targets
are, what a training step's loss is and what an evaluation reports."""
from __future__ import annotations

import math
import time
from abc import abstractmethod
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from .base import EpochCallback, Task

RESIZED_KEPT = 4  # input sizes whose resized copies stay in memory (a search revisits a few sizes)

Splits = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # train images, targets, val images, targets


class ImageTask(Task):
    """A proxy trained on uint8 images N x 3 x H x W with one target tensor per split (labels, density maps)."""

    def __init__(self, *, batch_size: int, lr: float, weight_decay: float, grad_clip: float | None,
                 limit_train: int | None, limit_val: int | None, device: str, threads: int | None):
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.grad_clip = grad_clip
        self.limit_train = limit_train
        self.limit_val = limit_val
        self.device = train_device(device)
        self.threads = threads
        self._resized: OrderedDict[int, tuple[Splits, tuple[torch.Tensor, torch.Tensor]]] = OrderedDict()

    # -- what a subclass says -----------------------------------------------------------------------------------

    @abstractmethod
    def splits(self) -> Splits:
        """The (limited) data at its stored size: train images, train targets, val images, val targets."""

    def targets_at(self, targets: torch.Tensor, size: int) -> torch.Tensor:
        """`targets` for images resized to `size` (labels do not change; density maps do)."""
        return targets

    @abstractmethod
    def training_loss(self, model: nn.Module, x: torch.Tensor, t: torch.Tensor, mean: torch.Tensor,
                      std: torch.Tensor) -> torch.Tensor:
        """The loss of one training step on the normalised batch `x` (mean and std undo the normalisation, for
        attacks in pixel space)."""

    @abstractmethod
    def _evaluate(self, model: nn.Module, val_x: torch.Tensor, val_t: torch.Tensor, mean: torch.Tensor,
                  std: torch.Tensor) -> dict[str, float]:
        """Validation metrics of `model` (in eval mode) on uint8 images `val_x`; "accuracy" among them."""

    # -- data -------------------------------------------------------------------------------------------------

    def _at_size(self, size: int) -> Splits:
        """The splits with the images (and targets) resized to `size`, computed once per size."""
        return self._sized(size)[0]

    def _stats(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The training images' channel mean and std at `size`, on the device: what `_prepare` normalises by."""
        return self._sized(size)[1]

    def _sized(self, size: int) -> tuple[Splits, tuple[torch.Tensor, torch.Tensor]]:
        """Both of the above, computed once per size (one-shot strategies ask for them at every sampled path)."""
        if size not in self._resized:
            train_x, train_t, val_x, val_t = self.splits()
            resized = (resize_images(train_x, size), self.targets_at(train_t, size),
                       resize_images(val_x, size), self.targets_at(val_t, size))
            mean, std = (t.to(self.device) for t in channel_stats(resized[0]))
            self._resized[size] = (resized, (mean, std))
            while len(self._resized) > RESIZED_KEPT:
                self._resized.popitem(last=False)
        self._resized.move_to_end(size)
        return self._resized[size]

    def _prepare(self, x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True).float().div_(255).sub_(mean).div_(std)
        return x.contiguous(memory_format=torch.channels_last)

    # -- training ---------------------------------------------------------------------------------------------

    def train_eval(self, model: nn.Module, *, input_size: int, epochs: int, seed: int,
                   on_epoch: EpochCallback | None = None) -> dict[str, float]:
        """Re-initialises `model` from `seed`, trains it for `epochs` and returns the validation metrics with
        "train_loss" and "train_seconds".

        The weights are re-drawn by every submodule's `reset_parameters()`, innermost first, so that a
        trial's result depends on its architecture and seed only, not on the RNG state in which the caller
        built the model (a model whose own init lives in a `reset_parameters()` keeps that init).
        Raises FloatingPointError when the loss turns NaN or infinite.
        """
        previous_threads = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        cuda = [self.device.index or 0] if self.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=cuda):  # seeds init and dropout, leaves the caller's RNG be
                torch.manual_seed(seed)
                reinitialise(model)
                return self._train_eval(model, input_size, epochs, seed, on_epoch)
        finally:
            torch.set_num_threads(previous_threads)

    def _train_eval(self, model: nn.Module, input_size: int, epochs: int, seed: int,
                    on_epoch: EpochCallback | None) -> dict[str, float]:
        train_x, train_t, val_x, val_t = self._at_size(input_size)
        mean, std = self._stats(input_size)
        gen = torch.Generator().manual_seed(seed)
        model = model.to(self.device, memory_format=torch.channels_last)  # 2-5x faster convs on CPU
        steps_per_epoch = math.ceil(len(train_x) / self.batch_size)
        optimizer, schedule = self._optimizer(model, epochs * steps_per_epoch)
        start = time.perf_counter()
        metrics: dict[str, float] = {}
        for epoch in range(epochs):
            model.train()
            order = torch.randperm(len(train_x), generator=gen)
            total, count = 0.0, 0
            for step in range(steps_per_epoch):
                idx = order[step * self.batch_size:(step + 1) * self.batch_size]
                loss = self.training_loss(model, self._prepare(train_x[idx], mean, std),
                                          train_t[idx].to(self.device), mean, std)
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"training diverged: loss is {loss.item()} at epoch {epoch + 1}, step {step + 1} "
                        f"(lr {schedule.get_last_lr()[0]:.3g}); try a lower lr")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if self.grad_clip:
                    nn.utils.clip_grad_norm_(model.parameters(), self.grad_clip)
                optimizer.step()
                schedule.step()
                total += loss.item() * len(idx)
                count += len(idx)
            metrics = {**self._evaluate(model, val_x, val_t, mean, std), "train_loss": total / count,
                       "train_seconds": time.perf_counter() - start}
            if on_epoch is not None:
                on_epoch(epoch + 1, dict(metrics))
        return metrics

    def _optimizer(self, model: nn.Module, steps: int) -> tuple[torch.optim.Optimizer, Any]:
        """AdamW, one-cycle: a short warm-up (a tenth of the steps), then cosine annealing to zero.

        The short warm-up matters: with a quarter of the steps, small classifiers sat at chance through the
        first epoch, and when they left it varied from seed to seed (the proxy's main noise)."""
        decay, no_decay = param_groups(model)
        optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": self.weight_decay},
                                       {"params": no_decay, "weight_decay": 0.0}], lr=self.lr)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=self.lr, total_steps=steps,
                                                       pct_start=0.1)
        return optimizer, schedule

    # -- one-shot strategies ----------------------------------------------------------------------------------

    def batches(self, part: str, *, input_size: int, batch_size: int,
                seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        train_x, train_t, val_x, val_t = self._at_size(input_size)
        mean, std = self._stats(input_size)
        half = len(train_x) // 2
        images, targets = {"train": (train_x, train_t), "weights": (train_x[:half], train_t[:half]),
                           "architecture": (train_x[half:], train_t[half:]), "val": (val_x, val_t)}[part]
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            yield self._prepare(images[idx], mean, std), targets[idx].to(self.device)

    def evaluate(self, model: nn.Module, *, input_size: int, limit: int | None = None) -> dict[str, float]:
        _, _, val_x, val_t = self._at_size(input_size)
        mean, std = self._stats(input_size)
        was_training = model.training
        try:
            return self._evaluate(model, val_x[:limit], val_t[:limit], mean, std)
        finally:
            model.train(was_training)


def train_device(device: str) -> torch.device:
    """The --train-device as a torch device, refused where torch cannot use it."""
    try:
        chosen = torch.device(device)
    except RuntimeError:
        raise UserError(f"--train-device {device!r} is not a device; use cpu, cuda or cuda:N") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--train-device {device}: this machine has no CUDA GPU that torch can use "
                        f"(torch {torch.__version__}); train on cpu")
    return chosen


def subset(x: torch.Tensor, t: torch.Tensor, limit: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `limit` items of a fixed shuffle (all of them when `limit` is None)."""
    if limit is None or limit >= len(x):
        return x, t
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:limit]
    return x[idx], t[idx]


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of uint8 images, antialiased when shrinking (else small sizes alias)."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    out = torch.empty(len(images), images.shape[1], size, size, dtype=torch.uint8)
    for i in range(0, len(images), 1000):
        chunk = images[i:i + 1000].float()
        antialias = size < min(chunk.shape[-2:])
        resized = F.interpolate(chunk, size=(size, size), mode="bilinear", align_corners=False,
                                antialias=antialias)
        out[i:i + 1000] = resized.round_().clamp_(0, 255).to(torch.uint8)
    return out


def channel_stats(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std (floored at 1e-3) of up to 2,000 uint8 images, scaled to [0, 1]."""
    sample = images[:2000].float().div(255)
    mean = sample.mean(dim=(0, 2, 3)).view(1, -1, 1, 1)
    std = sample.std(dim=(0, 2, 3)).clamp_min(1e-3).view(1, -1, 1, 1)
    return mean, std


def reinitialise(model: nn.Module) -> None:
    """Calls every `reset_parameters()`, children before their parents (reversed pre-order)."""
    for module in reversed(list(model.modules())):
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()


def param_groups(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Weight decay on conv and linear weights only, not on biases or norm scales (the usual AdamW rule)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    return decay, no_decay
