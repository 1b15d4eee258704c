"""l-infinity adversarial examples: FGSM with a random start (ABanditNAS's Algorithm 8) and PGD.

The threat model is in PIXEL space: images in [0, 1], perturbations with ||delta||_inf <= eps, eps and the step
in pixel units (8/255 and 2/255 on CIFAR-10), whatever normalisation the model's inputs have. A model that
sees normalised inputs x = (pixels - mean) / std (the classification task's) is attacked by passing `mean`
and `std`: the attack recovers the pixels, perturbs and clips them (to x +- eps and to [0, 1]) and normalises
again before every forward pass, so it never has to scale eps by std. The adversarial batch comes back
normalised like `x`. Without `mean` and `std`, `x` is taken to be the pixels.

The model runs in whatever mode the caller left it (train mode for adversarial training, so batch norm uses
the attacked batch's statistics as it will in the update; eval mode for robust accuracy); only the input's
gradient is computed, the parameters' `.grad` stay as they were.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, step: float, loss_fn: Loss,
         random_start: bool = True, mean: torch.Tensor | None = None,
         std: torch.Tensor | None = None) -> torch.Tensor:
    """FGSM from a random start (Wong et al.'s "fast" adversarial training, ABanditNAS's Algorithm 8):
    delta ~ U(-eps, eps), delta <- clip(delta + step * sign(grad_x loss), -eps, eps); one gradient step."""
    return pgd(model, x, y, eps=eps, step=step, iters=1, loss_fn=loss_fn, random_start=random_start, mean=mean,
               std=std)


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, step: float, iters: int,
        loss_fn: Loss, random_start: bool = True, mean: torch.Tensor | None = None,
        std: torch.Tensor | None = None) -> torch.Tensor:
    """Projected gradient descent (Madry et al.): `iters` signed-gradient ascent steps of `step` on the loss,
    each projected back into the eps-ball around the pixels and into [0, 1]; from a uniform random point of the
    ball when `random_start`."""
    if eps < 0 or step <= 0 or iters < 1:
        raise ValueError(f"an attack needs eps >= 0, step > 0 and iters >= 1; got {eps}, {step}, {iters}")
    if (mean is None) != (std is None):
        raise ValueError("give both mean and std (the inputs' normalisation), or neither (inputs are pixels)")
    x = x.detach()
    pixels = x if mean is None else x * std + mean

    def normalise(p: torch.Tensor) -> torch.Tensor:
        return p if mean is None else (p - mean) / std

    delta = torch.empty_like(pixels).uniform_(-eps, eps) if random_start else torch.zeros_like(pixels)
    delta = (pixels + delta).clamp(0, 1) - pixels
    for _ in range(iters):
        delta.requires_grad_(True)
        with torch.enable_grad():
            loss = loss_fn(model(normalise(pixels + delta)), y)
            (grad,) = torch.autograd.grad(loss, delta)
        delta = (delta.detach() + step * grad.sign()).clamp(-eps, eps)
        delta = (pixels + delta).clamp(0, 1) - pixels
    return normalise(pixels + delta).detach()


__all__ = ["fgsm", "pgd"]
