"""1-bit building blocks: XNOR-scaled binary weights, sign activations, and the convolution that uses them.

Every function here is made of plain tensor ops (straight-through estimators are written with `detach`, not
custom autograd Functions), so a binarized network traces to TorchScript and exports to ONNX as it trains:
what the export runs is exactly what was trained.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .errors import UserError

Mode = Literal["none", "weights", "both"]
MODES: tuple[str, ...] = ("none", "weights", "both")  # full precision; weights only (BNAS); weights and activations


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise UserError(f"unknown binarization {mode!r}; use none (full precision), weights (XNOR weights, "
                        f"BNAS) or both (weights and activations, 1-bit BNAS and CP-NAS)")
    return mode


def binary_sign(x: torch.Tensor) -> torch.Tensor:
    """+1 where x >= 0, else -1 (torch.sign would map 0 to 0, which is no binary value)."""
    return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))


def xnor_weight(weight: torch.Tensor) -> torch.Tensor:
    """XNOR-Net's binary kernel as BNAS releases it: alpha * sign(W), with one alpha = mean|W| per layer.

    Its gradient is BNAS's: dL/dW = dL/dW_hat * (1/n + alpha * 1{|W| <= 1}), with n the number of weights
    (a clipped straight-through estimator on sign, plus the share that reaches W through the mean).
    """
    n = weight.numel()
    alpha = weight.abs().mean().detach()
    clipped = weight.clamp(-1.0, 1.0)
    sign = clipped + (binary_sign(weight) - clipped).detach()  # value sign(W), gradient 1{|W| <= 1}
    spread = weight / n
    return alpha * sign + (spread - spread.detach())  # the last term is 0 in value, 1/n in gradient


def sign_activation(x: torch.Tensor) -> torch.Tensor:
    """sign(x) forward; backward through Bi-Real Net's piecewise quadratic (derivative 2 - 2|x| on [-1, 1])."""
    clipped = x.clamp(-1.0, 1.0)
    approx = 2 * clipped - clipped * clipped.abs()
    return approx + (binary_sign(x) - approx).detach()


class BinaryConv2d(nn.Conv2d):
    """A convolution whose kernel is binarized (mode "weights"), or kernel and input (mode "both").

    Mode "none" is an ordinary full-precision convolution, so one op table builds every precision.
    The cost counters (nasplat.cost.flops) count the MACs of a binarized convolution as binary operations.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 dilation: int = 1, groups: int = 1, bias: bool = False, *, mode: Mode = "weights"):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                         dilation=dilation, groups=groups, bias=bias)
        self.mode = check_mode(mode)

    @property
    def binary(self) -> bool:
        return self.mode != "none"

    def reconstructed(self) -> torch.Tensor:
        """The kernel the convolution applies: alpha * sign(W) when binarized (CP-NAS's reconstructed filter)."""
        return xnor_weight(self.weight) if self.binary else self.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "both":
            x = sign_activation(x)
        return F.conv2d(x, self.reconstructed(), self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, mode={self.mode}"
