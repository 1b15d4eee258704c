"""Binarized DARTS cells (BNAS, CP-NAS): genotypes as plain literals, standalone networks and a supernet.

A cell has two inputs (the outputs of the two previous cells), four intermediate nodes and 14 edges; each
node sums two of its incoming edges, each through one of the eight DARTS operations, and the cell's output
concatenates the four nodes. A genotype is the DARTS literal: per cell type, eight `(op, input)` pairs, two
per node, inputs 0 and 1 being the cell inputs and 2.. the earlier nodes.

Convolutions inside the cells are binarized as the papers do (`binarize`): "weights" (XNOR-scaled sign
kernels, activations full precision: BNAS), "both" (weights and activations: 1-bit BNAS and CP-NAS, where the
sign replaces the ReLU in front of each convolution), or "none". The stem and the classifier stay full
precision. Costs count binarized MACs as binary operations, and --flops means full-precision MACs + BOPs/64.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import networkx as nx
import torch
import torch.nn.functional as F
from torch import nn

from nasplat.arch import Arch
from nasplat.binary import BinaryConv2d, check_mode, sign_activation
from nasplat.cost import count_costs
from nasplat.oneshot import cells
from nasplat.oneshot.cells import CellSupernet, Genotype, OpCosts, validate_cell
from nasplat.registry import register_space
from nasplat.space import SearchSpace, Target

OPS = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3",
       "dil_conv_5x5")
CELL_OPS = OPS[1:]  # what a genotype may hold: "none" only exists in the supernet
NONE, SKIP = OPS.index("none"), OPS.index("skip_connect")
NODES = 4
CELL_TYPES = ("normal", "reduce")
LAYOUT = cells.CellLayout(inputs=2, nodes=NODES, keep=2, ops=OPS, groups=CELL_TYPES, capped=("normal",))
EDGE_NODE = LAYOUT.edge_node  # the node each of the 14 edges feeds
EDGE_INPUT = LAYOUT.edge_input  # and the state it reads
EDGES = LAYOUT.edges
edge_of = LAYOUT.edge_of


# -- operations -----------------------------------------------------------------------------------------------

CHANNELS_LAST = torch.channels_last  # depthwise convolutions run 2-3x faster in it on CPU (measured)


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


def _preprocess(c_in: int, c_out: int, mode: str, affine: bool) -> nn.Module:
    relu = nn.Identity() if mode == "both" else nn.ReLU()
    return nn.Sequential(relu, BinaryConv2d(c_in, c_out, 1, mode=mode), nn.BatchNorm2d(c_out, affine=affine))


class Prep(nn.Module):
    """The parameter-free start of an op: nothing, ReLU (none with binarized activations, where the sign
    replaces it), or 3 x 3 max or average pooling. The supernet computes it once per source state and shares
    it among that state's edges (PC-DARTS's edges from one state all see the same channels)."""

    def __init__(self, kind: str, stride: int, mode: str):
        super().__init__()
        self.kind = "none" if kind == "relu" and mode == "both" else kind
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "relu":
            return F.relu(x)
        if self.kind == "max":
            return F.max_pool2d(x, 3, self.stride, 1)
        if self.kind == "avg":
            return F.avg_pool2d(x, 3, self.stride, 1, count_include_pad=False)
        return x


def _sep(k: int) -> Callable[[int, int, str, bool], nn.Module]:
    return lambda c, s, m, a: nn.Sequential(ConvUnit(c, c, k, s, 1, m, a), ConvUnit(c, c, k, 1, 1, m, a, relu=True))


# op -> (its prep at stride 1 and at stride 2, the core applied to the prep's output: (channels, stride,
# binarization, affine BN) -> module). The one op table: standalone ops are prep then core.
OP_TABLE: dict[str, tuple[tuple[str, str], Callable[[int, int, str, bool], nn.Module]]] = {
    "max_pool_3x3": (("max", "max"), lambda c, s, m, a: nn.BatchNorm2d(c, affine=False)),
    "avg_pool_3x3": (("avg", "avg"), lambda c, s, m, a: nn.BatchNorm2d(c, affine=False)),
    "skip_connect": (("none", "relu"), lambda c, s, m, a: nn.Identity() if s == 1 else FactorizedReduce(c, c, m, a)),
    "sep_conv_3x3": (("relu", "relu"), _sep(3)),
    "sep_conv_5x5": (("relu", "relu"), _sep(5)),
    "dil_conv_3x3": (("relu", "relu"), lambda c, s, m, a: ConvUnit(c, c, 3, s, 2, m, a)),
    "dil_conv_5x5": (("relu", "relu"), lambda c, s, m, a: ConvUnit(c, c, 5, s, 2, m, a)),
}


def prep_of(op: str, stride: int) -> str:
    return OP_TABLE[op][0][stride - 1]


def full_precision(op: str) -> tuple[tuple[str, str], Callable[[int, int, bool], nn.Module]]:
    """`op` of this table at full precision, as an entry of another space's table: (its preps, a core
    builder (channels, stride, affine BN) -> module)."""
    preps, core = OP_TABLE[op]
    return preps, lambda c, s, a: core(c, s, "none", a)


def conv_bn(k: int, rate: int) -> Callable[[int, int, bool], nn.Module]:
    """A core builder: a full k x k convolution of dilation `rate` (the size kept, or halved at stride 2), then
    BN (the op's ReLU is its prep)."""
    return lambda c, s, a: nn.Sequential(nn.Conv2d(c, c, k, s, rate * (k - 1) // 2, rate, bias=False),
                                         nn.BatchNorm2d(c, affine=a))


def make_op(op: str, channels: int, stride: int, mode: str, *, affine: bool) -> nn.Module:
    """A standalone op: its prep, then its core."""
    return nn.Sequential(Prep(prep_of(op, stride), stride, mode), OP_TABLE[op][1](channels, stride, mode, affine))


# -- genotypes ------------------------------------------------------------------------------------------------

canonical = LAYOUT.canonical  # each node's two pairs ordered by input then op


def check_genotype(genotype: Any, *, name: str = "genotype") -> Genotype:
    """The canonical genotype, or ValueError naming what is wrong with the literal."""
    return LAYOUT.check(genotype, name=name)


def describe_genotype(normal: Genotype, reduce: Genotype) -> str:
    concat = list(range(2, 2 + NODES))
    return (f"Genotype(normal={[tuple(p) for p in normal]}, normal_concat={concat}, "
            f"reduce={[tuple(p) for p in reduce]}, reduce_concat={concat})")


@dataclass(frozen=True)
class CellParam(cells.CellParam):
    """A DARTS cell genotype (two inputs per node) as one searched value."""

    layout: cells.CellLayout = LAYOUT


def cell_graph(genotype: Genotype) -> nx.DiGraph:
    """The cell as a DAG: inputs c_{k-2} and c_{k-1}, nodes 0..3, output c_{k}; edges carry their op."""
    return cells.cell_graph(LAYOUT, genotype)


# -- networks -------------------------------------------------------------------------------------------------

def _reductions(layers: int) -> set[int]:
    return {layers // 3, 2 * layers // 3}


class Cell(nn.Module):
    """A standalone cell of one genotype."""

    def __init__(self, genotype: Genotype, c_pp: int, c_p: int, c: int, *, reduction: bool, reduction_prev: bool,
                 mode: str):
        super().__init__()
        self.pre0 = FactorizedReduce(c_pp, c, mode, True, relu=True) if reduction_prev else \
            _preprocess(c_pp, c, mode, True)
        self.pre1 = _preprocess(c_p, c, mode, True)
        self.sources = [source for _, source in genotype]
        self.ops = nn.ModuleList(make_op(op, c, 2 if reduction and source < 2 else 1, mode, affine=True)
                                 for op, source in genotype)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        states = [self.pre0(s0), self.pre1(s1)]
        for node in range(NODES):
            a, b = 2 * node, 2 * node + 1
            states.append(self.ops[a](states[self.sources[a]]) + self.ops[b](states[self.sources[b]]))
        return torch.cat(states[2:], dim=1)


class _Macro(nn.Module):
    """The DARTS CIFAR network around its cells: full-precision stem, cells, pooling, full-precision linear."""

    def __init__(self, channels: int, layers: int, num_classes: int, make_cell: Callable[..., nn.Module]):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 3 * channels, 3, padding=1, bias=False), nn.BatchNorm2d(3 * channels))
        c_pp, c_p, c = 3 * channels, 3 * channels, channels
        cells, reduction_prev = [], False
        for layer in range(layers):
            reduction = layer in _reductions(layers)
            c = c * 2 if reduction else c
            cells.append(make_cell(c_pp, c_p, c, reduction=reduction, reduction_prev=reduction_prev))
            c_pp, c_p, reduction_prev = c_p, NODES * c, reduction
        self.cells = nn.ModuleList(cells)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_p, num_classes)

    def features(self, x: torch.Tensor, run: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
                 ) -> torch.Tensor:
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, run(cell, s0, s1)
        return self.classifier(torch.flatten(self.pool(s1), 1))


class Network(_Macro):
    """The standalone network of a genotype."""

    def __init__(self, normal: Genotype, reduce: Genotype, *, channels: int, layers: int, num_classes: int,
                 mode: str):
        super().__init__(channels, layers, num_classes, lambda c_pp, c_p, c, reduction, reduction_prev: Cell(
            reduce if reduction else normal, c_pp, c_p, c, reduction=reduction, reduction_prev=reduction_prev,
            mode=mode))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x, lambda cell, s0, s1: cell(s0, s1))


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class SourceState:
    """One state of a supernet cell as its outgoing edges see it: the 1/M channels that go through the ops and
    the rest that bypass them, and each op's prep of the former, computed once however many edges ask."""

    def __init__(self, x: torch.Tensor, *, part: int, stride: int, mode: str):
        self.part, self.stride, self.mode = part, stride, mode
        # split, not two slices: a slice's backward fills a zero tensor of the whole input, a split's does not
        self.head, self._bypass = torch.split(x, [part, x.shape[1] - part], dim=1) if part < x.shape[1] else (x, None)
        self._preps: dict[str, torch.Tensor] = {}
        self._tail: torch.Tensor | None = None

    def prep(self, kind: str) -> torch.Tensor:
        if kind not in self._preps:
            # what convolutions read is converted once here, not by each of them, and before the ReLU (whose
            # backward is slow when its gradient and input differ in layout)
            x = self.head.contiguous(memory_format=CHANNELS_LAST) if kind == "relu" else self.head
            self._preps[kind] = Prep(kind, self.stride, self.mode)(x)
        return self._preps[kind]

    def tail(self) -> torch.Tensor:
        if self._tail is None:
            self._tail = self._bypass if self.stride == 1 else F.max_pool2d(self._bypass, 2, 2)
        return self._tail


def _edge(c: int, stride: int, mode: str, partial: int) -> MixedEdge:
    return MixedEdge(OPS, channels=c, partial=partial, prep=lambda op: prep_of(op, stride),
                     core=lambda op, part: OP_TABLE[op][1](part, stride, mode, False))


class MixedEdge(nn.Module):
    """One supernet edge of any cell space: the cores of its ops on the source's 1/M channels (PC-DARTS),
    weighted and summed; an op named "none" is never run. The cell adds the bypassing channels per node, not
    per edge (concatenation and shuffle are linear). `prep(op)` names the op's shared prep, `core(op, part)`
    builds its core on `part` channels."""

    def __init__(self, ops: Sequence[str], *, channels: int, partial: int, prep: Callable[[str], str],
                 core: Callable[[str, int], nn.Module]):
        super().__init__()
        if channels % partial:
            raise ValueError(f"partial_channels={partial} must divide the cell's channels ({channels})")
        self.part = channels // partial
        self.skipped = frozenset(k for k, op in enumerate(ops) if op == "none")
        self.preps = ["none" if op == "none" else prep(op) for op in ops]
        self.ops = nn.ModuleList(nn.Identity() if op == "none" else core(op, self.part)
                                 for op in ops)  # the slot of "none" is never run

    def forward(self, source: SourceState, weights: torch.Tensor | None, ops: Sequence[int]) -> torch.Tensor | None:
        """Weighted sum of `ops` (indices; weights None: the single op of a path, weight 1); None when every
        op is "none"."""
        out: torch.Tensor | None = None
        for k in ops:
            if k in self.skipped:
                continue
            y = self.ops[k](source.prep(self.preps[k]))
            if weights is None:
                out = y if out is None else out + y
            else:
                out = y * weights[k] if out is None else torch.addcmul(out, y, weights[k])
        return out


def node_states(layout: cells.CellLayout, inputs: Sequence[torch.Tensor], edges: Sequence[MixedEdge],
                weights: torch.Tensor | None, edge_weights: torch.Tensor | None, ops: Sequence[Sequence[int]], *,
                reduction: bool, partial: int, mode: str) -> list[torch.Tensor]:
    """The node states of a supernet cell of any layout, from its (preprocessed) input states: every node sums
    its incoming mixed edges, each weighted by its edge weight (beta) when given; the channels that bypass the
    ops are summed per node and shuffled back in (PC-DARTS). A node whose edges all run "none" is zeros."""
    if weights is not None and edge_weights is not None:
        weights = weights * edge_weights[:, None]
    states, sources = list(inputs), []
    part = inputs[0].shape[1] // partial
    for node in range(layout.nodes):
        head: torch.Tensor | None = None
        tail: torch.Tensor | None = None
        for source in range(layout.inputs + node):
            if source == len(sources):
                stride = 2 if reduction and source < layout.inputs else 1
                sources.append(SourceState(states[source], part=part, stride=stride, mode=mode))
            e = layout.edge_of(node, source)
            y = edges[e](sources[source], weights[e] if weights is not None else None, ops[e])
            if y is not None:
                head = y if head is None else head + y
            if partial > 1:
                t = sources[source].tail()
                t = t if edge_weights is None else t * edge_weights[e]
                tail = t if tail is None else tail + t
        if head is None:
            x, stride = sources[0].head, 2 if reduction else 1
            head = x.new_zeros(x.shape[0], part, -(-x.shape[2] // stride), -(-x.shape[3] // stride))
        states.append(head if tail is None else channel_shuffle(torch.cat([head, tail], dim=1), partial))
    return states[layout.inputs:]


class SuperCell(nn.Module):
    def __init__(self, c_pp: int, c_p: int, c: int, *, reduction: bool, reduction_prev: bool, mode: str,
                 partial: int):
        super().__init__()
        self.reduction, self.mode, self.partial = reduction, mode, partial
        self.pre0 = FactorizedReduce(c_pp, c, mode, False, relu=True) if reduction_prev else \
            _preprocess(c_pp, c, mode, False)
        self.pre1 = _preprocess(c_p, c, mode, False)
        self.edges = nn.ModuleList(_edge(c, 2 if reduction and EDGE_INPUT[e] < 2 else 1, mode, partial)
                                   for e in range(EDGES))

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor | None,
                edge_weights: torch.Tensor | None, ops: Sequence[Sequence[int]]) -> torch.Tensor:
        """Node j = sum over its edges e of beta_e * shuffle(cat(sum_k w_ek op_k(head), tail)), computed as
        shuffle(cat(sum_e sum_k beta_e w_ek op_k(head), sum_e beta_e tail)): one concatenation per node."""
        states = node_states(LAYOUT, [self.pre0(s0), self.pre1(s1)], self.edges, weights, edge_weights, ops,
                             reduction=self.reduction, partial=self.partial, mode=self.mode)
        return torch.cat(states, dim=1)


class Supernet(CellSupernet, _Macro):
    """The weight-sharing supernet: mixed edges with architecture parameters `alphas` (per cell type, 14 x 8)
    and, with edge normalisation, `betas` (14 per cell type). `forward(x, path=...)` runs one op per edge."""

    def __init__(self, space: BinaryCells, *, partial_channels: int, edge_normalization: bool, mode: str):
        o = space.options
        super().__init__(o["channels"], o["layers"], o["num_classes"], lambda c_pp, c_p, c, reduction,
                         reduction_prev: SuperCell(c_pp, c_p, c, reduction=reduction, reduction_prev=reduction_prev,
                                                   mode=mode, partial=partial_channels))
        self.space = space
        self.init_arch(LAYOUT, edge_normalization=edge_normalization)

    def forward(self, x: torch.Tensor, path: Mapping[str, Sequence[int]] | None = None) -> torch.Tensor:
        weights, edges, allowed = self.route(path)

        def run(cell: SuperCell, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
            t = "reduce" if cell.reduction else "normal"
            return cell(s0, s1, weights[t] if weights is not None else None, edges[t] if edges else None, allowed[t])

        return self.features(x, run)


# -- derivation -----------------------------------------------------------------------------------------------

def derive_genotype(op_weights: Mapping[str, torch.Tensor], edge_weights: Mapping[str, torch.Tensor] | None = None,
                    *, max_skip: int | None = 2) -> tuple[dict[str, Genotype], dict[str, Any]]:
    """DARTS's rule on the two-input cell (`cells.derive_genotype`): each node keeps its two strongest edges,
    the normal cell at most `max_skip` skip connections."""
    return cells.derive_genotype(LAYOUT, op_weights, edge_weights, max_skip=max_skip)


# -- the space ------------------------------------------------------------------------------------------------

@register_space("binary-cells")
class BinaryCells(SearchSpace):
    """DARTS cells binarized as BNAS / CP-NAS (--space-option binarize=weights|both|none), with a supernet."""

    default_task_options = {"base_resolution": 32}

    def __init__(self, *, channels: int = 16, layers: int = 8, binarize: str = "weights", resolution: int = 32,
                 num_classes: int = 10):
        check_mode(binarize)
        if channels < 1 or layers < 3 or resolution < 8 or num_classes < 2:
            raise ValueError(f"binary-cells needs channels >= 1, layers >= 3, resolution >= 8 and num_classes >= 2; "
                             f"got {channels}, {layers}, {resolution}, {num_classes}")
        super().__init__(channels=channels, layers=layers, binarize=binarize, resolution=resolution,
                         num_classes=num_classes)

    def parameters(self) -> dict[str, CellParam]:
        return {"normal": CellParam(), "reduce": CellParam()}

    def arch(self, params: Mapping[str, Any]) -> Arch:
        o = self.options
        return Arch(self.name, {"normal": check_genotype(params["normal"], name="normal"),
                                "reduce": check_genotype(params["reduce"], name="reduce"),
                                "channels": o["channels"], "layers": o["layers"], "binarize": o["binarize"],
                                "resolution": o["resolution"], "classes": o["num_classes"]})

    def validate(self, arch: Arch) -> None:
        super().validate(arch)
        for key in ("channels", "layers", "binarize", "resolution", "classes"):
            if key not in arch:
                raise ValueError(f"architecture lacks {key!r}")
        check_mode(arch["binarize"])

    def build(self, arch: Arch, *, num_classes: int | None = None) -> nn.Module:
        self.validate(arch)
        return Network(arch["normal"], arch["reduce"], channels=arch["channels"], layers=arch["layers"],
                       num_classes=num_classes or arch["classes"], mode=arch["binarize"])

    def target(self, arch: Arch) -> Target:
        return Target((1, 3, arch["resolution"], arch["resolution"]), arch["classes"])

    def smallest(self) -> Arch:
        """Max pooling on every edge: the cells add no MACs beyond their preprocessing."""
        cell = tuple(("max_pool_3x3", s) for j in range(NODES) for s in (0, 1))
        return self.arch({"normal": cell, "reduce": cell})

    def describe(self, arch: Arch) -> str:
        return (f"{describe_genotype(arch['normal'], arch['reduce'])} | C={arch['channels']} layers={arch['layers']} "
                f"binarize={arch['binarize']}")

    def supernet(self, *, partial_channels: int = 4, edge_normalization: bool = True,
                 binarize: str | None = None) -> Supernet:
        return Supernet(self, partial_channels=partial_channels, edge_normalization=edge_normalization,
                        mode=check_mode(binarize or self.options["binarize"]))

    def derive(self, op_weights: Mapping[str, torch.Tensor], edge_weights: Mapping[str, torch.Tensor] | None = None,
               *, max_skip: int | None = 2, limit: float | None = None) -> tuple[dict[str, Genotype], dict]:
        """The genotype of `derive_genotype`; over a MAC `limit`, ops are swapped for cheaper ones on the same
        edges, each time the swap that gives up the least op weight per MAC saved, until it fits."""
        return cells.derive(LAYOUT, op_weights, edge_weights, max_skip=max_skip, limit=limit, op_costs=self.op_costs)

    def op_costs(self) -> OpCosts:
        return self._op_costs

    @cached_property
    def _op_costs(self) -> OpCosts:
        o = self.options
        plan = [("reduce" if layer in _reductions(o["layers"]) else "normal", layer in _reductions(o["layers"]))
                for layer in range(o["layers"])]
        sizes = cells.plan_sizes(plan, channels=o["channels"], resolution=o["resolution"])
        fixed = count_costs(self.build(self.smallest()), self.target(self.smallest()).input_shape)["macs"]
        return cells.measure_op_costs(LAYOUT, sizes, lambda op, c, s: make_op(op, c, s, o["binarize"], affine=True),
                                      fixed=fixed)

    def draw(self, arch: Arch, out: Path) -> list[Path]:
        """normal.png and reduce.png in `out`: each cell as a left-to-right DAG with its ops on the edges."""
        return cells.draw_cells(LAYOUT, {t: arch[t] for t in CELL_TYPES}, out, note=f"{arch['binarize']} binarized")


__all__ = ["OPS", "BinaryCells", "CellParam", "OpCosts", "Supernet", "cell_graph", "check_genotype",
           "derive_genotype", "validate_cell"]
