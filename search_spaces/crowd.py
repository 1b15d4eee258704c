"""AMSNet-like crowd-counting cells (NAS-Count, Hu et al., ECCV 2020): an encoder-decoder density regressor of
searched encoder and decoder cells, with searched multi-path links from the encoder into the decoder.

The paper's op lists, cell topology and macro space are not public (research/methods.md §6.2); this is the
reconstruction it describes. A 3 x 3 stride-2 stem (C channels) is followed by `depth` encoder cells, each
halving the resolution (strides 4, 8, ..., 2^(depth+1)), then decoder cells, each doubling it, up to
`output_stride` (default 4), and a 1 x 1 density head. Channels follow the stride, C x stride / 4, so every
cell costs about the same at any depth. The output is N x 1 x ceil(H / os) x ceil(W / os).

Micro level: one encoder and one decoder cell type, DARTS-style (two inputs, three nodes, each node keeping
two (op, input) pairs; the output concatenates the nodes). Encoder cells read the two previous cells, as
DARTS's reduction cells, their edges from the inputs strided. A decoder cell reads, as input 0, its
multi-path link and, as input 1, the previous cell projected and upsampled; its edges keep the resolution.
Ops are counting-specific: multi-scale dilated 3 x 3 convolutions (rates 2 and 4, CSRNet's and AMSNet's
way to wide receptive fields without losing resolution), standard 3 x 3 and 5 x 5 convolutions, a DARTS
separable 3 x 3 convolution, 3 x 3 max and average pooling, identity, and "none" in the supernet.

Macro level: which encoder output feeds each decoder cell. Decoder cell d's link is a one-node cell of its
own (`link<d>`, the cell machinery with one input per encoder output and one kept edge): every encoder
output is resized to the decoder's resolution and projected to its channels (1 x 1), and the link keeps
one of them through one op. The supernet mixes the candidates, under PC-DARTS a softmax weight per candidate
(the edge betas); derivation keeps the strongest, the argmax. Modelled as cells, the links are searched by
every one-shot strategy unchanged: the bandits sample and abandon their ops per candidate like any edge.

The head is ReLU, 1 x 1 convolution, softplus: a density is never negative, and unlike a final ReLU the
softplus never stops passing gradient. Its bias starts where softplus gives `PRIOR_DENSITY` heads per
output pixel (about the generated crowds' mean at output stride 4), so training does not begin by
unlearning a count hundreds of heads off.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
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
from nasplat.oneshot.darts_ops import FactorizedReduce, conv_bn, darts_ops
from nasplat.oneshot.mixed_edges import MixedEdge, OpTable, node_states
from nasplat.registry import register_space
from nasplat.space import SearchSpace, Target

OPS = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "conv_3x3", "conv_5x5",
       "dil2_conv_3x3", "dil4_conv_3x3")
NODES = 3
CELL_TYPES = ("encoder", "decoder")
LAYOUT = CellLayout(inputs=2, nodes=NODES, keep=2, ops=OPS, groups=CELL_TYPES, capped=("decoder",))
OUTPUT_STRIDES = (1, 2, 4, 8)
PRIOR_DENSITY = 0.05  # heads per output pixel at the start of training


# -- operations -----------------------------------------------------------------------------------------------

# DARTS's pools, skip and separable 3 x 3 at full precision, and full convolutions of several sizes and rates
TABLE = OpTable({
    **{op: darts_ops().entries[op] for op in ("max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3")},
    "conv_3x3": (("relu", "relu"), conv_bn(3, 1)),
    "conv_5x5": (("relu", "relu"), conv_bn(5, 1)),
    "dil2_conv_3x3": (("relu", "relu"), conv_bn(3, 2)),
    "dil4_conv_3x3": (("relu", "relu"), conv_bn(3, 4)),
})
make_op = TABLE.make_op  # a standalone op: its prep, then its core


def _relu_conv_bn(c_in: int, c_out: int, affine: bool) -> nn.Module:
    return nn.Sequential(nn.ReLU(), nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out, affine=affine))


def resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize to `size`, the side of the stride the result is used at (exact also for odd inputs)."""
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class Projection(nn.Module):
    """An encoder output brought to a decoder cell: `factor` = decoder stride / encoder stride. A finer
    output (factor > 1) is average-pooled first and then projected, a coarser one projected first and then
    upsampled: the 1 x 1 convolution always runs at the smaller of the two resolutions."""

    def __init__(self, c_in: int, c_out: int, factor: float, *, affine: bool):
        super().__init__()
        self.pool = int(factor) if factor > 1 else 1
        self.up = factor < 1
        self.conv = _relu_conv_bn(c_in, c_out, affine)

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        if self.pool > 1:
            x = F.avg_pool2d(x, self.pool, self.pool, ceil_mode=True)
        x = self.conv(x)
        return resize(x, size) if self.up else x


class _Sized(nn.Module):
    """A projection with its output size fixed, as a one-argument module for counting its MACs."""

    def __init__(self, projection: Projection, size: int):
        super().__init__()
        self.projection, self.size = projection, size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(x, (self.size, self.size))


class DensityHead(nn.Module):
    """ReLU, 1 x 1 convolution to `maps` density maps, softplus; the bias starts at PRIOR_DENSITY (and is
    set there again whenever the task re-initialises the model before training)."""

    def __init__(self, c_in: int, maps: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in, maps, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.conv.bias.fill_(math.log(math.expm1(PRIOR_DENSITY)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.softplus(self.conv(F.relu(x)))


# -- the macro plan -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    """Where the cells sit: C channels at stride 4, `depth` encoder cells, decoder cells down to the output
    stride. `channels(s)` is C x s / 4."""

    channels_at_4: int
    depth: int
    output_stride: int

    def channels(self, stride: int) -> int:
        return self.channels_at_4 * stride // 4

    @property
    def encoder_strides(self) -> tuple[int, ...]:
        """The output stride of each encoder cell: 4, 8, ..."""
        return tuple(2 ** (k + 2) for k in range(self.depth))

    @property
    def decoder_strides(self) -> tuple[int, ...]:
        """The output stride of each decoder cell: half the deepest encoder stride, ..., the output stride."""
        return tuple(2 ** e for e in range(self.depth, int(math.log2(self.output_stride)) - 1, -1))

    @property
    def links(self) -> tuple[str, ...]:
        return tuple(f"link{d + 1}" for d in range(len(self.decoder_strides)))


def link_layout(plan: Plan) -> CellLayout:
    """The links as one-node cells: one input per encoder output, one kept."""
    return CellLayout(inputs=plan.depth, nodes=1, keep=1, ops=OPS, groups=plan.links, capped=())


def side(resolution: int, stride: int) -> int:
    """The side of the feature map at `stride` (each halving rounds up, as the stride-2 layers do)."""
    for _ in range(int(math.log2(stride))):
        resolution = -(-resolution // 2)
    return resolution


class _Macro(nn.Module):
    """The network around the cells: stem, encoder cells, decoder cells with their links, density head.
    `make_cell(type, channels, reduction)` and `make_link(d, projections, channels)` give the searched parts."""

    def __init__(self, plan: Plan, maps: int, make_cell: Callable[[str, int, bool], nn.Module],
                 make_link: Callable[[int, list[Callable[[], Projection]], int], nn.Module], *, affine: bool):
        super().__init__()
        self.plan = plan
        c = plan.channels_at_4
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, 2, 1, bias=False), nn.BatchNorm2d(c))
        c_pp = c_p = c
        self.pre0, self.pre1, encoder = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for k, stride in enumerate(plan.encoder_strides):
            ck = plan.channels(stride)
            self.pre0.append(FactorizedReduce(c_pp, ck, "none", affine, relu=True) if k else
                             _relu_conv_bn(c_pp, ck, affine))
            self.pre1.append(_relu_conv_bn(c_p, ck, affine))
            encoder.append(make_cell("encoder", ck, True))
            c_pp, c_p = c_p, NODES * ck
        self.encoder = encoder
        self.up, decoder, links = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for d, stride in enumerate(plan.decoder_strides):
            cd = plan.channels(stride)
            self.up.append(_relu_conv_bn(c_p, cd, affine))
            projections = [lambda s=s, cd=cd, stride=stride: Projection(NODES * plan.channels(s), cd, stride / s,
                                                                        affine=affine)
                           for s in plan.encoder_strides]
            links.append(make_link(d, projections, cd))
            decoder.append(make_cell("decoder", cd, False))
            c_p = NODES * cd
        self.decoder, self.links = decoder, links
        self.head = DensityHead(c_p, maps)

    def features(self, x: torch.Tensor, run: Callable[[nn.Module, str, list[torch.Tensor]], torch.Tensor],
                 link: Callable[[nn.Module, str, list[torch.Tensor], Sequence[int]], torch.Tensor]) -> torch.Tensor:
        """`run(cell, type, inputs)` runs a cell on its two prepared inputs, `link(module, name, encoder
        outputs, size)` a decoder cell's link."""
        s = self.stem(x)
        sizes = {1: x.shape[-2:], 2: s.shape[-2:]}
        s0 = s1 = s
        outputs = []
        for k, cell in enumerate(self.encoder):
            s0, s1 = s1, run(cell, "encoder", [self.pre0[k](s0), self.pre1[k](s1)])
            outputs.append(s1)
            sizes[self.plan.encoder_strides[k]] = s1.shape[-2:]
        for d, cell in enumerate(self.decoder):
            size = sizes[self.plan.decoder_strides[d]]
            skip = link(self.links[d], self.plan.links[d], outputs, size)
            s1 = run(cell, "decoder", [skip, resize(self.up[d](s1), size)])
        return self.head(s1)


# -- standalone networks --------------------------------------------------------------------------------------

class Cell(nn.Module):
    """A standalone cell of one genotype: node j sums its two ops on its two inputs; the nodes concatenated."""

    def __init__(self, genotype: Genotype, c: int, *, reduction: bool):
        super().__init__()
        self.sources = [source for _, source in genotype]
        self.ops = nn.ModuleList(make_op(op, c, 2 if reduction and source < LAYOUT.inputs else 1)
                                 for op, source in genotype)

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        states = list(inputs)
        for node in range(NODES):
            a, b = 2 * node, 2 * node + 1  # LAYOUT.keep pairs per node
            states.append(self.ops[a](states[self.sources[a]]) + self.ops[b](states[self.sources[b]]))
        return torch.cat(states[LAYOUT.inputs:], dim=1)


class Link(nn.Module):
    """A standalone link: the one kept encoder output, projected, through its op."""

    def __init__(self, genotype: Genotype, projections: list[Callable[[], Projection]], c: int):
        super().__init__()
        ((op, self.source),) = genotype
        self.project = projections[self.source]()
        self.op = make_op(op, c, 1)

    def forward(self, outputs: list[torch.Tensor], size: Sequence[int]) -> torch.Tensor:
        return self.op(self.project(outputs[self.source], size))


class Network(_Macro):
    """The standalone network of one genotype per cell type and per link."""

    def __init__(self, genotypes: Mapping[str, Genotype], *, plan: Plan, maps: int):
        super().__init__(plan, maps, lambda t, c, reduction: Cell(genotypes[t], c, reduction=reduction),
                         lambda d, projections, c: Link(genotypes[plan.links[d]], projections, c), affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x, lambda cell, t, inputs: cell(inputs),
                             lambda link, name, outputs, size: link(outputs, size))


# -- the supernet ---------------------------------------------------------------------------------------------

class SuperCell(nn.Module):
    """A supernet cell of any layout: every node sums all its incoming mixed edges; the channels that bypass
    the ops are added per node and shuffled back in (PC-DARTS). Returns the node states."""

    def __init__(self, layout: CellLayout, c: int, *, reduction: bool, partial: int):
        super().__init__()
        self.layout, self.reduction, self.partial = layout, reduction, partial
        self.edges = nn.ModuleList(MixedEdge(TABLE, OPS, channels=c, partial=partial,
                                             stride=2 if layout.strided(e, reduction=reduction) else 1)
                                   for e in range(layout.edges))

    def forward(self, inputs: Sequence[torch.Tensor], weights: torch.Tensor | None,
                edge_weights: torch.Tensor | None, ops: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        return node_states(self.layout, inputs, self.edges, weights, edge_weights, ops, reduction=self.reduction,
                           partial=self.partial, mode="none")


class SuperLink(nn.Module):
    """A decoder cell's link in the supernet: every encoder output projected, then the one-node link cell."""

    def __init__(self, layout: CellLayout, projections: list[Callable[[], Projection]], c: int, *, partial: int):
        super().__init__()
        self.projections = nn.ModuleList(make() for make in projections)
        self.cell = SuperCell(layout, c, reduction=False, partial=partial)

    def forward(self, outputs: list[torch.Tensor], size: Sequence[int], *route: Any) -> torch.Tensor:
        return self.cell([p(x, size) for p, x in zip(self.projections, outputs)], *route)[0]


@dataclass(frozen=True)
class _CostsOf:
    """What `CellSupernet.expected_cost` asks of its `space`: the op costs of one layout."""

    op_costs: Callable[[], OpCosts]


class _ArchWeights(CellSupernet, nn.Module):
    """The architecture parameters of one layout (the cells, or the links), as a submodule of the supernet."""

    def __init__(self, layout: CellLayout, op_costs: Callable[[], OpCosts], *, edge_normalization: bool):
        nn.Module.__init__(self)
        self.space = _CostsOf(op_costs)
        self.init_arch(layout, edge_normalization=edge_normalization)


class Supernet(_Macro):
    """The weight-sharing supernet: `alphas` per cell type (9 edges x 9 ops) and per link (one edge per
    encoder output x 9 ops), with edge normalisation `betas` (per node, and per link over its candidates);
    `forward(x, path={group: op index per edge})` runs one op per edge."""

    def __init__(self, space: Crowd, *, partial_channels: int, edge_normalization: bool):
        layout, links = space.layout, space.link_layout
        super().__init__(space.plan, 1, lambda t, c, reduction: SuperCell(
            layout, c, reduction=reduction, partial=partial_channels), lambda d, projections, c: SuperLink(
            links, projections, c, partial=partial_channels), affine=False)
        self.space = space
        self.edge_normalization = edge_normalization
        self.cell_arch = _ArchWeights(layout, lambda: space.op_costs().cells, edge_normalization=edge_normalization)
        self.link_arch = _ArchWeights(links, lambda: space.op_costs().links, edge_normalization=edge_normalization)

    @property
    def ops(self) -> tuple[str, ...]:
        return OPS

    @property
    def alphas(self) -> dict[str, nn.Parameter]:
        return {**self.cell_arch.alphas, **self.link_arch.alphas}

    def arch_parameters(self) -> list[nn.Parameter]:
        return [*self.cell_arch.arch_parameters(), *self.link_arch.arch_parameters()]

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in [*self.cell_arch.parameters(), *self.link_arch.parameters()]}
        return [p for p in self.parameters() if id(p) not in arch]

    def op_weights(self) -> dict[str, torch.Tensor]:
        return {**self.cell_arch.op_weights(), **self.link_arch.op_weights()}

    def edge_weights(self) -> dict[str, torch.Tensor]:
        return {**self.cell_arch.edge_weights(), **self.link_arch.edge_weights()}

    def derive(self, *, max_skip: int | None = 2, limit: float | None = None) -> tuple[dict[str, Genotype], dict]:
        edges = self.edge_weights() if self.edge_normalization else None
        return self.space.derive(self.op_weights(), edges, max_skip=max_skip, limit=limit)

    def expected_cost(self) -> torch.Tensor:
        """The derived network's expected MACs: the cells' and the links' (each as CellSupernet counts it)."""
        return self.cell_arch.expected_cost() + self.link_arch.expected_cost()

    def forward(self, x: torch.Tensor, path: Mapping[str, Sequence[int]] | None = None) -> torch.Tensor:
        routes = {}
        for part in (self.cell_arch, self.link_arch):
            weights, edges, allowed = part.route(path)
            routes.update({t: (weights[t] if weights is not None else None, edges[t] if edges else None,
                               allowed[t]) for t in part.layout.groups})
        return self.features(x, lambda cell, t, inputs: torch.cat(cell(inputs, *routes[t]), dim=1),
                             lambda link, name, outputs, size: link(outputs, size, *routes[name]))


# -- the space ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CrowdCosts:
    """MACs of the standalone network as `cells.fixed` (stem, preprocessing, upsampling projections, head)
    plus the cells' ops (`cells`) plus the links' projections and ops (`links`, fixed 0)."""

    cells: OpCosts
    links: OpCosts

    def of(self, genotypes: Mapping[str, Genotype]) -> float:
        return self.cells.of(genotypes) + self.links.of(genotypes)


@register_space("crowd")
class Crowd(SearchSpace):
    """AMSNet-like encoder-decoder cells and multi-path links for density-map counting, with a supernet."""

    default_task = "counting"

    def __init__(self, *, channels: int = 24, depth: int = 3, output_stride: int = 4, resolution: int = 512):
        if output_stride not in OUTPUT_STRIDES:
            raise UserError(f"crowd: output_stride={output_stride!r}; use one of {OUTPUT_STRIDES}")
        if not isinstance(depth, int) or depth < 2 or 2 ** (depth + 1) <= output_stride:
            raise UserError(f"crowd: depth={depth!r} encoder cells; it takes 2 or more, and more than "
                            f"log2(output_stride) - 1 so that at least one decoder cell upsamples")
        if channels < 1 or channels * output_stride % 4 or resolution < 2 ** (depth + 1):
            raise UserError(f"crowd needs channels >= 1 with channels x output_stride / 4 a whole number, and "
                            f"resolution >= {2 ** (depth + 1)}; got channels={channels}, resolution={resolution}")
        super().__init__(channels=channels, depth=depth, output_stride=output_stride, resolution=resolution)
        self.plan = Plan(channels, depth, output_stride)
        self.layout = LAYOUT
        self.link_layout = link_layout(self.plan)

    @property
    def groups(self) -> tuple[str, ...]:
        return (*CELL_TYPES, *self.plan.links)

    def parameters(self) -> dict[str, CellParam]:
        links = {t: CellParam(self.link_layout) for t in self.plan.links}
        return {**{t: CellParam(LAYOUT) for t in CELL_TYPES}, **links}

    def arch(self, params: Mapping[str, Any]) -> Arch:
        o = self.options
        genotypes = {t: LAYOUT.check(params[t], name=t) for t in CELL_TYPES}
        genotypes.update({t: self.link_layout.check(params[t], name=t) for t in self.plan.links})
        return Arch(self.name, {**genotypes, "channels": o["channels"], "depth": o["depth"],
                                "output_stride": o["output_stride"], "resolution": o["resolution"]})

    def validate(self, arch: Arch) -> None:
        if arch.space != self.name:
            super().validate(arch)  # which says so
        for key in ("channels", "depth", "output_stride", "resolution"):
            if key not in arch:
                raise UserError(f"architecture lacks {key!r}")
        if (arch["depth"], arch["output_stride"]) != (self.options["depth"], self.options["output_stride"]):
            raise UserError(f"architecture has depth {arch['depth']} and output stride {arch['output_stride']}; "
                            f"this space has {self.options['depth']} and {self.options['output_stride']}")
        super().validate(arch)

    def build(self, arch: Arch, *, num_classes: int | None = None) -> nn.Module:
        """The standalone network; `num_classes` is the number of density maps it outputs (1, the counting
        task's, by default)."""
        self.validate(arch)
        plan = Plan(arch["channels"], arch["depth"], arch["output_stride"])
        return Network({t: arch[t] for t in self.groups}, plan=plan, maps=num_classes or 1)

    def target(self, arch: Arch) -> Target:
        return Target((1, 3, arch["resolution"], arch["resolution"]), 1)

    def smallest(self) -> Arch:
        """Max pooling on every cell edge (no MACs) and, per link, the encoder output cheapest to project,
        through max pooling."""
        cell = tuple(("max_pool_3x3", s) for _ in range(NODES) for s in range(LAYOUT.inputs))
        pool = OPS.index("max_pool_3x3")
        links = {t: (("max_pool_3x3", int(self._link_costs.per_op[t][:, pool].argmin())),) for t in self.plan.links}
        return self.arch({**{t: cell for t in CELL_TYPES}, **links})

    def describe(self, arch: Arch) -> str:
        """The cells as a DARTS genotype, then each decoder cell's link: which encoder output, through which op."""
        plan = Plan(arch["channels"], arch["depth"], arch["output_stride"])
        cells_ = ", ".join(f"{t}={[tuple(p) for p in arch[t]]}" for t in CELL_TYPES)
        links = ", ".join(f"dec{d + 1}(s{s}) <- enc{arch[t][0][1] + 1}(s{plan.encoder_strides[arch[t][0][1]]}) "
                          f"{arch[t][0][0]}" for d, (t, s) in enumerate(zip(plan.links, plan.decoder_strides)))
        return (f"Genotype({cells_}, concat={list(range(2, 2 + NODES))}) | links: {links} | C={arch['channels']} "
                f"depth={arch['depth']} output_stride={arch['output_stride']}")

    def supernet(self, *, partial_channels: int = 4, edge_normalization: bool = True) -> Supernet:
        return Supernet(self, partial_channels=partial_channels, edge_normalization=edge_normalization)

    def derive(self, op_weights: Mapping[str, torch.Tensor], edge_weights: Mapping[str, torch.Tensor] | None = None,
               *, max_skip: int | None = 2, limit: float | None = None) -> tuple[dict[str, Genotype], dict]:
        """DARTS's rule on the cells (two strongest edges per node, at most `max_skip` skips in the decoder
        cell) and on the links (the strongest candidate, its best op). Over a MAC `limit`, the cells' ops are
        cheapened first (`cells.fit_budget`) to fit what the links leave, then, if that is not enough, the
        links' ops."""
        links, _ = cells.derive_genotype(self.link_layout, op_weights, edge_weights, max_skip=None)
        room = None if limit is None else limit - self.op_costs().links.of(links)
        genotypes, info = cells.derive(LAYOUT, op_weights, edge_weights, max_skip=max_skip, limit=room,
                                       op_costs=lambda: self.op_costs().cells)
        if limit is not None:
            rest = replace(self.op_costs().links, fixed=self.op_costs().cells.of(genotypes))
            links, cheapened = cells.fit_budget(rest, links, op_weights, limit=limit)
            info = {**info, "link_ops_cheapened_for_budget": cheapened} if cheapened else info
        return {**genotypes, **links}, info

    def op_costs(self) -> CrowdCosts:
        return self._costs

    @cached_property
    def _link_costs(self) -> OpCosts:
        """Per link and candidate: the projection's MACs plus each op's at the decoder cell."""
        o, plan = self.options, self.plan
        ops = cells.measure_op_costs(
            self.link_layout, [(t, plan.channels(s), side(o["resolution"], s), False)
                               for t, s in zip(plan.links, plan.decoder_strides)],
            make_op, fixed=0.0)
        real = torch.tensor([op != "none" for op in OPS], dtype=torch.float64)
        per_op = {}
        for t, s in zip(plan.links, plan.decoder_strides):
            projected = []
            for e in plan.encoder_strides:
                shape = (1, NODES * plan.channels(e), side(o["resolution"], e), side(o["resolution"], e))
                # the resize inside counts no MACs; the size it resizes to matters only for upsampling
                projection = Projection(shape[1], plan.channels(s), s / e, affine=True)
                projected.append(count_costs(_Sized(projection, side(o["resolution"], s)), shape)["macs"])
            per_op[t] = ops.per_op[t] + torch.tensor(projected, dtype=torch.float64)[:, None] * real
        return OpCosts(0.0, per_op, self.link_layout)

    @cached_property
    def _costs(self) -> CrowdCosts:
        o, plan = self.options, self.plan
        sizes = [("encoder", plan.channels(s), side(o["resolution"], s // 2), True) for s in plan.encoder_strides]
        sizes += [("decoder", plan.channels(s), side(o["resolution"], s), False) for s in plan.decoder_strides]
        smallest = self.smallest()
        fixed = count_costs(self.build(smallest), self.target(smallest).input_shape)["macs"] - \
            self._link_costs.of(smallest)
        return CrowdCosts(cells.measure_op_costs(LAYOUT, sizes, make_op, fixed=fixed),
                          self._link_costs)

    def draw(self, arch: Arch, out: Path) -> list[Path]:
        """encoder.png and decoder.png in `out` (the links are in `describe`)."""
        return cells.draw_cells(LAYOUT, {t: arch[t] for t in CELL_TYPES}, out,
                                note="decoder: c_{k-2} is the multi-path link, c_{k-1} the upsampled cell")


__all__ = ["CELL_TYPES", "LAYOUT", "OPS", "Crowd", "CrowdCosts", "Network", "Plan", "Supernet", "make_op"]
