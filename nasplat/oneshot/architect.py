"""DARTS's architecture step: Adam on the architecture parameters against the validation loss.

First order treats the network weights as constants. Second order differentiates through one virtual SGD
step of the weights, w' = w - xi * grad_w L_train(w, alpha), and approximates its Hessian-vector product by
central finite differences, as DARTS does: no second backward pass and no copy of the network (the weights
are moved in place and put back).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import nn

Loss = Callable[[Any], torch.Tensor]  # a batch -> the scalar loss of the network on it


class Architect:
    """Updates `alphas` from validation batches; `loss(batch)` runs the network that owns `weights` and `alphas`.

    `penalty()`, when given, is added to the validation loss of the architecture step only: a differentiable
    expected cost that steers the architecture toward a budget (the network weights never see it).
    """

    def __init__(self, *, weights: Sequence[nn.Parameter], alphas: Sequence[nn.Parameter], loss: Loss,
                 order: Literal[1, 2] = 1, lr: float = 6e-4, betas: tuple[float, float] = (0.5, 0.999),
                 weight_decay: float = 1e-3, penalty: Callable[[], torch.Tensor] | None = None):
        if order not in (1, 2):
            raise ValueError(f"DARTS order must be 1 (first order) or 2 (second order), got {order!r}")
        self.weights = list(weights)
        self.alphas = list(alphas)
        self.loss = loss
        self.order = order
        self.penalty = penalty
        self.optimizer = torch.optim.Adam(self.alphas, lr=lr, betas=betas, weight_decay=weight_decay)

    def step(self, train_batch: Any, val_batch: Any, *, w_lr: float, w_optimizer: torch.optim.Optimizer | None = None,
             w_momentum: float = 0.9, w_decay: float = 3e-4) -> dict[str, float]:
        """One architecture update; returns the validation loss and the penalty it was charged.

        Second order needs the weights' SGD settings (`w_lr`, `w_momentum`, `w_decay`) and, for the momentum
        term of the virtual step, the weights' optimizer (its momentum buffers)."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.order == 2:
            val_loss = self._unrolled_backward(train_batch, val_batch, w_lr, w_optimizer, w_momentum, w_decay)
        else:
            val_loss = self.loss(val_batch)
        charged = self.penalty() if self.penalty is not None else None
        total = val_loss + charged if charged is not None else val_loss
        if self.order == 2:
            if charged is not None:  # the penalty depends on alpha alone: its gradient adds directly
                for alpha, grad in zip(self.alphas, torch.autograd.grad(charged, self.alphas, allow_unused=True)):
                    if grad is not None:
                        alpha.grad = grad if alpha.grad is None else alpha.grad + grad
        else:
            grads = torch.autograd.grad(total, self.alphas, allow_unused=True)
            for alpha, grad in zip(self.alphas, grads):
                alpha.grad = grad
        self.optimizer.step()
        return {"val_loss": val_loss.item(), "penalty": charged.item() if charged is not None else 0.0}

    def _unrolled_backward(self, train_batch: Any, val_batch: Any, w_lr: float,
                           w_optimizer: torch.optim.Optimizer | None, momentum: float, decay: float) -> torch.Tensor:
        """Sets alpha.grad to the second-order gradient; returns the validation loss at the virtual weights."""
        grads = torch.autograd.grad(self.loss(train_batch), self.weights, allow_unused=True)
        saved = [w.detach().clone() for w in self.weights]
        with torch.no_grad():
            for w, g in zip(self.weights, grads):
                step = (g if g is not None else torch.zeros_like(w)) + decay * w
                buffer = w_optimizer.state.get(w, {}).get("momentum_buffer") if w_optimizer is not None else None
                if buffer is not None:
                    step = step + momentum * buffer
                w.sub_(w_lr * step)
        val_loss = self.loss(val_batch)
        val_grads = torch.autograd.grad(val_loss, self.alphas + self.weights, allow_unused=True)
        d_alpha, d_w = val_grads[:len(self.alphas)], val_grads[len(self.alphas):]
        vector = [g if g is not None else torch.zeros_like(w) for g, w in zip(d_w, self.weights)]
        norm = torch.sqrt(sum((v * v).sum() for v in vector))
        radius = 0.01 / float(norm) if float(norm) > 0 else 0.0
        hessian = self._finite_difference(train_batch, saved, vector, radius) if radius else None
        for i, alpha in enumerate(self.alphas):
            grad = d_alpha[i] if d_alpha[i] is not None else torch.zeros_like(alpha)
            if hessian is not None:
                grad = grad - w_lr * hessian[i]
            alpha.grad = grad
        with torch.no_grad():
            for w, s in zip(self.weights, saved):
                w.copy_(s)
        return val_loss.detach()

    def _finite_difference(self, batch: Any, saved: list[torch.Tensor], vector: list[torch.Tensor],
                           radius: float) -> list[torch.Tensor]:
        """(grad_alpha L_train(w + r v) - grad_alpha L_train(w - r v)) / 2r, the Hessian-vector product."""
        sides = []
        for sign in (1.0, -1.0):
            with torch.no_grad():
                for w, s, v in zip(self.weights, saved, vector):
                    w.copy_(s + sign * radius * v)
            grads = torch.autograd.grad(self.loss(batch), self.alphas, allow_unused=True)
            sides.append([g if g is not None else torch.zeros_like(a) for g, a in zip(grads, self.alphas)])
        return [(plus - minus) / (2 * radius) for plus, minus in zip(*sides)]
