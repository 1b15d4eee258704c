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
from torch import nn

from nasplat.arch import Arch
from nasplat.binary import BinaryConv2d, check_mode
from nasplat.cost import count_costs
from nasplat.errors import UserError
from nasplat.oneshot import cells
from nasplat.oneshot.cells import CellSupernet, Genotype, OpCosts, validate_cell
from nasplat.oneshot.darts_ops import FactorizedReduce, darts_ops
from nasplat.oneshot.mixed_edges import MixedEdge, node_states
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

def _preprocess(c_in: int, c_out: int, mode: str, affine: bool) -> nn.Module:
    relu = nn.Identity() if mode == "both" else nn.ReLU()
    return nn.Sequential(relu, BinaryConv2d(c_in, c_out, 1, mode=mode), nn.BatchNorm2d(c_out, affine=affine))


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
        self.ops = nn.ModuleList(darts_ops(mode).make_op(op, c, 2 if reduction and source < 2 else 1, affine=True)
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


class SuperCell(nn.Module):
    def __init__(self, c_pp: int, c_p: int, c: int, *, reduction: bool, reduction_prev: bool, mode: str,
                 partial: int):
        super().__init__()
        self.reduction, self.mode, self.partial = reduction, mode, partial
        self.pre0 = FactorizedReduce(c_pp, c, mode, False, relu=True) if reduction_prev else \
            _preprocess(c_pp, c, mode, False)
        self.pre1 = _preprocess(c_p, c, mode, False)
        self.edges = nn.ModuleList(MixedEdge(darts_ops(mode), OPS, channels=c, partial=partial,
                                             stride=2 if reduction and EDGE_INPUT[e] < 2 else 1)
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
            raise UserError(f"binary-cells needs channels >= 1, layers >= 3, resolution >= 8 and num_classes >= 2; "
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
                raise UserError(f"architecture lacks {key!r}")
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
        return cells.measure_op_costs(LAYOUT, sizes, darts_ops(o["binarize"]).make_op, fixed=fixed)

    def draw(self, arch: Arch, out: Path) -> list[Path]:
        """normal.png and reduce.png in `out`: each cell as a left-to-right DAG with its ops on the edges."""
        return cells.draw_cells(LAYOUT, {t: arch[t] for t in CELL_TYPES}, out, note=f"{arch['binarize']} binarized")


__all__ = ["OPS", "BinaryCells", "CellParam", "OpCosts", "Supernet", "cell_graph", "check_genotype",
           "derive_genotype", "validate_cell"]
