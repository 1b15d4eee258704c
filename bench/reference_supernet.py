"""The papers' search supernet, written plainly: the baseline that bench/supernet_step.py times side by side.

The DARTS and PC-DARTS search networks as their papers describe them (and as their released search code lays
them out): every edge a mixed op holding its own modules, the eight DARTS operations as ReLU-conv-BN stacks in
the default memory layout, "none" computed as a multiplication by zero, and with PC-DARTS 1/M of each edge's
input sliced through the ops, the rest concatenated back (max-pooled on reduction edges) and shuffled, each
node's edges weighted by a softmax over its betas. None of nasplat's own speed work is here (shared preps,
per-node bypass, channels-last depthwise convolutions, the faster depthwise backward), so timing this next to
nasplat's supernet in the same run gives a ratio that does not drift with the shared machine.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

PRIMITIVES = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5",
              "dil_conv_3x3", "dil_conv_5x5")


def _relu_conv(c_in: int, c_out: int, k: int, stride: int, padding: int, dilation: int = 1,
                  groups: int = 1) -> list[nn.Module]:
    return [nn.ReLU(), nn.Conv2d(c_in, c_out, k, stride, padding, dilation, groups, bias=False)]


def dil_conv(c: int, k: int, stride: int, dilation: int) -> nn.Module:
    return nn.Sequential(*_relu_conv(c, c, k, stride, dilation * (k - 1) // 2, dilation, groups=c),
                         nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c, affine=False))


def sep_conv(c: int, k: int, stride: int) -> nn.Module:
    return nn.Sequential(dil_conv(c, k, stride, 1), dil_conv(c, k, 1, 1))


class Zero(nn.Module):
    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul(0.0) if self.stride == 1 else x[:, :, ::self.stride, ::self.stride].mul(0.0)


class FactorizedReduce(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out // 2, 1, 2, bias=False)
        self.conv2 = nn.Conv2d(c_in, c_out // 2, 1, 2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)
        return self.bn(torch.cat([self.conv1(x), self.conv2(x[:, :, 1:, 1:])], dim=1))


def make(name: str, c: int, stride: int) -> nn.Module:
    if name == "none":
        return Zero(stride)
    if name in ("max_pool_3x3", "avg_pool_3x3"):
        pool = nn.MaxPool2d(3, stride, 1) if name == "max_pool_3x3" else \
            nn.AvgPool2d(3, stride, 1, count_include_pad=False)
        return nn.Sequential(pool, nn.BatchNorm2d(c, affine=False))
    if name == "skip_connect":
        return nn.Identity() if stride == 1 else FactorizedReduce(c, c)
    k = int(name[-1])
    return sep_conv(c, k, stride) if name.startswith("sep") else dil_conv(c, k, stride, 2)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).contiguous().view(n, c, h, w)


class MixedOp(nn.Module):
    def __init__(self, c: int, stride: int, partial: int):
        super().__init__()
        self.stride, self.partial = stride, partial
        self.ops = nn.ModuleList(make(name, c // partial, stride) for name in PRIMITIVES)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        if self.partial == 1:
            return sum(w * op(x) for w, op in zip(weights, self.ops))
        part = x.shape[1] // self.partial
        head, rest = x[:, :part], x[:, part:]
        out = sum(w * op(head) for w, op in zip(weights, self.ops))
        rest = F.max_pool2d(rest, 2, 2) if self.stride == 2 else rest
        return channel_shuffle(torch.cat([out, rest], dim=1), self.partial)


class Cell(nn.Module):
    def __init__(self, c_pp: int, c_p: int, c: int, *, reduction: bool, reduction_prev: bool, partial: int):
        super().__init__()
        self.reduction = reduction
        self.pre0 = FactorizedReduce(c_pp, c) if reduction_prev else \
            nn.Sequential(*_relu_conv(c_pp, c, 1, 1, 0), nn.BatchNorm2d(c, affine=False))
        self.pre1 = nn.Sequential(*_relu_conv(c_p, c, 1, 1, 0), nn.BatchNorm2d(c, affine=False))
        self.ops = nn.ModuleList(MixedOp(c, 2 if reduction and j < 2 else 1, partial)
                                 for i in range(4) for j in range(i + 2))

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor,
                edge_weights: torch.Tensor | None) -> torch.Tensor:
        states = [self.pre0(s0), self.pre1(s1)]
        offset = 0
        for i in range(4):
            edges = [self.ops[offset + j](h, weights[offset + j]) for j, h in enumerate(states)]
            states.append(sum(edges) if edge_weights is None else sum(b * e for b, e in zip(edge_weights[offset:], edges)))
            offset += len(states) - 1
        return torch.cat(states[2:], dim=1)


class SearchNetwork(nn.Module):
    """partial=1, edge_normalization=False: DARTS; partial=4, edge_normalization=True: PC-DARTS."""

    def __init__(self, *, channels: int = 16, layers: int = 8, num_classes: int = 10, partial: int = 4,
                 edge_normalization: bool = True):
        super().__init__()
        self.edge_normalization = edge_normalization
        c_curr = 3 * channels
        self.stem = nn.Sequential(nn.Conv2d(3, c_curr, 3, padding=1, bias=False), nn.BatchNorm2d(c_curr))
        c_pp, c_p, c = c_curr, c_curr, channels
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            c = c * 2 if reduction else c
            self.cells.append(Cell(c_pp, c_p, c, reduction=reduction, reduction_prev=reduction_prev, partial=partial))
            reduction_prev = reduction
            c_pp, c_p = c_p, 4 * c
        self.classifier = nn.Linear(c_p, num_classes)
        self.alphas = nn.ParameterDict({t: nn.Parameter(1e-3 * torch.randn(14, len(PRIMITIVES)))
                                        for t in ("normal", "reduce")})
        self.betas = nn.ParameterDict({t: nn.Parameter(1e-3 * torch.randn(14)) for t in ("normal", "reduce")})

    def _edge_weights(self, betas: torch.Tensor) -> torch.Tensor | None:
        if not self.edge_normalization:
            return None
        return torch.cat([betas[sum(range(2, i + 2)):sum(range(2, i + 3))].softmax(0) for i in range(4)])

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in [*self.alphas.values(), *self.betas.values()]}
        return [p for p in self.parameters() if id(p) not in arch]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            t = "reduce" if cell.reduction else "normal"
            s0, s1 = s1, cell(s0, s1, self.alphas[t].softmax(-1), self._edge_weights(self.betas[t]))
        return self.classifier(F.adaptive_avg_pool2d(s1, 1).flatten(1))
