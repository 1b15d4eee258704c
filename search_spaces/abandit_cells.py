"""ABanditNAS's cells (Chen et al., ECCV 2020): one input, four nodes, nine ops with two defence ops, v cell types.

A cell reads one state, B_0 (the previous cell's output through a 1 x 1 convolution back to C channels), and
node B_j sums one op of every earlier state: B_j = sum_{i<j} o_ij(B_i), 1 + 2 + 3 + 4 = 10 edges. The cell's
output concatenates B_1..B_4. A derived cell keeps ONE input edge per node, as the released genotypes do:
per cell type, four `(op, input)` pairs, input 0 being B_0 and 1..3 the earlier nodes. In reduction cells the
edges leaving B_0 have stride 2.

The nine ops (no "none") are DARTS's pools, skip and separable convolutions (shared with binary-cells, here at
full precision), two dilated full convolutions (`conv_3x3`, `conv_5x5`: rate 2, as the paper's released ops)
and the two defence ops: `gabor_3x3`, a learnable Gabor filter, and `denoise_3x3`, a non-local denoising
block, each wrapped as the released code does: out = BN(filter(x)) + x, the BN's weight and bias starting at
0, so the op starts as the identity. (The book wraps it with a 1 x 1 convolution instead; we follow the code.)

`cell_types` (v) cell types are searched, v = 6 in the paper. With v = 2 they are DARTS's normal and reduce;
with v >= 3 each of the two reduction cells has its own type (reduce1, reduce2) and the v - 2 normal types
(normal, or normal1..) are laid over the normal layers in order, in runs of near-equal length: the paper's
10 layers and v = 6 give a, a, b, [reduce1], b, c, [reduce2], c, d, d. The default, v = 3, is one normal type
and two reduction types. The network is DARTS's CIFAR one (stem to 3C, reductions at layers//3 and
2*layers//3, global pooling, linear) without the evaluation network's extra denoising blocks and auxiliary
head. Everything is full precision.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nasplat.arch import Arch
from nasplat.cost import count_costs
from nasplat.oneshot import cells
from nasplat.oneshot.cells import CellLayout, CellParam, CellSupernet, Genotype, OpCosts
from nasplat.errors import UserError
from nasplat.oneshot.darts_ops import conv_bn, darts_ops
from nasplat.oneshot.mixed_edges import MixedEdge, OpTable, node_states
from nasplat.registry import register_space
from nasplat.space import SearchSpace, Target

OPS = ("max_pool_3x3", "avg_pool_3x3", "skip_connect", "conv_3x3", "conv_5x5", "sep_conv_3x3", "sep_conv_5x5",
       "gabor_3x3", "denoise_3x3")
NODES = 4


# -- operations -----------------------------------------------------------------------------------------------

class GaborFilter(nn.Module):
    """A 3 x 3 Gabor kernel per output channel from five learnt parameters (theta, sigma, lambda, psi, gamma),
    computed in every forward pass (methods.md §3.1, as released):
        theta = 2 pi sigmoid(t), sigma_x = 0.1 + 0.4 sigmoid(s), sigma_y = sigma_x / gamma, gamma = 1 + 0.5 g,
        lambda = 0.001 + 0.999 sigmoid(l), psi = p;  x' = x cos(theta) + y sin(theta), y' = -x sin + y cos,
        g(x, y) = exp(-(x'^2 / sigma_x^2 + y'^2 / sigma_y^2) / 2) cos(2 pi x' / lambda + psi), x, y in {-1, 0, 1}.
    The kernel is the same for every input channel, so the convolution runs on the channel sum: the same output
    at 1/C of the MACs (and fvcore counts those)."""

    def __init__(self, channels: int):
        super().__init__()
        self.theta = nn.Parameter(torch.empty(channels))
        self.sigma = nn.Parameter(torch.empty(channels))
        self.lam = nn.Parameter(torch.empty(channels))
        self.psi = nn.Parameter(torch.empty(channels))
        self.gamma = nn.Parameter(torch.empty(channels))
        y, x = torch.meshgrid(torch.arange(-1.0, 2.0), torch.arange(-1.0, 2.0), indexing="ij")
        self.register_buffer("grid", torch.stack([x, y]), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The released init: lambda ~ U(0, 1), theta ~ N(0, 1), psi ~ 0.02 N(0, 1), sigma ~ N(0, 1), gamma = 0."""
        with torch.no_grad():
            self.lam.uniform_(0, 1)
            self.theta.normal_()
            self.psi.normal_(0, 0.02)
            self.sigma.normal_()
            self.gamma.zero_()

    def kernel(self) -> torch.Tensor:
        """The kernels, channels x 1 x 3 x 3."""
        theta = (2 * math.pi * torch.sigmoid(self.theta))[:, None, None]
        sigma_x = (0.1 + 0.4 * torch.sigmoid(self.sigma))[:, None, None]
        sigma_y = sigma_x / (1 + 0.5 * self.gamma)[:, None, None]
        lam = (0.001 + 0.999 * torch.sigmoid(self.lam))[:, None, None]
        x, y = self.grid[0], self.grid[1]
        rx = x * torch.cos(theta) + y * torch.sin(theta)
        ry = -x * torch.sin(theta) + y * torch.cos(theta)
        g = torch.exp(-0.5 * (rx ** 2 / sigma_x ** 2 + ry ** 2 / sigma_y ** 2)) * \
            torch.cos(2 * math.pi * rx / lam + self.psi[:, None, None])
        return g[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x.sum(1, keepdim=True), self.kernel(), padding=1)


class DotProductFilter(nn.Module):
    """The non-local filter of Xie et al.'s feature denoising in its dot-product form, without embeddings or
    softmax (the variant the released search space uses): y_i = (1 / (C H W)) sum_j (x_i . x_j) x_j, x_i the
    C features at position i. Computed as (X X^T) X when C < HW, else X (X^T X): the same value, whichever
    product is cheaper."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        flat = x.reshape(n, c, h * w)
        if c < h * w:
            y = torch.bmm(torch.bmm(flat, flat.transpose(1, 2)), flat)
        else:
            y = torch.bmm(flat, torch.bmm(flat.transpose(1, 2), flat))
        return (y / (c * h * w)).reshape(n, c, h, w)


class DenoisingBlock(nn.Module):
    """out = BN(filter(x)) + x, the BN's weight and bias initialised (and re-initialised) to 0, so that the
    block starts as the identity and the filter's share is learnt. At stride 2 the sum is downsampled by 2 x 2
    averaging (what the released bilinear 1/2 resize computes on even sides)."""

    def __init__(self, filter_: nn.Module, channels: int, stride: int):
        super().__init__()
        self.filter, self.stride = filter_, stride
        self.bn = nn.BatchNorm2d(channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn(self.filter(x)) + x
        return F.avg_pool2d(out, 2) if self.stride == 2 else out


# DARTS's ops at full precision, two dilated full convolutions and the defence ops. The denoising blocks' BN
# is always affine: its zero-initialised scale is what makes them start as the identity.
TABLE = OpTable({
    **{op: darts_ops().entries[op] for op in ("max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3",
                                               "sep_conv_5x5")},
    "conv_3x3": (("relu", "relu"), conv_bn(3, 2)),
    "conv_5x5": (("relu", "relu"), conv_bn(5, 2)),
    "gabor_3x3": (("none", "none"), lambda c, s, a: DenoisingBlock(GaborFilter(c), c, s)),
    "denoise_3x3": (("none", "none"), lambda c, s, a: DenoisingBlock(DotProductFilter(), c, s)),
})
make_op = TABLE.make_op  # a standalone op: its prep, then its core


def _preprocess(c_in: int, c_out: int, affine: bool) -> nn.Module:
    return nn.Sequential(nn.ReLU(), nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out, affine=affine))


# -- cell types over the layers -------------------------------------------------------------------------------

def cell_plan(layers: int, cell_types: int) -> list[tuple[str, bool]]:
    """(cell type, reduction) of every layer: see the module's docstring for the rule."""
    reductions = sorted({layers // 3, 2 * layers // 3})
    normal_layers = [i for i in range(layers) if i not in reductions]
    normal_types = max(cell_types - 2, 1)
    plan = []
    for layer in range(layers):
        if layer in reductions:
            plan.append(("reduce" if cell_types == 2 else f"reduce{reductions.index(layer) + 1}", True))
        else:
            run = normal_layers.index(layer) * normal_types // len(normal_layers)
            plan.append(("normal" if normal_types == 1 else f"normal{run + 1}", False))
    return plan


def layout_of(layers: int, cell_types: int) -> CellLayout:
    plan = cell_plan(layers, cell_types)
    groups = tuple(dict.fromkeys(t for t, _ in plan))
    return CellLayout(inputs=1, nodes=NODES, keep=1, ops=OPS, groups=groups,
                      capped=tuple(t for t in groups if not t.startswith("reduce")))


# -- networks -------------------------------------------------------------------------------------------------

class Cell(nn.Module):
    """A standalone cell of one genotype: each node applies its one op to its one input."""

    def __init__(self, genotype: Genotype, c_prev: int, c: int, *, reduction: bool):
        super().__init__()
        self.pre = _preprocess(c_prev, c, True)
        self.sources = [source for _, source in genotype]
        self.ops = nn.ModuleList(make_op(op, c, 2 if reduction and source == 0 else 1) for op, source in genotype)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        states = [self.pre(s)]
        for op, source in zip(self.ops, self.sources):
            states.append(op(states[source]))
        return torch.cat(states[1:], dim=1)


class _Macro(nn.Module):
    """The network around the cells: stem to 3C, the cells of `plan` (C doubling at reductions), pooling, linear."""

    def __init__(self, channels: int, plan: Sequence[tuple[str, bool]], num_classes: int,
                 make_cell: Callable[[int, int, str, bool], nn.Module]):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 3 * channels, 3, padding=1, bias=False), nn.BatchNorm2d(3 * channels))
        c_prev, c, out = 3 * channels, channels, []
        for group, reduction in plan:
            c = c * 2 if reduction else c
            out.append(make_cell(c_prev, c, group, reduction))
            c_prev = NODES * c
        self.cells = nn.ModuleList(out)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_prev, num_classes)

    def features(self, x: torch.Tensor, run: Callable[[nn.Module, torch.Tensor], torch.Tensor]) -> torch.Tensor:
        s = self.stem(x)
        for cell in self.cells:
            s = run(cell, s)
        return self.classifier(torch.flatten(self.pool(s), 1))


class Network(_Macro):
    """The standalone network of one genotype per cell type."""

    def __init__(self, genotypes: Mapping[str, Genotype], *, channels: int, plan: Sequence[tuple[str, bool]],
                 num_classes: int):
        super().__init__(channels, plan, num_classes, lambda c_prev, c, group, reduction: Cell(
            genotypes[group], c_prev, c, reduction=reduction))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x, lambda cell, s: cell(s))


class SuperCell(nn.Module):
    """A supernet cell: every node sums all its incoming mixed edges; the channels that bypass the ops are
    added per node and shuffled back in (PC-DARTS)."""

    def __init__(self, c_prev: int, c: int, *, layout: CellLayout, group: str, reduction: bool, partial: int):
        super().__init__()
        self.layout, self.group, self.reduction = layout, group, reduction
        self.partial = partial
        self.pre = _preprocess(c_prev, c, False)
        self.edges = nn.ModuleList(MixedEdge(TABLE, OPS, channels=c, partial=partial,
                                             stride=2 if layout.strided(e, reduction=reduction) else 1)
                                   for e in range(layout.edges))

    def forward(self, s: torch.Tensor, weights: torch.Tensor | None, edge_weights: torch.Tensor | None,
                ops: Sequence[Sequence[int]]) -> torch.Tensor:
        return torch.cat(node_states(self.layout, [self.pre(s)], self.edges, weights, edge_weights, ops,
                                     reduction=self.reduction, partial=self.partial, mode="none"), dim=1)


class Supernet(CellSupernet, _Macro):
    """The weight-sharing supernet: per cell type, `alphas` (10 x 9) and, with edge normalisation, `betas` (10);
    `forward(x, path={type: op index per edge})` runs one op per edge."""

    def __init__(self, space: AbanditCells, *, partial_channels: int, edge_normalization: bool):
        o = space.options
        super().__init__(o["channels"], space.plan, o["num_classes"], lambda c_prev, c, group, reduction: SuperCell(
            c_prev, c, layout=space.layout, group=group, reduction=reduction, partial=partial_channels))
        self.space = space
        self.init_arch(space.layout, edge_normalization=edge_normalization)

    def forward(self, x: torch.Tensor, path: Mapping[str, Sequence[int]] | None = None) -> torch.Tensor:
        weights, edges, allowed = self.route(path)

        def run(cell: SuperCell, s: torch.Tensor) -> torch.Tensor:
            t = cell.group
            return cell(s, weights[t] if weights is not None else None, edges[t] if edges else None, allowed[t])

        return self.features(x, run)


# -- the space ------------------------------------------------------------------------------------------------

def describe_genotypes(genotypes: Mapping[str, Genotype]) -> str:
    cells_ = ", ".join(f"{t}={[tuple(p) for p in g]}" for t, g in genotypes.items())
    return f"Genotype({cells_}, concat={list(range(1, NODES + 1))})"


@register_space("abandit-cells")
class AbanditCells(SearchSpace):
    """ABanditNAS's single-input cells with Gabor and denoising ops, `cell_types` searched types, a supernet."""

    default_task_options = {"base_resolution": 32}

    def __init__(self, *, channels: int = 16, layers: int = 8, cell_types: int = 3, resolution: int = 32,
                 num_classes: int = 10):
        if channels < 1 or layers < 3 or resolution < 8 or num_classes < 2:
            raise UserError(f"abandit-cells needs channels >= 1, layers >= 3, resolution >= 8 and num_classes >= 2; "
                            f"got {channels}, {layers}, {resolution}, {num_classes}")
        if not isinstance(cell_types, int) or cell_types < 2 or cell_types > layers:
            raise UserError(f"abandit-cells: cell_types={cell_types!r}; it takes 2 (normal, reduce) up to layers "
                            f"({layers}): two reduction types and cell_types - 2 normal ones")
        super().__init__(channels=channels, layers=layers, cell_types=cell_types, resolution=resolution,
                         num_classes=num_classes)
        self.plan = cell_plan(layers, cell_types)
        self.layout = layout_of(layers, cell_types)

    def parameters(self) -> dict[str, CellParam]:
        return {t: CellParam(self.layout) for t in self.layout.groups}

    def arch(self, params: Mapping[str, Any]) -> Arch:
        o = self.options
        genotypes = {t: self.layout.check(params[t], name=t) for t in self.layout.groups}
        return Arch(self.name, {**genotypes, "channels": o["channels"], "layers": o["layers"],
                                "cell_types": o["cell_types"], "resolution": o["resolution"],
                                "classes": o["num_classes"]})

    def validate(self, arch: Arch) -> None:
        super().validate(arch)
        for key in ("channels", "layers", "cell_types", "resolution", "classes"):
            if key not in arch:
                raise UserError(f"architecture lacks {key!r}")
        if (arch["layers"], arch["cell_types"]) != (self.options["layers"], self.options["cell_types"]):
            raise UserError(f"architecture has {arch['layers']} layers of {arch['cell_types']} cell types; this "
                            f"space lays {self.options['cell_types']} over {self.options['layers']}")

    def build(self, arch: Arch, *, num_classes: int | None = None) -> nn.Module:
        self.validate(arch)
        return Network({t: arch[t] for t in self.layout.groups}, channels=arch["channels"], plan=self.plan,
                       num_classes=num_classes or arch["classes"])

    def target(self, arch: Arch) -> Target:
        return Target((1, 3, arch["resolution"], arch["resolution"]), arch["classes"])

    def smallest(self) -> Arch:
        """Max pooling of the cell input on every node: the cells add no MACs beyond their preprocessing."""
        cell = (("max_pool_3x3", 0),) * NODES
        return self.arch({t: cell for t in self.layout.groups})

    def describe(self, arch: Arch) -> str:
        genotypes = {t: arch[t] for t in self.layout.groups}
        return f"{describe_genotypes(genotypes)} | C={arch['channels']} layers={arch['layers']}"

    def supernet(self, *, partial_channels: int = 4, edge_normalization: bool = True) -> Supernet:
        return Supernet(self, partial_channels=partial_channels, edge_normalization=edge_normalization)

    def derive(self, op_weights: Mapping[str, torch.Tensor], edge_weights: Mapping[str, torch.Tensor] | None = None,
               *, max_skip: int | None = 2, limit: float | None = None) -> tuple[dict[str, Genotype], dict]:
        """Each node keeps its one strongest edge (whose best op, times the edge's weight, weighs most; how the
        paper picks it is not published), with that op; at most `max_skip` skips per normal cell type. Over a
        MAC `limit`, ops are cheapened as `cells.fit_budget` does."""
        return cells.derive(self.layout, op_weights, edge_weights, max_skip=max_skip, limit=limit,
                            op_costs=self.op_costs)

    def op_costs(self) -> OpCosts:
        return self._op_costs

    @cached_property
    def _op_costs(self) -> OpCosts:
        o = self.options
        sizes = cells.plan_sizes(self.plan, channels=o["channels"], resolution=o["resolution"])
        fixed = count_costs(self.build(self.smallest()), self.target(self.smallest()).input_shape)["macs"]
        return cells.measure_op_costs(self.layout, sizes, make_op, fixed=fixed)

    def draw(self, arch: Arch, out: Path) -> list[Path]:
        """<type>.png in `out` per cell type: the cell as a left-to-right DAG with its ops on the edges."""
        return cells.draw_cells(self.layout, {t: arch[t] for t in self.layout.groups}, out, note="full precision")


__all__ = ["OPS", "AbanditCells", "DenoisingBlock", "DotProductFilter", "GaborFilter", "Supernet", "cell_plan",
           "make_op"]
