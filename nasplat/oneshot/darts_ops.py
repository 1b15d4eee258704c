"""DARTS's seven cell operations, binarizable as BNAS and CP-NAS binarize them (nasplat.binary), as an op table
(`darts_ops`) that binary-cells searches whole and the other cell spaces take ops from, at full precision."""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..binary import BinaryConv2d, sign_activation
from .mixed_edges import CHANNELS_LAST, Core, OpTable


class _DepthwiseGrad(torch.autograd.Function):
    """A stride-1 depthwise convolution whose input gradient is the forward convolution of the output gradient
    with the flipped kernel: oneDNN's own backward of depthwise 5 x 5 and dilated kernels takes 2-3x as long
    on CPU (measured at the supernet's shapes), and these backward passes are a third of a search step."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, padding: int, dilation: int) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.dilation = padding, dilation
        return F.conv2d(x, weight, None, 1, padding, dilation, x.shape[1])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        p, d, c = ctx.padding, ctx.dilation, x.shape[1]
        grad = grad.contiguous(memory_format=CHANNELS_LAST)
        grad_x = F.conv2d(grad, weight.flip(-1, -2), None, 1, p, d, c) if ctx.needs_input_grad[0] else None
        grad_w = None
        if ctx.needs_input_grad[1]:
            if d == 2 and x.shape[2] % 2 == 0 and x.shape[3] % 2 == 0 and min(x.shape[2:]) // 2 >= weight.shape[-1]:
                # a kernel dilated by 2 pairs each output only with inputs of its own row and column parity, so
                # its weight gradient is the undilated one over the four parity grids stacked as a batch: 2-4x
                # faster in oneDNN than the dilated one (measured), where the grids are at least the kernel
                grad, x, p, d = _parity_grids(grad), _parity_grids(x), p // 2, 1
            grad_w = torch.ops.aten.convolution_backward(grad, x, weight, None, (1, 1), (p, p), (d, d), False, (0, 0),
                                                         c, (False, True, False))[1]
        return grad_x, grad_w, None, None


def _parity_grids(x: torch.Tensor) -> torch.Tensor:
    """The four (row parity, column parity) sub-grids of `x`, stacked along the batch, channels-last."""
    return torch.cat([x[:, :, a::2, b::2] for a in (0, 1) for b in (0, 1)]).contiguous(memory_format=CHANNELS_LAST)


class ConvUnit(nn.Module):
    """Depthwise k x k (dilated), pointwise 1 x 1, BN; its input is already ReLU'd (the op's `prep`). With
    binarized activations a BN sits between the convolutions, so that each sign sees a normalised input
    (CP-NAS's binarized separable convolution). The convolutions run channels-last (depthwise ones 2-3x
    faster so on CPU), batch norm does not (slower so on few channels); a ReLU runs after the conversion,
    since its backward is several times slower when its gradient and input differ in layout.

    A stride-2 kernel dilated by 2 reads only the even grid of its input, so it runs as that grid through an
    undilated stride-1 kernel: the same weights and values, about 9x faster on CPU than oneDNN's strided
    dilated convolution. While training (not under tracing, so costs and exports see plain convolutions) the
    depthwise convolution takes `_DepthwiseGrad`'s faster backward."""

    def __init__(self, c_in: int, c_out: int, k: int, stride: int, dilation: int, mode: str, affine: bool, *,
                 relu: bool = False):
        super().__init__()
        self.relu = nn.ReLU() if relu and mode != "both" else nn.Identity()
        self.even = stride == 2 and dilation == 2
        stride, dilation = (1, 1) if self.even else (stride, dilation)
        self.depthwise = BinaryConv2d(c_in, c_in, k, stride, dilation * (k - 1) // 2, dilation, groups=c_in,
                                      mode=mode)
        self.middle = nn.BatchNorm2d(c_in, affine=affine) if mode == "both" else nn.Identity()
        self.pointwise = BinaryConv2d(c_in, c_out, 1, mode=mode)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu((x[:, :, ::2, ::2] if self.even else x).contiguous(memory_format=CHANNELS_LAST))
        conv = self.depthwise
        if conv.stride[0] == 1 and torch.is_grad_enabled() and not torch.jit.is_tracing():
            x = _DepthwiseGrad.apply(sign_activation(x) if conv.mode == "both" else x, conv.reconstructed(),
                                     conv.padding[0], conv.dilation[0])
        else:
            x = conv(x)
        return self.bn(self.pointwise(self.middle(x)).contiguous())


class FactorizedReduce(nn.Module):
    """Halves the resolution with two 1 x 1 convolutions on the even and the odd grid, concatenated (the
    grids are sliced first: a strided 1 x 1 convolution computes the same, several times slower on CPU)."""

    def __init__(self, c_in: int, c_out: int, mode: str, affine: bool, *, relu: bool = False):
        super().__init__()
        self.relu = nn.ReLU() if relu and mode != "both" else nn.Identity()
        self.conv1 = BinaryConv2d(c_in, c_out // 2, 1, mode=mode)
        self.conv2 = BinaryConv2d(c_in, c_out - c_out // 2, 1, mode=mode)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        odd = F.pad(x, (0, 1, 0, 1))[:, :, 1::2, 1::2]  # zero beyond an odd edge, like the strided original
        return self.bn(torch.cat([self.conv1(x[:, :, ::2, ::2]), self.conv2(odd)], dim=1))


BinaryCore = Callable[[int, int, str, bool], nn.Module]  # (channels, stride, binarization, affine BN) -> module


def _sep(k: int) -> BinaryCore:
    return lambda c, s, m, a: nn.Sequential(ConvUnit(c, c, k, s, 1, m, a), ConvUnit(c, c, k, 1, 1, m, a, relu=True))


# op -> (its prep at stride 1 and at stride 2, its core under a binarization)
_DARTS: dict[str, tuple[tuple[str, str], BinaryCore]] = {
    "max_pool_3x3": (("max", "max"), lambda c, s, m, a: nn.BatchNorm2d(c, affine=False)),
    "avg_pool_3x3": (("avg", "avg"), lambda c, s, m, a: nn.BatchNorm2d(c, affine=False)),
    "skip_connect": (("none", "relu"), lambda c, s, m, a: nn.Identity() if s == 1 else FactorizedReduce(c, c, m, a)),
    "sep_conv_3x3": (("relu", "relu"), _sep(3)),
    "sep_conv_5x5": (("relu", "relu"), _sep(5)),
    "dil_conv_3x3": (("relu", "relu"), lambda c, s, m, a: ConvUnit(c, c, 3, s, 2, m, a)),
    "dil_conv_5x5": (("relu", "relu"), lambda c, s, m, a: ConvUnit(c, c, 5, s, 2, m, a)),
}


def _binarized(core: BinaryCore, mode: str) -> Core:
    return lambda c, s, a: core(c, s, mode, a)


@functools.cache
def darts_ops(mode: str = "none") -> OpTable:
    """DARTS's ops with their convolutions binarized by `mode` (none: full precision)."""
    return OpTable({op: (preps, _binarized(core, mode)) for op, (preps, core) in _DARTS.items()}, mode=mode)


def conv_bn(k: int, rate: int) -> Core:
    """A core: a full k x k convolution of dilation `rate` (the size kept, or halved at stride 2), then BN (the
    op's ReLU is its prep)."""
    return lambda c, s, a: nn.Sequential(nn.Conv2d(c, c, k, s, rate * (k - 1) // 2, rate, bias=False),
                                         nn.BatchNorm2d(c, affine=a))


__all__ = ["ConvUnit", "FactorizedReduce", "conv_bn", "darts_ops"]
