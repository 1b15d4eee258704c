"""Image classification proxy: trains a candidate for a few epochs and reports validation top-1.

The default data is generated (no download; see `datasets.SyntheticSpec`); `cifar10:PATH` and
`folder:PATH` read the formats users have. Images are resized to each trial's input size once and
kept, so trials at the same size share the work.

`adversarial=fgsm|pgd` trains on adversarial examples instead (l-infinity, in pixel space: see
`adversarial`) and adds `robust_accuracy`, the accuracy under PGD, to every evaluation.
"""
from __future__ import annotations

import copy
import math
import time
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import register_task
from . import datasets
from .adversarial import fgsm, pgd
from .base import EpochCallback, Task

DEFAULT_EPOCHS = 3
_RESIZED_KEPT = 4  # input sizes whose resized copies stay in memory (a search revisits a few sizes)
ADVERSARIAL = ("none", "fgsm", "pgd")


@register_task("classification")
class ClassificationTask(Task):
    """Top-1 classification: AdamW under a one-cycle schedule, label smoothing, clipped gradients.

    `data` is "synthetic" (generated, the default), "cifar10:PATH" or "folder:PATH" (see `datasets`).
    `base_resolution` is the proxy side at proxy_scale 1.0 (default: the source's native side, 64 for the
    generated set and image folders, 32 for CIFAR-10). `limit_train` / `limit_val` keep a fixed random
    subset of each split, for quick runs and tests. No augmentation: a few-epoch proxy does not overfit.

    `adversarial` is "none", "fgsm" (train on FGSM examples from a random start, ABanditNAS's Algorithm 8)
    or "pgd" (on PGD-`adv_iters` examples: Madry et al.), with `adv_eps` and `adv_step` in pixel units
    (default 8/255 and 2/255, ABanditNAS's CIFAR-10 setting). With either, evaluations report
    `robust_accuracy` next to the clean `accuracy`: the % of validation images classified right before and
    after PGD-`adv_iters` from a random start (seeded: the same model scores the same), never above accuracy.
    """

    DEFAULT_EPOCHS = DEFAULT_EPOCHS

    def __init__(self, *, data: str = "synthetic", base_resolution: int | None = None, batch_size: int = 128,
                 lr: float = 4e-3, weight_decay: float = 0.05, label_smoothing: float = 0.1,
                 grad_clip: float | None = 1.0, limit_train: int | None = None, limit_val: int | None = None,
                 device: str = "cpu", threads: int | None = None, adversarial: str = "none",
                 adv_eps: float = 8 / 255, adv_step: float = 2 / 255, adv_iters: int = 7):
        if adversarial not in ADVERSARIAL:
            raise ValueError(f"adversarial={adversarial!r} is not a training mode; use one of {', '.join(ADVERSARIAL)}")
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (adv_eps, adv_step))
        if not (numbers and 0 <= adv_eps <= 1 and 0 < adv_step <= 1) or isinstance(adv_iters, bool) or \
                not isinstance(adv_iters, int) or adv_iters < 1:
            raise ValueError(f"adv_eps must lie in [0, 1] and adv_step in (0, 1] (pixel units, e.g. 8/255 = 0.0314), "
                             f"adv_iters be an integer >= 1; got {adv_eps!r}, {adv_step!r}, {adv_iters!r}")
        self.adversarial, self.adv_eps, self.adv_step, self.adv_iters = adversarial, adv_eps, adv_step, adv_iters
        self.source = datasets.open_source(data, resolution=base_resolution)
        self.data_name = data
        self.classes = self.source.classes
        self.num_classes = len(self.classes)
        self.base_resolution = base_resolution or self.source.resolution
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.label_smoothing = label_smoothing
        self.grad_clip = grad_clip
        self.limit_train = limit_train
        self.limit_val = limit_val
        try:
            self.device = torch.device(device)
        except RuntimeError:
            raise ValueError(f"--train-device {device!r} is not a device; use cpu, cuda or cuda:N") from None
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--train-device {device}: this machine has no CUDA GPU that torch can use "
                             f"(torch {torch.__version__}); train on cpu")
        self.threads = threads
        self._data: datasets.ImageData | None = None
        self._resized: OrderedDict[int, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "data": self.data_name, "batch_size": self.batch_size, "lr": self.lr,
                "weight_decay": self.weight_decay, "label_smoothing": self.label_smoothing,
                "grad_clip": self.grad_clip, "limit_train": self.limit_train, "limit_val": self.limit_val,
                **({"adversarial": self.adversarial, "adv_eps": self.adv_eps, "adv_step": self.adv_step,
                    "adv_iters": self.adv_iters} if self.adversarial != "none" else {})}

    # -- data -----------------------------------------------------------------------------------------------

    def data(self) -> datasets.ImageData:
        if self._data is None:
            full = self.source.load()
            self._data = _subset(full, self.limit_train, self.limit_val)
        return self._data

    def _at_size(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Train and val images resized to `size` (uint8), computed once per size."""
        if size not in self._resized:
            data = self.data()
            self._resized[size] = (_resize(data.train_x, size), _resize(data.val_x, size))
            while len(self._resized) > _RESIZED_KEPT:
                self._resized.popitem(last=False)
        self._resized.move_to_end(size)
        return self._resized[size]

    # -- training -------------------------------------------------------------------------------------------

    def train_eval(self, model: nn.Module, *, input_size: int, epochs: int, seed: int,
                   on_epoch: EpochCallback | None = None) -> dict[str, float]:
        """Re-initialises `model` from `seed`, trains it for `epochs` and returns validation metrics:
        "accuracy" (top-1, %), "loss" (validation cross-entropy), "train_loss", "train_seconds".

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
                _reinitialise(model)
                return self._train_eval(model, input_size, epochs, seed, on_epoch)
        finally:
            torch.set_num_threads(previous_threads)

    def _train_eval(self, model: nn.Module, input_size: int, epochs: int, seed: int,
                    on_epoch: EpochCallback | None) -> dict[str, float]:
        data = self.data()
        train_x, val_x = self._at_size(input_size)
        mean, std = (t.to(self.device) for t in _channel_stats(train_x))
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
                y = data.train_y[idx].to(self.device)
                x = self._attack(model, self._prepare(train_x[idx], mean, std), y, mean, std)
                loss = F.cross_entropy(model(x), y, label_smoothing=self.label_smoothing)
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
            metrics = {**self._evaluate(model, val_x, data.val_y, mean, std), "train_loss": total / count,
                       "train_seconds": time.perf_counter() - start}
            if on_epoch is not None:
                on_epoch(epoch + 1, dict(metrics))
        return metrics

    # -- one-shot strategies ----------------------------------------------------------------------------------

    def batches(self, part: str, *, input_size: int, batch_size: int,
                seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        data = self.data()
        train_x, val_x = self._at_size(input_size)
        mean, std = _channel_stats(train_x)
        half = len(train_x) // 2
        images, labels = {"train": (train_x, data.train_y), "weights": (train_x[:half], data.train_y[:half]),
                          "architecture": (train_x[half:], data.train_y[half:]),
                          "val": (val_x, data.val_y)}[part]
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
        mean, std = mean.to(self.device), std.to(self.device)
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            yield self._prepare(images[idx], mean, std), labels[idx].to(self.device)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(output, target)

    def adversarial_batch(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                          input_size: int) -> torch.Tensor:
        """The batch a training step of `adversarial` uses: `x` (from `batches` at `input_size`) attacked by
        FGSM or PGD in the model's current mode, normalised like `x`; `x` itself when adversarial is none. For
        one-shot strategies that train adversarially with their own loop."""
        mean, std = (t.to(self.device) for t in _channel_stats(self._at_size(input_size)[0]))
        return self._attack(model, x, y, mean, std)

    def _attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, mean: torch.Tensor,
                std: torch.Tensor) -> torch.Tensor:
        if self.adversarial == "none":
            return x
        options = {"eps": self.adv_eps, "step": self.adv_step, "loss_fn": F.cross_entropy, "mean": mean, "std": std}
        if self.adversarial == "fgsm":
            return fgsm(model, x, y, **options).contiguous(memory_format=torch.channels_last)
        return pgd(model, x, y, iters=self.adv_iters, **options).contiguous(memory_format=torch.channels_last)

    def evaluate(self, model: nn.Module, *, input_size: int, limit: int | None = None) -> dict[str, float]:
        data = self.data()
        train_x, val_x = self._at_size(input_size)
        mean, std = (t.to(self.device) for t in _channel_stats(train_x))
        was_training = model.training
        try:
            return self._evaluate(model, val_x[:limit], data.val_y[:limit], mean, std)
        finally:
            model.train(was_training)

    def estimate_seconds(self, model: nn.Module, *, input_size: int, epochs: int, probe_steps: int = 3) -> float:
        """Wall seconds `train_eval` would take, from timing a few training steps on random batches
        (evaluation is counted as a third of a training epoch: a forward pass over a quarter of the data)."""
        data = self.data()
        model = copy.deepcopy(model).to(self.device, memory_format=torch.channels_last).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=self.lr)
        x = torch.randn(self.batch_size, 3, input_size, input_size, device=self.device)
        x = x.contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, self.num_classes, (self.batch_size,), device=self.device)
        for step in range(probe_steps + 2):  # two steps warm up the allocator and kernels
            if step == 2:
                start = time.perf_counter()
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        per_step = (time.perf_counter() - start) / probe_steps
        steps_per_epoch = math.ceil(len(data.train_x) / self.batch_size)
        return per_step * steps_per_epoch * (epochs + 1 / 3)

    def _optimizer(self, model: nn.Module, steps: int) -> tuple[torch.optim.Optimizer, Any]:
        """AdamW, one-cycle: a short warm-up (a tenth of the steps), then cosine annealing to zero.

        The short warm-up matters: with a quarter of the steps, small nets sat at chance through the
        first epoch, and when they left it varied from seed to seed (the proxy's main noise)."""
        decay, no_decay = _param_groups(model)
        optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": self.weight_decay},
                                       {"params": no_decay, "weight_decay": 0.0}], lr=self.lr)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=self.lr, total_steps=steps,
                                                       pct_start=0.1)
        return optimizer, schedule

    def _prepare(self, x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True).float().div_(255).sub_(mean).div_(std)
        return x.contiguous(memory_format=torch.channels_last)

    def _evaluate(self, model: nn.Module, val_x: torch.Tensor, val_y: torch.Tensor,
                  mean: torch.Tensor, std: torch.Tensor) -> dict[str, float]:
        """Clean accuracy and loss; with `adversarial` set, also the accuracy under PGD-`adv_iters` (its random
        starts drawn from a fixed seed, leaving the caller's random state be)."""
        model.eval()
        correct, loss, robust = 0, 0.0, 0
        cuda = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(0)
            for i in range(0, len(val_x), 500):
                x = self._prepare(val_x[i:i + 500], mean, std)
                y = val_y[i:i + 500].to(self.device)
                with torch.no_grad():
                    logits = model(x)
                loss += F.cross_entropy(logits, y, reduction="sum").item()
                right = logits.argmax(1) == y
                correct += int(right.sum())
                if self.adversarial != "none":  # robust: right before the attack and still right after it
                    x = pgd(model, x, y, eps=self.adv_eps, step=self.adv_step, iters=self.adv_iters,
                            loss_fn=F.cross_entropy, mean=mean, std=std)
                    with torch.no_grad():
                        robust += int((right & (model(x).argmax(1) == y)).sum())
        if not math.isfinite(loss):
            raise FloatingPointError("evaluation diverged: the validation loss is not finite")
        metrics = {"accuracy": 100.0 * correct / len(val_x), "loss": loss / len(val_x)}
        return {**metrics, "robust_accuracy": 100.0 * robust / len(val_x)} if self.adversarial != "none" else metrics


def _subset(data: datasets.ImageData, limit_train: int | None, limit_val: int | None) -> datasets.ImageData:
    """The first `limit` images of a fixed shuffle of each split (all of it when `limit` is None)."""
    def take(x: torch.Tensor, y: torch.Tensor, limit: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        if limit is None or limit >= len(x):
            return x, y
        idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:limit]
        return x[idx], y[idx]

    train_x, train_y = take(data.train_x, data.train_y, limit_train)
    val_x, val_y = take(data.val_x, data.val_y, limit_val)
    return datasets.ImageData(train_x, train_y, val_x, val_y, data.classes)


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
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


def _channel_stats(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    sample = images[:2000].float().div(255)
    mean = sample.mean(dim=(0, 2, 3)).view(1, -1, 1, 1)
    std = sample.std(dim=(0, 2, 3)).clamp_min(1e-3).view(1, -1, 1, 1)
    return mean, std


def _reinitialise(model: nn.Module) -> None:
    """Calls every `reset_parameters()`, children before their parents (reversed pre-order)."""
    for module in reversed(list(model.modules())):
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()


def _param_groups(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Weight decay on conv and linear weights only, not on biases or norm scales (the usual AdamW rule)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    return decay, no_decay
