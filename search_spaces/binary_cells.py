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

def _relu(mode: str) -> nn.Module:
    """ReLU before a convolution, except where the convolution binarizes its input (sign replaces it)."""
    return nn.Identity() if mode == "both" else nn.ReLU()


class ConvUnit(nn.Sequential):
    """ReLU, depthwise k x k (dilated), pointwise 1 x 1, BN; with binarized activations BNs sit between the
    convolutions, so that each sign sees a normalised input (CP-NAS's binarized separable convolution)."""

    def __init__(self, c_in: int, c_out: int, k: int, stride: int, dilation: int, mode: str, affine: bool):
        pad = dilation * (k - 1) // 2
        layers: list[nn.Module] = [_relu(mode), BinaryConv2d(c_in, c_in, k, stride, pad, dilation, groups=c_in,
                                                              mode=mode)]
        if mode == "both":
            layers.append(nn.BatchNorm2d(c_in, affine=affine))
        layers += [BinaryConv2d(c_in, c_out, 1, mode=mode), nn.BatchNorm2d(c_out, affine=affine)]
        super().__init__(*layers)


class FactorizedReduce(nn.Module):
    """Halves the resolution with two 1 x 1 stride-2 convolutions on offset grids, concatenated."""

    def __init__(self, c_in: int, c_out: int, mode: str, affine: bool):
        super().__init__()
        self.relu = _relu(mode)
        self.conv1 = BinaryConv2d(c_in, c_out // 2, 1, 2, mode=mode)
        self.conv2 = BinaryConv2d(c_in, c_out - c_out // 2, 1, 2, mode=mode)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        return self.bn(torch.cat([self.conv1(x), self.conv2(F.pad(x[:, :, 1:, 1:], (0, 1, 0, 1)))], dim=1))


def _preprocess(c_in: int, c_out: int, mode: str, affine: bool) -> nn.Module:
    return nn.Sequential(_relu(mode), BinaryConv2d(c_in, c_out, 1, mode=mode), nn.BatchNorm2d(c_out, affine=affine))


OpBuilder = Callable[[int, int, str, bool], nn.Module]  # (channels, stride, binarization, affine BN) -> module
OP_TABLE: dict[str, OpBuilder] = {
    "max_pool_3x3": lambda c, s, m, a: nn.Sequential(nn.MaxPool2d(3, s, 1), nn.BatchNorm2d(c, affine=False)),
    "avg_pool_3x3": lambda c, s, m, a: nn.Sequential(nn.AvgPool2d(3, s, 1, count_include_pad=False),
                                                     nn.BatchNorm2d(c, affine=False)),
    "skip_connect": lambda c, s, m, a: nn.Identity() if s == 1 else FactorizedReduce(c, c, m, a),
    "sep_conv_3x3": lambda c, s, m, a: nn.Sequential(ConvUnit(c, c, 3, s, 1, m, a), ConvUnit(c, c, 3, 1, 1, m, a)),
    "sep_conv_5x5": lambda c, s, m, a: nn.Sequential(ConvUnit(c, c, 5, s, 1, m, a), ConvUnit(c, c, 5, 1, 1, m, a)),
    "dil_conv_3x3": lambda c, s, m, a: ConvUnit(c, c, 3, s, 2, m, a),
    "dil_conv_5x5": lambda c, s, m, a: ConvUnit(c, c, 5, s, 2, m, a),
}


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
        self.pre0 = FactorizedReduce(c_pp, c, mode, True) if reduction_prev else _preprocess(c_pp, c, mode, True)
        self.pre1 = _preprocess(c_p, c, mode, True)
        self.sources = [source for _, source in genotype]
        self.ops = nn.ModuleList(OP_TABLE[op](c, 2 if reduction and source < 2 else 1, mode, True)
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


class MixedEdge(nn.Module):
    """One supernet edge: every op on 1/M of the input channels (PC-DARTS), the rest bypassing them."""

    def __init__(self, c: int, stride: int, mode: str, partial: int):
        super().__init__()
        if c % partial:
            raise ValueError(f"partial_channels={partial} must divide the cell's channels ({c})")
        self.stride, self.partial, self.part = stride, partial, c // partial
        self.ops = nn.ModuleList(nn.Identity() if op == "none" else OP_TABLE[op](self.part, stride, mode, False)
                                 for op in OPS)  # the slot of "none" is never run

    def forward(self, x: torch.Tensor, weights: torch.Tensor | None, ops: Sequence[int]) -> torch.Tensor:
        """Weighted sum of `ops` (indices; weights None: the single op of a path, weight 1)."""
        head = x[:, :self.part] if self.partial > 1 else x
        out: torch.Tensor | None = None
        for k in ops:
            if k == NONE:
                continue
            y = self.ops[k](head)
            y = y if weights is None else y * weights[k]
            out = y if out is None else out + y
        if out is None:  # only "none": zeros of the output's shape
            out = head.new_zeros(head.shape[0], self.part, head.shape[2] // self.stride, head.shape[3] // self.stride)
        if self.partial == 1:
            return out
        tail = x[:, self.part:]
        tail = tail if self.stride == 1 else F.max_pool2d(tail, 2, 2)
        return channel_shuffle(torch.cat([out, tail], dim=1), self.partial)


class SuperCell(nn.Module):
    def __init__(self, c_pp: int, c_p: int, c: int, *, reduction: bool, reduction_prev: bool, mode: str,
                 partial: int):
        super().__init__()
        self.reduction = reduction
        self.pre0 = FactorizedReduce(c_pp, c, mode, False) if reduction_prev else _preprocess(c_pp, c, mode, False)
        self.pre1 = _preprocess(c_p, c, mode, False)
        self.edges = nn.ModuleList(MixedEdge(c, 2 if reduction and EDGE_INPUT[e] < 2 else 1, mode, partial)
                                   for e in range(EDGES))

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor | None,
                edge_weights: torch.Tensor | None, ops: Sequence[Sequence[int]]) -> torch.Tensor:
        states = [self.pre0(s0), self.pre1(s1)]
        for node in range(NODES):
            total = None
            for source in range(node + 2):
                e = edge_of(node, source)
                y = self.edges[e](states[source], weights[e] if weights is not None else None, ops[e])
                y = y if edge_weights is None else y * edge_weights[e]
                total = y if total is None else total + y
            states.append(total)
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
    op, or gives way to the node's next edge where that weighs more. Ops of weight 0 are never chosen."""
    genotypes, replaced = {}, 0
    for t in CELL_TYPES:
        w = op_weights[t].detach().cpu().double().clone()
        w[:, NONE] = 0
        if edge_weights is not None:
            w = w * edge_weights[t].detach().cpu().double()[:, None]
        banned = torch.zeros_like(w, dtype=torch.bool)
        while True:
            picks = _pick(w.masked_fill(banned, 0))
            skips = [(w[e, k].item(), e) for e, k in picks if k == SKIP]
            if t != "normal" or max_skip is None or len(skips) <= max_skip:
                break
            banned[min(skips)[1], SKIP] = True
            replaced += 1
        genotypes[t] = canonical([(OPS[k], EDGE_INPUT[e]) for e, k in picks])
    return genotypes, ({"skips_replaced": replaced} if replaced else {})


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
                for k, op in enumerate(OPS):
                    if op == "none":
                        continue
                    key = (op, c, side, stride)
                    if key not in measured:
                        measured[key] = count_costs(OP_TABLE[op](c, stride, mode, True), (1, c, side, side))["macs"]
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
