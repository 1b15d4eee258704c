"""CP-NAS's losses for training a 1-bit Child beside its full-precision Parent (methods.md §2.4).

kernel_loss: (lambda/2) * sum over layers of MSE(Parent kernel H, Child's reconstructed kernel alpha*sign(W)),
the Parent supervising the Child's kernels (not its logits). CenterLoss: (theta/2) * mean ||f - c_y||^2 on the
Child's last features, against class centres kept as moving averages, to tighten the classes that
binarization spreads.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..binary import BinaryConv2d


def kernel_loss(child: nn.Module, parent: nn.Module, *, weight: float) -> torch.Tensor:
    """(weight/2) * sum of MSE(parent kernel, child reconstructed kernel) over the child's binarized convolutions
    that have a same-named, same-shaped convolution in the parent. The parent's kernels are constants here."""
    parents = dict(parent.named_modules())
    terms = []
    for name, module in child.named_modules():
        twin = parents.get(name)
        if isinstance(module, BinaryConv2d) and module.binary and isinstance(twin, nn.Conv2d) \
                and twin.weight.shape == module.weight.shape:
            terms.append(F.mse_loss(module.reconstructed(), twin.weight.detach()))
    if not terms:
        raise ValueError("no binarized convolution of the Child has a full-precision twin of the same name and shape "
                         "in the Parent: build both from the same architecture")
    return weight / 2 * torch.stack(terms).sum()


class CenterLoss(nn.Module):
    """(weight/2) * batch mean of ||f_s - c_{y_s}||^2; the centres follow each batch's class means by an
    exponential moving average (no gradient flows into them)."""

    def __init__(self, num_classes: int, dim: int, *, weight: float, momentum: float = 0.9):
        super().__init__()
        self.weight, self.momentum = weight, momentum
        self.register_buffer("centers", torch.zeros(num_classes, dim))
        self.register_buffer("seen", torch.zeros(num_classes, dtype=torch.bool))

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        features = features.flatten(1)
        with torch.no_grad():  # centres from before this batch's update: the loss pulls toward where the class was
            centres = self.centers[labels].clone()
            fresh = ~self.seen[labels]
            centres[fresh] = features[fresh].detach()
        loss = self.weight / 2 * ((features - centres) ** 2).sum(1).mean()
        with torch.no_grad():
            for label in labels.unique():
                mean = features[labels == label].detach().mean(0)
                old = self.centers[label]
                self.centers[label] = mean if not self.seen[label] else self.momentum * old + (1 - self.momentum) * mean
                self.seen[label] = True
        return loss
