"""Bi-level supernet training (DARTS): the weights and the architecture parameters of a supernet learnt in
turn, each on its half of the training split, the architecture frozen for a warm-up first."""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from ..constraints import limit_of
from ..errors import UserError
from ..strategy import OneShotStrategy
from .architect import Architect


class BilevelSearch(OneShotStrategy):
    """The bi-level training DARTS, PC-DARTS and Hit-Detector share: a supernet's weights on one half of the
    training split, its architecture parameters on the other (first or second order), checkpointed every
    epoch. Subclasses search: they build the supernets, train them with `train_supernet` and derive."""

    partial_channels_default: ClassVar[int] = 1
    edge_normalization_default: ClassVar[bool] = False
    arch_lr_default: ClassVar[float] = 3e-4

    def __init__(self, space: Any, *, search_epochs: int = 10, warmup_epochs: int | None = None, order: int = 1,
                 batch_size: int = 64, w_lr: float = 0.025, w_lr_min: float = 0.001, w_momentum: float = 0.9,
                 w_decay: float = 3e-4, arch_lr: float | None = None, arch_decay: float = 1e-3,
                 max_skip: int | None = 2, cost_weight: float = 2.0, partial_channels: int | None = None,
                 edge_normalization: bool | None = None, eval_limit: int | None = 1000, **common: Any):
        super().__init__(space, **common)
        if order not in (1, 2):
            raise UserError(f"order must be 1 (first-order DARTS) or 2 (second order), got {order!r}")
        if search_epochs < 1 or batch_size < 1:
            raise UserError(f"search_epochs and batch_size must be at least 1, got {search_epochs} and {batch_size}")
        self.search_epochs = search_epochs
        # PC-DARTS trains the weights alone for the first 15 of its 50 epochs, so the architecture is not
        # judged on untrained operations (which favours parameter-free ones)
        self.warmup_epochs = warmup_epochs if warmup_epochs is not None else int(0.3 * search_epochs)
        self.order = order
        self.batch_size = batch_size
        self.w_lr, self.w_lr_min, self.w_momentum, self.w_decay = w_lr, w_lr_min, w_momentum, w_decay
        self.arch_lr = arch_lr if arch_lr is not None else self.arch_lr_default
        self.arch_decay = arch_decay
        self.max_skip = max_skip
        self.cost_weight = cost_weight
        self.partial_channels = partial_channels if partial_channels is not None else self.partial_channels_default
        self.edge_normalization = edge_normalization if edge_normalization is not None \
            else self.edge_normalization_default
        self.eval_limit = eval_limit

    def train_supernet(self, session: Any, supernet: Any, *, epochs: int, warmup: int,
                       penalty: Callable[[], torch.Tensor] | None, state: Mapping[str, Any] | None,
                       description: str, first_step: int = 0, keep: Mapping[str, Any] | None = None) -> None:
        """Bi-level training of `supernet` for `epochs` (the architecture frozen for the first `warmup`),
        checkpointed after every epoch as step first_step + epoch with `keep` in the checkpoint, and resumed
        from `state`, a checkpoint of this same training (None: from the start). `penalty()` is added to the
        architecture step's loss."""
        task = session.task
        supernet.to(getattr(task, "device", "cpu"))
        weights = supernet.weight_parameters()
        w_opt = torch.optim.SGD(weights, lr=self.w_lr, momentum=self.w_momentum, weight_decay=self.w_decay)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(w_opt, epochs, eta_min=self.w_lr_min)
        architect = Architect(weights=weights, alphas=supernet.arch_parameters(), order=self.order,
                              loss=lambda batch: task.loss(supernet(batch[0]), batch[1]), lr=self.arch_lr,
                              weight_decay=self.arch_decay, penalty=penalty)
        start = 0
        if state is not None:
            supernet.load_state_dict(state["supernet"])
            w_opt.load_state_dict(state["w_opt"])
            schedule.load_state_dict(state["schedule"])
            architect.optimizer.load_state_dict(state["arch_opt"])
            torch.set_rng_state(state["rng"])
            start = state["epoch"]
        limit = limit_of(self.constraints, "macs")
        size = task.input_size(1.0)
        steps = math.ceil(len(list(task.batches("weights", input_size=size, batch_size=self.batch_size, seed=0)))
                          ) if start < epochs else 0
        with session.progress(total=epochs * steps, completed=start * steps, description=description) as advance:
            for epoch in range(start, epochs):
                seed = self.seed * 1_000_003 + first_step + epoch
                train = task.batches("weights", input_size=size, batch_size=self.batch_size, seed=seed)
                valid = task.batches("architecture", input_size=size, batch_size=self.batch_size, seed=seed + 1)
                supernet.train()
                total, count, arch_loss = 0.0, 0, []
                for w_batch, a_batch in zip(train, valid):
                    if epoch >= warmup:
                        arch_loss.append(architect.step(w_batch, a_batch, w_lr=schedule.get_last_lr()[0],
                                                        w_optimizer=w_opt, w_momentum=self.w_momentum,
                                                        w_decay=self.w_decay)["val_loss"])
                    w_opt.zero_grad(set_to_none=True)
                    loss = task.loss(supernet(w_batch[0]), w_batch[1])
                    if not torch.isfinite(loss):
                        raise FloatingPointError(f"supernet training diverged at epoch {epoch + 1}; lower w_lr")
                    loss.backward()
                    nn.utils.clip_grad_norm_(weights, 5.0)
                    w_opt.step()
                    total += loss.item() * len(w_batch[1])
                    count += len(w_batch[1])
                    advance()
                schedule.step()
                event = self._epoch_event(supernet, task, size, epoch, total / count, arch_loss, limit)
                session.save({"supernet": supernet.state_dict(), "w_opt": w_opt.state_dict(),
                              "schedule": schedule.state_dict(), "arch_opt": architect.optimizer.state_dict(),
                              "rng": torch.get_rng_state(), "epoch": epoch + 1, **(keep or {})},
                             step=first_step + epoch + 1, events=[{**event, "stage": description}])
                session.log(f"{description} epoch {epoch + 1}/{epochs}: train loss {event['train_loss']:.3f}, "
                            f"supernet val acc {event['val_accuracy']:.2f}%, expected MACs "
                            f"{event['expected_macs'] / 1e6:.2f}M, genotype {event['genotype']}")

    def _epoch_event(self, supernet: Any, task: Any, size: int, epoch: int, train_loss: float,
                     arch_loss: list[float], limit: float | None) -> dict[str, Any]:
        params, info = supernet.derive(max_skip=self.max_skip, limit=limit)
        with torch.no_grad():
            expected = float(supernet.expected_cost())
        return {"epoch": epoch + 1, "train_loss": train_loss,
                "arch_val_loss": sum(arch_loss) / len(arch_loss) if arch_loss else None,
                "val_accuracy": task.evaluate(supernet, input_size=size, limit=self.eval_limit)["accuracy"],
                "expected_macs": expected, "genotype": self.space.describe(self.space.arch(params)),
                "derive": info,
                "op_weights": {k: _rounded(v.detach().tolist()) for k, v in supernet.op_weights().items()}}


def _rounded(values: Any) -> Any:
    return [_rounded(v) for v in values] if isinstance(values, list) else round(values, 4)


__all__ = ["BilevelSearch"]
