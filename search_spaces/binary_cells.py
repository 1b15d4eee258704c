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

import math
import random
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
from nasplat.binary import BinaryConv2d, check_mode
from nasplat.cost import count_costs
from nasplat.registry import register_space
from nasplat.space import Param, SearchSpace, Target

OPS = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3",
       "dil_conv_5x5")
CELL_OPS = OPS[1:]  # what a genotype may hold: "none" only exists in the supernet
NONE, SKIP = OPS.index("none"), OPS.index("skip_connect")
NODES = 4
EDGE_NODE = tuple(j for j in range(NODES) for _ in range(j + 2))  # the node each of the 14 edges feeds
EDGE_INPUT = tuple(i for j in range(NODES) for i in range(j + 2))  # and the state it reads
EDGES = len(EDGE_NODE)
CELL_TYPES = ("normal", "reduce")
Genotype = tuple[tuple[str, int], ...]


def edge_of(node: int, source: int) -> int:
    return sum(j + 2 for j in range(node)) + source


# -- operations -----------------------------------------------------------------------------------------------

CHANNELS_LAST = torch.channels_last  # depthwise convolutions run 2-3x faster in it on CPU (measured)


class ConvUnit(nn.Module):
    """Depthwise k x k (dilated), pointwise 1 x 1, BN; its input is already ReLU'd (the op's `prep`). With
    binarized activations a BN sits between the convolutions, so that each sign sees a normalised input
    (CP-NAS's binarized separable convolution). The convolutions run channels-last, batch norm does not (it
    is slower so on few channels)."""

    def __init__(self, c_in: int, c_out: int, k: int, stride: int, dilation: int, mode: str, affine: bool, *,
                 relu: bool = False):
        super().__init__()
        self.relu = nn.ReLU() if relu and mode != "both" else nn.Identity()
        self.depthwise = BinaryConv2d(c_in, c_in, k, stride, dilation * (k - 1) // 2, dilation, groups=c_in,
                                      mode=mode)
        self.middle = nn.BatchNorm2d(c_in, affine=affine) if mode == "both" else nn.Identity()
        self.pointwise = BinaryConv2d(c_in, c_out, 1, mode=mode)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.depthwise(self.relu(x).contiguous(memory_format=CHANNELS_LAST))
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


def make_op(op: str, channels: int, stride: int, mode: str, *, affine: bool) -> nn.Module:
    """A standalone op: its prep, then its core."""
    return nn.Sequential(Prep(prep_of(op, stride), stride, mode), OP_TABLE[op][1](channels, stride, mode, affine))


# -- genotypes ------------------------------------------------------------------------------------------------

def canonical(genotype: Sequence[Sequence[Any]]) -> Genotype:
    """The genotype as a tuple of (op, input) pairs, each node's two pairs ordered by input then op."""
    pairs = [(str(op), int(source)) for op, source in genotype]
    return tuple(p for j in range(len(pairs) // 2) for p in sorted(pairs[2 * j:2 * j + 2], key=lambda p: (p[1], p[0])))


def check_genotype(genotype: Any, *, name: str = "genotype") -> Genotype:
    """The canonical genotype, or ValueError naming what is wrong with the literal."""
    try:
        pairs = [(op, source) for op, source in genotype]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be 8 (op, input) pairs, e.g. (('sep_conv_3x3', 0), ('skip_connect', 1), "
                         f"...)") from None
    if len(pairs) != 2 * NODES:
        raise ValueError(f"{name} has {len(pairs)} (op, input) pairs; a cell has {NODES} nodes of 2 inputs: 8 pairs")
    for index, (op, source) in enumerate(pairs):
        node = index // 2
        if op not in CELL_OPS:
            raise ValueError(f"{name} pair {index}: unknown op {op!r}; use one of {', '.join(CELL_OPS)}")
        if not isinstance(source, int) or isinstance(source, bool) or not 0 <= source < node + 2:
            raise ValueError(f"{name} pair {index}: node {node} reads input {source!r}; it may read 0..{node + 1}")
    for node in range(NODES):
        if pairs[2 * node][1] == pairs[2 * node + 1][1]:
            raise ValueError(f"{name}: node {node} reads input {pairs[2 * node][1]} twice; its two inputs must differ")
    return canonical(pairs)


def describe_genotype(normal: Genotype, reduce: Genotype) -> str:
    concat = list(range(2, 2 + NODES))
    return (f"Genotype(normal={[tuple(p) for p in normal]}, normal_concat={concat}, "
            f"reduce={[tuple(p) for p in reduce]}, reduce_concat={concat})")


@dataclass(frozen=True)
class CellParam(Param):
    """A whole cell genotype as one searched value; a mutation changes one op or one input of one node."""

    def sample(self, rng: random.Random) -> Genotype:
        pairs = []
        for node in range(NODES):
            for source in sorted(rng.sample(range(node + 2), 2)):
                pairs.append((rng.choice(CELL_OPS), source))
        return canonical(pairs)

    def mutate(self, value: Genotype, rng: random.Random) -> Genotype:
        return rng.choice(self.neighbours(value))

    def neighbours(self, value: Genotype) -> tuple[Genotype, ...]:
        out = []
        for index, (op, source) in enumerate(value):
            node, other = index // 2, value[index ^ 1][1]
            changed = [(o, source) for o in CELL_OPS if o != op]
            changed += [(op, s) for s in range(node + 2) if s not in (source, other)]
            for pair in changed:
                out.append(canonical(value[:index] + (pair,) + value[index + 1:]))
        return tuple(dict.fromkeys(out))

    def contains(self, value: Any) -> bool:
        try:
            return check_genotype(value) == tuple(tuple(p) for p in value)
        except ValueError:
            return False

    def size(self) -> float:
        return math.prod(math.comb(j + 2, 2) * len(CELL_OPS) ** 2 for j in range(NODES))

    def __str__(self) -> str:
        return f"cell genotype ({NODES} nodes x 2 of {len(CELL_OPS)} ops)"


def cell_graph(genotype: Genotype) -> nx.DiGraph:
    """The cell as a DAG: inputs c_{k-2} and c_{k-1}, nodes 0..3, output c_{k}; edges carry their op."""
    names = ["c_{k-2}", "c_{k-1}", *map(str, range(NODES))]
    graph = nx.DiGraph()
    graph.add_nodes_from(names + ["c_{k}"])
    for index, (op, source) in enumerate(genotype):
        graph.add_edge(names[source], names[2 + index // 2], op=op)
    for node in range(NODES):
        graph.add_edge(str(node), "c_{k}", op="concat")
    return graph


def validate_cell(graph: nx.DiGraph) -> None:
    """Raises ValueError unless the cell is acyclic and every node reaches the output."""
    if not nx.is_directed_acyclic_graph(graph):
        raise ValueError("the cell has a cycle")
    stranded = [n for n in graph if n != "c_{k}" and not nx.has_path(graph, n, "c_{k}")]
    if stranded:
        raise ValueError(f"cell nodes {', '.join(stranded)} do not reach the output")


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
            out = Prep(kind, self.stride, self.mode)(self.head)
            # what convolutions read: converted once here, not by each of them
            self._preps[kind] = out.contiguous(memory_format=CHANNELS_LAST) if kind == "relu" else out
        return self._preps[kind]

    def tail(self) -> torch.Tensor:
        if self._tail is None:
            self._tail = self._bypass if self.stride == 1 else F.max_pool2d(self._bypass, 2, 2)
        return self._tail


class MixedEdge(nn.Module):
    """One supernet edge: the cores of its ops on the source's 1/M channels (PC-DARTS), weighted and summed.
    The cell adds the bypassing channels per node, not per edge (concatenation and shuffle are linear)."""

    def __init__(self, c: int, stride: int, mode: str, partial: int):
        super().__init__()
        if c % partial:
            raise ValueError(f"partial_channels={partial} must divide the cell's channels ({c})")
        self.stride, self.part = stride, c // partial
        self.preps = ["none" if op == "none" else prep_of(op, stride) for op in OPS]
        self.ops = nn.ModuleList(nn.Identity() if op == "none" else OP_TABLE[op][1](self.part, stride, mode, False)
                                 for op in OPS)  # the slot of "none" is never run

    def forward(self, source: SourceState, weights: torch.Tensor | None, ops: Sequence[int]) -> torch.Tensor | None:
        """Weighted sum of `ops` (indices; weights None: the single op of a path, weight 1); None when every
        op is "none"."""
        out: torch.Tensor | None = None
        for k in ops:
            if k == NONE:
                continue
            y = self.ops[k](source.prep(self.preps[k]))
            if weights is None:
                out = y if out is None else out + y
            else:
                out = y * weights[k] if out is None else torch.addcmul(out, y, weights[k])
        return out


class SuperCell(nn.Module):
    def __init__(self, c_pp: int, c_p: int, c: int, *, reduction: bool, reduction_prev: bool, mode: str,
                 partial: int):
        super().__init__()
        self.reduction, self.mode, self.partial, self.part = reduction, mode, partial, c // partial
        self.pre0 = FactorizedReduce(c_pp, c, mode, False, relu=True) if reduction_prev else \
            _preprocess(c_pp, c, mode, False)
        self.pre1 = _preprocess(c_p, c, mode, False)
        self.edges = nn.ModuleList(MixedEdge(c, 2 if reduction and EDGE_INPUT[e] < 2 else 1, mode, partial)
                                   for e in range(EDGES))

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor | None,
                edge_weights: torch.Tensor | None, ops: Sequence[Sequence[int]]) -> torch.Tensor:
        """Node j = sum over its edges e of beta_e * shuffle(cat(sum_k w_ek op_k(head), tail)), computed as
        shuffle(cat(sum_e sum_k beta_e w_ek op_k(head), sum_e beta_e tail)): one concatenation per node."""
        if weights is not None and edge_weights is not None:
            weights = weights * edge_weights[:, None]
        states = [self.pre0(s0), self.pre1(s1)]
        sources: list[SourceState] = []
        for node in range(NODES):
            head: torch.Tensor | None = None
            tail: torch.Tensor | None = None
            for source in range(node + 2):
                if source == len(sources):
                    stride = 2 if self.reduction and source < 2 else 1
                    sources.append(SourceState(states[source], part=self.part, stride=stride, mode=self.mode))
                e = edge_of(node, source)
                y = self.edges[e](sources[source], weights[e] if weights is not None else None, ops[e])
                if y is not None:
                    head = y if head is None else head + y
                if self.partial > 1:
                    t = sources[source].tail()
                    t = t if edge_weights is None else t * edge_weights[e]
                    tail = t if tail is None else tail + t
            if head is None:  # every op "none"
                x = sources[0].head
                stride = 2 if self.reduction else 1
                head = x.new_zeros(x.shape[0], self.part, x.shape[2] // stride, x.shape[3] // stride)
            states.append(head if tail is None else channel_shuffle(torch.cat([head, tail], dim=1), self.partial))
        return torch.cat(states[2:], dim=1)


class Supernet(_Macro):
    """The weight-sharing supernet: mixed edges with architecture parameters `alphas` (per cell type, 14 x 8)
    and, with edge normalisation, `betas` (14 per cell type). `forward(x, path=...)` runs one op per edge."""

    ops = OPS

    def __init__(self, space: BinaryCells, *, partial_channels: int, edge_normalization: bool, mode: str):
        o = space.options
        super().__init__(o["channels"], o["layers"], o["num_classes"], lambda c_pp, c_p, c, reduction,
                         reduction_prev: SuperCell(c_pp, c_p, c, reduction=reduction, reduction_prev=reduction_prev,
                                                   mode=mode, partial=partial_channels))
        self.space = space
        self.edge_normalization = edge_normalization
        self.alphas = nn.ParameterDict({t: nn.Parameter(1e-3 * torch.randn(EDGES, len(OPS))) for t in CELL_TYPES})
        self.betas = nn.ParameterDict({t: nn.Parameter(torch.zeros(EDGES), requires_grad=edge_normalization)
                                       for t in CELL_TYPES})
        for t in CELL_TYPES:
            self.register_buffer(f"mask_{t}", torch.ones(EDGES, len(OPS), dtype=torch.bool))

    @property
    def masks(self) -> dict[str, torch.Tensor]:
        return {t: getattr(self, f"mask_{t}") for t in CELL_TYPES}

    def set_mask(self, cell_type: str, mask: torch.Tensor) -> None:
        mask = torch.as_tensor(mask, dtype=torch.bool)
        if mask.shape != (EDGES, len(OPS)) or not bool(mask.any(1).all()):
            raise ValueError(f"a mask is {EDGES} x {len(OPS)} booleans with at least one op allowed per edge")
        getattr(self, f"mask_{cell_type}").copy_(mask)

    def arch_parameters(self) -> list[nn.Parameter]:
        return [*self.alphas.values(), *(self.betas.values() if self.edge_normalization else ())]

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in [*self.alphas.values(), *self.betas.values()]}
        return [p for p in self.parameters() if id(p) not in arch]

    def op_weights(self) -> dict[str, torch.Tensor]:
        """Softmax of the alphas over the ops each mask allows (0 for the others)."""
        return {t: self.alphas[t].masked_fill(~m, float("-inf")).softmax(-1) for t, m in self.masks.items()}

    def edge_weights(self) -> dict[str, torch.Tensor]:
        """Softmax of the betas over each node's incoming edges; ones without edge normalisation."""
        if not self.edge_normalization:
            return {t: torch.ones(EDGES, device=self.betas[t].device) for t in CELL_TYPES}
        out = {}
        for t in CELL_TYPES:
            parts, start = [], 0
            for node in range(NODES):
                parts.append(self.betas[t][start:start + node + 2].softmax(0))
                start += node + 2
            out[t] = torch.cat(parts)
        return out

    def forward(self, x: torch.Tensor, path: Mapping[str, Sequence[int]] | None = None) -> torch.Tensor:
        if path is None:
            weights, edges = self.op_weights(), self.edge_weights() if self.edge_normalization else None
            allowed = {t: [[k for k in range(len(OPS)) if row[k]] for row in m.tolist()]
                       for t, m in self.masks.items()}
        else:
            weights, edges = None, None
            allowed = {t: [[k] for k in path[t]] for t in CELL_TYPES}

        def run(cell: SuperCell, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
            t = "reduce" if cell.reduction else "normal"
            return cell(s0, s1, weights[t] if weights is not None else None, edges[t] if edges else None, allowed[t])

        return self.features(x, run)

    def derive(self, *, max_skip: int | None = 2, limit: float | None = None) -> tuple[dict[str, Genotype], dict]:
        edge = self.edge_weights() if self.edge_normalization else None
        return self.space.derive(self.op_weights(), edge, max_skip=max_skip, limit=limit)

    def expected_cost(self) -> torch.Tensor:
        """The derived network's expected MACs (FP + BOPs/64): per edge, the op costs weighted by the softmax
        over non-none ops; per node, the edges weighted by their share of its two kept inputs (2 x the edge
        weight with edge normalisation, 2/(incoming edges) without)."""
        costs = self.space.op_costs()
        weights, edges = self.op_weights(), self.edge_weights()
        total = torch.tensor(costs.fixed)
        for t in CELL_TYPES:
            w = weights[t][:, 1:]
            w = w / w.sum(1, keepdim=True).clamp_min(1e-12)
            per_edge = (w * costs.per_op[t][:, 1:].to(w.device)).sum(1)
            share = 2 * edges[t] if self.edge_normalization else \
                torch.tensor([2 / (EDGE_NODE[e] + 2) for e in range(EDGES)], device=w.device)
            total = total + (share * per_edge).sum()
        return total


# -- derivation -----------------------------------------------------------------------------------------------

def derive_genotype(op_weights: Mapping[str, torch.Tensor], edge_weights: Mapping[str, torch.Tensor] | None = None,
                    *, max_skip: int | None = 2) -> tuple[dict[str, Genotype], dict[str, Any]]:
    """DARTS's rule: each node keeps the two incoming edges whose best non-none op weighs most (times the edge's
    weight), each with that op. In the normal cell at most `max_skip` skip connections (the guard against
    DARTS's collapse into parameter-free ops): each extra one, weakest first, becomes the edge's best other
    op, or gives way to the node's next edge where that weighs more; a skip with neither stays, and the info
    says so. Ops of weight 0 are never chosen."""
    genotypes, replaced, kept = {}, 0, 0
    for t in CELL_TYPES:
        w = op_weights[t].detach().cpu().double().clone()
        w[:, NONE] = 0
        if edge_weights is not None:
            w = w * edge_weights[t].detach().cpu().double()[:, None]
        banned = torch.zeros_like(w, dtype=torch.bool)
        picks = _pick(w)
        while t == "normal" and max_skip is not None:
            skips = sorted((w[e, k].item(), e) for e, k in picks if k == SKIP)
            if len(skips) <= max_skip:
                break
            for _, edge in skips:  # the weakest skip that has a replacement (another op, or another edge)
                trial = banned.clone()
                trial[edge, SKIP] = True
                try:
                    picks, banned = _pick(w.masked_fill(trial, 0)), trial
                    replaced += 1
                    break
                except ValueError:
                    continue
            else:
                kept = len(skips) - max_skip  # nothing left to put in their place
                break
        genotypes[t] = canonical([(OPS[k], EDGE_INPUT[e]) for e, k in picks])
    info = {"skips_replaced": replaced} if replaced else {}
    return genotypes, ({**info, "skips_over_cap_without_alternative": kept} if kept else info)


def _pick(w: torch.Tensor) -> list[tuple[int, int]]:
    """(edge, op) of the two strongest edges of every node, in node order."""
    best, ops = w.max(1)
    picks = []
    start = 0
    for node in range(NODES):
        edges = range(start, start + node + 2)
        chosen = sorted(edges, key=lambda e: -best[e].item())[:2]
        if any(best[e] <= 0 for e in chosen):
            raise ValueError(f"node {node} has fewer than two edges with an allowed op other than none")
        picks += [(e, int(ops[e])) for e in sorted(chosen)]
        start += node + 2
    return picks


@dataclass(frozen=True)
class OpCosts:
    """MACs (FP + BOPs/64) of the standalone network split as `fixed` (stem, preprocessing, classifier) plus,
    per cell type, `per_op[type][edge, op]`: that op on that edge, summed over the cells of the type."""

    fixed: float
    per_op: dict[str, torch.Tensor]

    def of(self, genotypes: Mapping[str, Genotype]) -> float:
        total = self.fixed
        for t in CELL_TYPES:
            for index, (op, source) in enumerate(genotypes[t]):
                total += float(self.per_op[t][edge_of(index // 2, source), OPS.index(op)])
        return total


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

    def parameters(self) -> dict[str, Param]:
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
        genotypes, info = derive_genotype(op_weights, edge_weights, max_skip=max_skip)
        if limit is None:
            return genotypes, info
        costs = self.op_costs()
        cheapened = 0
        while costs.of(genotypes) > limit:
            best = None
            for t in CELL_TYPES:
                w = op_weights[t].detach().cpu()
                for index, (op, source) in enumerate(genotypes[t]):
                    e, k = edge_of(index // 2, source), OPS.index(op)
                    for k2 in range(1, len(OPS)):
                        saved = float(costs.per_op[t][e, k] - costs.per_op[t][e, k2])
                        if saved > 0:
                            price = (float(w[e, k] - w[e, k2])) / saved
                            if best is None or price < best[0]:
                                best = (price, t, index, k2)
            if best is None:
                break  # nothing cheaper on any kept edge: the hard check marks it infeasible
            _, t, index, k2 = best
            pairs = list(genotypes[t])
            pairs[index] = (OPS[k2], pairs[index][1])
            genotypes[t] = canonical(pairs)
            cheapened += 1
        return genotypes, ({**info, "ops_cheapened_for_budget": cheapened} if cheapened else info)

    def op_costs(self) -> OpCosts:
        return self._op_costs

    @cached_property
    def _op_costs(self) -> OpCosts:
        o = self.options
        mode, side = o["binarize"], o["resolution"]
        per_op = {t: torch.zeros(EDGES, len(OPS), dtype=torch.float64) for t in CELL_TYPES}
        measured: dict[tuple[str, int, int, int], float] = {}
        c = o["channels"]
        for layer in range(o["layers"]):
            reduction = layer in _reductions(o["layers"])
            c = c * 2 if reduction else c
            t = "reduce" if reduction else "normal"
            for e in range(EDGES):
                stride = 2 if reduction and EDGE_INPUT[e] < 2 else 1
                at = side // 2 if reduction and stride == 1 else side  # nodes of a reduction cell are reduced
                for k, op in enumerate(OPS):
                    if op == "none":
                        continue
                    key = (op, c, at, stride)
                    if key not in measured:
                        measured[key] = count_costs(make_op(op, c, stride, mode, affine=True), (1, c, at, at))["macs"]
                    per_op[t][e, k] += measured[key]
            side = side // 2 if reduction else side
        fixed = count_costs(self.build(self.smallest()), self.target(self.smallest()).input_shape)["macs"]
        return OpCosts(float(fixed), per_op)

    def draw(self, arch: Arch, out: Path) -> list[Path]:
        """normal.png and reduce.png in `out`: each cell as a left-to-right DAG with its ops on the edges."""
        from matplotlib.figure import Figure

        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for t in CELL_TYPES:
            graph = cell_graph(arch[t])
            validate_cell(graph)
            pos = {"c_{k-2}": (0, 1.0), "c_{k-1}": (0, -1.0), "c_{k}": (NODES + 1, 0)}
            pos.update({str(j): (j + 1, 1.2 * (-1) ** j * 0.5) for j in range(NODES)})
            figure = Figure(figsize=(9, 4.5))
            ax = figure.add_subplot()
            nx.draw_networkx(graph, pos, ax=ax, node_color=["#9ecae1" if n.startswith("c_") else "#fdd0a2"
                                                              for n in graph], node_size=1300, font_size=9,
                             arrowsize=14, connectionstyle="arc3,rad=0.08")
            labels = {(a, b): d["op"] for a, b, d in graph.edges(data=True) if d["op"] != "concat"}
            nx.draw_networkx_edge_labels(graph, pos, edge_labels=labels, ax=ax, font_size=7, label_pos=0.45,
                                         connectionstyle="arc3,rad=0.08")
            ax.set_title(f"{t} cell ({arch['binarize']} binarized)")
            ax.axis("off")
            path = out / f"{t}.png"
            tmp = path.with_name(f".{path.name}.tmp.png")
            figure.savefig(tmp, dpi=110, bbox_inches="tight")
            tmp.replace(path)
            paths.append(path)
        return paths


__all__ = ["OPS", "BinaryCells", "CellParam", "OpCosts", "Supernet", "cell_graph", "check_genotype",
           "derive_genotype", "validate_cell"]
