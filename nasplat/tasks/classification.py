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
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from ..registry import register_task
from . import datasets
from .adversarial import fgsm, pgd
from .image_task import ImageTask, subset

DEFAULT_EPOCHS = 3
ADVERSARIAL = ("none", "fgsm", "pgd")


@register_task("classification")
class ClassificationTask(ImageTask):
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
            raise UserError(f"adversarial={adversarial!r} is not a training mode; use one of {', '.join(ADVERSARIAL)}")
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (adv_eps, adv_step))
        if not (numbers and 0 <= adv_eps <= 1 and 0 < adv_step <= 1) or isinstance(adv_iters, bool) or \
                not isinstance(adv_iters, int) or adv_iters < 1:
            raise UserError(f"adv_eps must lie in [0, 1] and adv_step in (0, 1] (pixel units, e.g. 8/255 = 0.0314), "
                            f"adv_iters be an integer >= 1; got {adv_eps!r}, {adv_step!r}, {adv_iters!r}")
        self.adversarial, self.adv_eps, self.adv_step, self.adv_iters = adversarial, adv_eps, adv_step, adv_iters
        super().__init__(batch_size=batch_size, lr=lr, weight_decay=weight_decay, grad_clip=grad_clip,
                         limit_train=limit_train, limit_val=limit_val, device=device, threads=threads)
        self.source = datasets.open_source(data, resolution=base_resolution)
        self.data_name = data
        self.classes = self.source.classes
        self.num_classes = len(self.classes)
        self.base_resolution = base_resolution or self.source.resolution
        self.label_smoothing = label_smoothing
        self._data: datasets.ImageData | None = None

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
            train_x, train_y = subset(full.train_x, full.train_y, self.limit_train)
            val_x, val_y = subset(full.val_x, full.val_y, self.limit_val)
            self._data = datasets.ImageData(train_x, train_y, val_x, val_y, full.classes)
        return self._data

    def splits(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        data = self.data()
        return data.train_x, data.train_y, data.val_x, data.val_y

    # -- training -------------------------------------------------------------------------------------------

    def training_loss(self, model: nn.Module, x: torch.Tensor, t: torch.Tensor, mean: torch.Tensor,
                      std: torch.Tensor) -> torch.Tensor:
        """Label-smoothed cross-entropy, on the batch attacked first when `adversarial` is set."""
        return F.cross_entropy(model(self._attack(model, x, t, mean, std)), t, label_smoothing=self.label_smoothing)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(output, target)

    def adversarial_batch(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                          input_size: int) -> torch.Tensor:
        """The batch a training step of `adversarial` uses: `x` (from `batches` at `input_size`) attacked by
        FGSM or PGD in the model's current mode, normalised like `x`; `x` itself when adversarial is none. For
        one-shot strategies that train adversarially with their own loop."""
        return self._attack(model, x, y, *self._stats(input_size))

    def _attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, mean: torch.Tensor,
                std: torch.Tensor) -> torch.Tensor:
        if self.adversarial == "none":
            return x
        options = {"eps": self.adv_eps, "step": self.adv_step, "loss_fn": F.cross_entropy, "mean": mean, "std": std}
        if self.adversarial == "fgsm":
            return fgsm(model, x, y, **options).contiguous(memory_format=torch.channels_last)
        return pgd(model, x, y, iters=self.adv_iters, **options).contiguous(memory_format=torch.channels_last)

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

