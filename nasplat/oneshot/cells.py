"""What the searched-cell spaces share (binary-cells, abandit-cells): the cell's layout, genotype checks and
mutations, derivation from a supernet's weights, per-op costs, the supernet's architecture parameters, and the
cell as a networkx graph and a drawing.

A cell has `inputs` input states and `nodes` intermediate nodes; node j reads one edge from every earlier
state (inputs + j edges), and a derived node keeps `keep` of them. A genotype is the plain literal of the
kept edges, `keep` (op, input) pairs per node in node order, inputs 0.. being the cell inputs and the nodes
after them. Each space supplies its op table, its networks and its macro layout; this module knows none of them.
"""
from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import networkx as nx
import torch
from torch import nn

from ..cost import count_costs
from ..errors import UserError
from ..space import Param

Genotype = tuple[tuple[str, int], ...]
OUTPUT = "c_{k}"


@dataclass(frozen=True)
class CellLayout:
    """The shape of a space's cells: its edges, the supernet's ops (with "none" where the space has it), the
    cell types (`groups`) and those whose skip connections a derivation caps (`capped`, normal cells)."""

    inputs: int
    nodes: int
    keep: int
    ops: tuple[str, ...]
    groups: tuple[str, ...]
    capped: tuple[str, ...]

    @cached_property
    def edge_node(self) -> tuple[int, ...]:
        """The node each edge feeds, edges numbered node by node."""
        return tuple(j for j in range(self.nodes) for _ in range(self.inputs + j))

    @cached_property
    def edge_input(self) -> tuple[int, ...]:
        """The state each edge reads."""
        return tuple(i for j in range(self.nodes) for i in range(self.inputs + j))

    @property
    def edges(self) -> int:
        return len(self.edge_node)

    @cached_property
    def cell_ops(self) -> tuple[str, ...]:
        """The ops a genotype may hold: "none" exists only in the supernet."""
        return tuple(op for op in self.ops if op != "none")

    def edge_of(self, node: int, source: int) -> int:
        return sum(self.inputs + j for j in range(node)) + source

    def node_edges(self, node: int) -> range:
        start = self.edge_of(node, 0)
        return range(start, start + self.inputs + node)

    def strided(self, edge: int, *, reduction: bool) -> bool:
        """Whether `edge` halves the resolution: in a reduction cell, the edges that read a cell input."""
        return reduction and self.edge_input[edge] < self.inputs

    def canonical(self, genotype: Iterable[Sequence[Any]]) -> Genotype:
        """The genotype as a tuple of (op, input) pairs, each node's pairs ordered by input then op."""
        pairs = [(str(op), int(source)) for op, source in genotype]
        k = self.keep
        return tuple(p for j in range(len(pairs) // k) for p in sorted(pairs[k * j:k * (j + 1)],
                                                                        key=lambda p: (p[1], p[0])))

    def check(self, genotype: Any, *, name: str = "genotype") -> Genotype:
        """The canonical genotype, or UserError naming what is wrong with the literal."""
        n, k = self.nodes * self.keep, self.keep
        example = ", ".join(repr((op, 0)) for op in self.cell_ops[:2])
        try:
            pairs = [(op, source) for op, source in genotype]
        except (TypeError, ValueError):
            raise UserError(f"{name} must be {n} (op, input) pairs, e.g. ({example}, ...)") from None
        if len(pairs) != n:
            raise UserError(f"{name} has {len(pairs)} (op, input) pairs; a cell has {self.nodes} nodes of {k} "
                            f"input{'s' if k > 1 else ''}: {n} pairs")
        for index, (op, source) in enumerate(pairs):
            node = index // k
            if op not in self.cell_ops:
                raise UserError(f"{name} pair {index}: unknown op {op!r}; use one of {', '.join(self.cell_ops)}")
            if not isinstance(source, int) or isinstance(source, bool) or not 0 <= source < node + self.inputs:
                raise UserError(f"{name} pair {index}: node {node} reads input {source!r}; it may read "
                                f"0..{node + self.inputs - 1}")
        for node in range(self.nodes):
            sources = [s for _, s in pairs[k * node:k * (node + 1)]]
            if len(set(sources)) < k:
                raise UserError(f"{name}: node {node} reads input {sources[0]} twice; its inputs must differ")
        return self.canonical(pairs)


@dataclass(frozen=True)
class CellParam(Param):
    """A whole cell genotype as one searched value; a mutation changes one op or one input of one node."""

    layout: CellLayout

    def sample(self, rng: random.Random) -> Genotype:
        lay, pairs = self.layout, []
        for node in range(lay.nodes):
            for source in sorted(rng.sample(range(node + lay.inputs), lay.keep)):
                pairs.append((rng.choice(lay.cell_ops), source))
        return lay.canonical(pairs)

    def mutate(self, value: Genotype, rng: random.Random) -> Genotype:
        return rng.choice(self.neighbours(value))

    def neighbours(self, value: Genotype) -> tuple[Genotype, ...]:
        lay, out = self.layout, []
        for index, (op, source) in enumerate(value):
            node = index // lay.keep
            used = {s for _, s in value[lay.keep * node:lay.keep * (node + 1)]}
            changed = [(o, source) for o in lay.cell_ops if o != op]
            changed += [(op, s) for s in range(node + lay.inputs) if s not in used]
            for pair in changed:
                out.append(lay.canonical(value[:index] + (pair,) + value[index + 1:]))
        return tuple(dict.fromkeys(out))

    def contains(self, value: Any) -> bool:
        try:
            return self.layout.check(value) == tuple(tuple(p) for p in value)
        except ValueError:
            return False

    def size(self) -> float:
        lay = self.layout
        return math.prod(math.comb(j + lay.inputs, lay.keep) * len(lay.cell_ops) ** lay.keep for j in range(lay.nodes))

    def __str__(self) -> str:
        return f"cell genotype ({self.layout.nodes} nodes x {self.layout.keep} of {len(self.layout.cell_ops)} ops)"


# -- graphs ---------------------------------------------------------------------------------------------------

def input_names(layout: CellLayout) -> list[str]:
    """c_{k-2}, c_{k-1} for two inputs (the two previous cells), c_{k-1} for one."""
    return [f"c_{{k-{layout.inputs - i}}}" for i in range(layout.inputs)]


def cell_graph(layout: CellLayout, genotype: Genotype) -> nx.DiGraph:
    """The cell as a DAG: its inputs, nodes 0.., output c_{k}; edges carry their op ("concat" into the output)."""
    names = [*input_names(layout), *map(str, range(layout.nodes))]
    graph = nx.DiGraph()
    graph.add_nodes_from(names + [OUTPUT])
    for index, (op, source) in enumerate(genotype):
        graph.add_edge(names[source], names[layout.inputs + index // layout.keep], op=op)
    for node in range(layout.nodes):
        graph.add_edge(str(node), OUTPUT, op="concat")
    return graph


def validate_cell(graph: nx.DiGraph) -> None:
    """Raises UserError unless the cell is acyclic and every node reaches the output."""
    if not nx.is_directed_acyclic_graph(graph):
        raise UserError("the cell has a cycle")
    stranded = [n for n in graph if n != OUTPUT and not nx.has_path(graph, n, OUTPUT)]
    if stranded:
        raise UserError(f"cell nodes {', '.join(stranded)} do not reach the output")


def draw_cells(layout: CellLayout, genotypes: Mapping[str, Genotype], out: Path, *, note: str) -> list[Path]:
    """<type>.png in `out` per genotype: the cell as a left-to-right DAG with its ops on the edges, titled
    "<type> cell (<note>)"."""
    from matplotlib.figure import Figure

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    names = input_names(layout)
    pos = {name: (0, 1.0 - 2.0 * i / (len(names) - 1) if len(names) > 1 else 0.0) for i, name in enumerate(names)}
    pos.update({str(j): (j + 1, 1.2 * (-1) ** j * 0.5) for j in range(layout.nodes)})
    pos[OUTPUT] = (layout.nodes + 1, 0)
    for t, genotype in genotypes.items():
        graph = cell_graph(layout, genotype)
        validate_cell(graph)
        figure = Figure(figsize=(9, 4.5))
        ax = figure.add_subplot()
        nx.draw_networkx(graph, pos, ax=ax, node_color=["#9ecae1" if n.startswith("c_") else "#fdd0a2"
                                                          for n in graph], node_size=1300, font_size=9,
                         arrowsize=14, connectionstyle="arc3,rad=0.08")
        labels = {(a, b): d["op"] for a, b, d in graph.edges(data=True) if d["op"] != "concat"}
        nx.draw_networkx_edge_labels(graph, pos, edge_labels=labels, ax=ax, font_size=7, label_pos=0.45,
                                     connectionstyle="arc3,rad=0.08")
        ax.set_title(f"{t} cell ({note})")
        ax.axis("off")
        path = out / f"{t}.png"
        tmp = path.with_name(f".{path.name}.tmp.png")
        figure.savefig(tmp, dpi=110, bbox_inches="tight")
        tmp.replace(path)
        paths.append(path)
    return paths


# -- derivation and costs -------------------------------------------------------------------------------------

def derive_genotype(layout: CellLayout, op_weights: Mapping[str, torch.Tensor],
                    edge_weights: Mapping[str, torch.Tensor] | None = None, *,
                    max_skip: int | None = 2) -> tuple[dict[str, Genotype], dict[str, Any]]:
    """DARTS's rule: each node keeps the `keep` incoming edges whose best non-none op weighs most (times the
    edge's weight), each with that op. In the capped (normal) cell types at most `max_skip` skip connections
    each (the guard against DARTS's collapse into parameter-free ops): each extra one, weakest first, becomes
    the edge's best other op, or gives way to the node's next edge where that weighs more; a skip with
    neither stays, and the info says so. Ops of weight 0 are never chosen."""
    genotypes, replaced, kept = {}, 0, 0
    skip = layout.ops.index("skip_connect") if "skip_connect" in layout.ops else None
    for t in layout.groups:
        w = op_weights[t].detach().cpu().double().clone()
        if "none" in layout.ops:
            w[:, layout.ops.index("none")] = 0
        if edge_weights is not None:
            w = w * edge_weights[t].detach().cpu().double()[:, None]
        banned = torch.zeros_like(w, dtype=torch.bool)
        picks = _pick(layout, w)
        while t in layout.capped and max_skip is not None:
            skips = sorted((w[e, k].item(), e) for e, k in picks if k == skip)
            if len(skips) <= max_skip:
                break
            for _, edge in skips:  # the weakest skip that has a replacement (another op, or another edge)
                trial = banned.clone()
                trial[edge, skip] = True
                try:
                    picks, banned = _pick(layout, w.masked_fill(trial, 0)), trial
                    replaced += 1
                    break
                except ValueError:
                    continue
            else:
                kept += len(skips) - max_skip  # nothing left to put in their place
                break
        genotypes[t] = layout.canonical([(layout.ops[k], layout.edge_input[e]) for e, k in picks])
    info = {"skips_replaced": replaced} if replaced else {}
    return genotypes, ({**info, "skips_over_cap_without_alternative": kept} if kept else info)


def _pick(layout: CellLayout, w: torch.Tensor) -> list[tuple[int, int]]:
    """(edge, op) of the `keep` strongest edges of every node, in node order."""
    best, ops = w.max(1)
    picks = []
    for node in range(layout.nodes):
        chosen = sorted(layout.node_edges(node), key=lambda e: -best[e].item())[:layout.keep]
        if any(best[e] <= 0 for e in chosen):
            raise ValueError(f"node {node} has fewer than {layout.keep} edge(s) with an allowed op other than none")
        picks += [(e, int(ops[e])) for e in sorted(chosen)]
    return picks


@dataclass(frozen=True)
class OpCosts:
    """MACs of the standalone network split as `fixed` (stem, preprocessing, classifier) plus, per cell type,
    `per_op[type][edge, op]`: that op on that edge, summed over the cells of the type."""

    fixed: float
    per_op: dict[str, torch.Tensor]
    layout: CellLayout

    def of(self, genotypes: Mapping[str, Genotype]) -> float:
        lay, total = self.layout, self.fixed
        for t in lay.groups:
            for index, (op, source) in enumerate(genotypes[t]):
                total += float(self.per_op[t][lay.edge_of(index // lay.keep, source), lay.ops.index(op)])
        return total


def measure_op_costs(layout: CellLayout, cells: Iterable[tuple[str, int, int, bool]],
                     make_op: Callable[[str, int, int], nn.Module], *, fixed: float) -> OpCosts:
    """Counts every op on every edge of `cells` ((type, channels, input side, reduction) per cell of the
    network) with `make_op(op, channels, stride)`, each distinct (op, channels, side, stride) once. A
    reduction cell's unstrided edges read nodes that are already reduced."""
    per_op = {t: torch.zeros(layout.edges, len(layout.ops), dtype=torch.float64) for t in layout.groups}
    measured: dict[tuple[str, int, int, int], float] = {}
    for t, c, side, reduction in cells:
        for e in range(layout.edges):
            stride = 2 if layout.strided(e, reduction=reduction) else 1
            at = side // 2 if reduction and stride == 1 else side
            for k, op in enumerate(layout.ops):
                if op == "none":
                    continue
                key = (op, c, at, stride)
                if key not in measured:
                    measured[key] = count_costs(make_op(op, c, stride), (1, c, at, at))["macs"]
                per_op[t][e, k] += measured[key]
    return OpCosts(float(fixed), per_op, layout)


def fit_budget(costs: OpCosts, genotypes: Mapping[str, Genotype], op_weights: Mapping[str, torch.Tensor], *,
               limit: float) -> tuple[dict[str, Genotype], int]:
    """Over a MAC `limit`, swaps ops for cheaper ones on the same edges, each time the swap that gives up the
    least op weight per MAC saved, until the genotypes fit (or nothing is cheaper: the hard check then marks
    them infeasible). Returns the genotypes and the number of swaps."""
    lay, genotypes, cheapened = costs.layout, dict(genotypes), 0
    choices = [k for k, op in enumerate(lay.ops) if op != "none"]
    while costs.of(genotypes) > limit:
        best = None
        for t in lay.groups:
            w = op_weights[t].detach().cpu()
            for index, (op, source) in enumerate(genotypes[t]):
                e, k = lay.edge_of(index // lay.keep, source), lay.ops.index(op)
                for k2 in choices:
                    saved = float(costs.per_op[t][e, k] - costs.per_op[t][e, k2])
                    if saved > 0:
                        price = float(w[e, k] - w[e, k2]) / saved
                        if best is None or price < best[0]:
                            best = (price, t, index, k2)
        if best is None:
            break
        _, t, index, k2 = best
        pairs = list(genotypes[t])
        pairs[index] = (lay.ops[k2], pairs[index][1])
        genotypes[t] = lay.canonical(pairs)
        cheapened += 1
    return genotypes, cheapened


def derive(layout: CellLayout, op_weights: Mapping[str, torch.Tensor],
           edge_weights: Mapping[str, torch.Tensor] | None, *, max_skip: int | None, limit: float | None,
           op_costs: Callable[[], OpCosts]) -> tuple[dict[str, Genotype], dict[str, Any]]:
    """A space's `derive`: the genotypes of `derive_genotype`, cheapened by `fit_budget` when over `limit`
    (`op_costs` is asked only then: measuring them takes seconds)."""
    genotypes, info = derive_genotype(layout, op_weights, edge_weights, max_skip=max_skip)
    if limit is None:
        return genotypes, info
    genotypes, cheapened = fit_budget(op_costs(), genotypes, op_weights, limit=limit)
    return genotypes, ({**info, "ops_cheapened_for_budget": cheapened} if cheapened else info)


def plan_sizes(plan: Iterable[tuple[str, bool]], *, channels: int, resolution: int) -> list[tuple[str, int, int, bool]]:
    """(type, channels, input side, reduction) of each cell of a (type, reduction) plan, for
    `measure_op_costs`: channels double and the side halves at each reduction."""
    out, c, side = [], channels, resolution
    for t, reduction in plan:
        c = c * 2 if reduction else c
        out.append((t, c, side, reduction))
        side = side // 2 if reduction else side
    return out


# -- the supernet's architecture side -------------------------------------------------------------------------

Route = tuple[dict[str, torch.Tensor] | None, dict[str, torch.Tensor] | None, dict[str, list[list[int]]]]


class CellSupernet:
    """The architecture side of a cell supernet, mixed into its nn.Module (which calls `init_arch` after
    nn.Module's init, and sets `space`: the space whose `derive` and `op_costs` it uses). Per cell type:
    `alphas` (edges x ops), `betas` (one per edge, softmaxed over each node's edges, trained only with edge
    normalisation) and a mask of the ops still allowed (what operation-space reduction leaves)."""

    layout: CellLayout
    space: Any
    edge_normalization: bool
    alphas: nn.ParameterDict
    betas: nn.ParameterDict

    def init_arch(self, layout: CellLayout, *, edge_normalization: bool) -> None:
        self.layout = layout
        self.edge_normalization = edge_normalization
        shape = (layout.edges, len(layout.ops))
        self.alphas = nn.ParameterDict({t: nn.Parameter(1e-3 * torch.randn(shape)) for t in layout.groups})
        self.betas = nn.ParameterDict({t: nn.Parameter(torch.zeros(layout.edges), requires_grad=edge_normalization)
                                       for t in layout.groups})
        for t in layout.groups:
            self.register_buffer(f"mask_{t}", torch.ones(shape, dtype=torch.bool))  # type: ignore[attr-defined]

    @property
    def ops(self) -> tuple[str, ...]:
        return self.layout.ops

    @property
    def masks(self) -> dict[str, torch.Tensor]:
        return {t: getattr(self, f"mask_{t}") for t in self.layout.groups}

    def set_mask(self, cell_type: str, mask: torch.Tensor) -> None:
        mask = torch.as_tensor(mask, dtype=torch.bool)
        shape = (self.layout.edges, len(self.layout.ops))
        if mask.shape != shape or not bool(mask.any(1).all()):
            raise ValueError(f"a mask is {shape[0]} x {shape[1]} booleans with at least one op allowed per edge")
        getattr(self, f"mask_{cell_type}").copy_(mask)

    def arch_parameters(self) -> list[nn.Parameter]:
        return [*self.alphas.values(), *(self.betas.values() if self.edge_normalization else ())]

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in [*self.alphas.values(), *self.betas.values()]}
        return [p for p in self.parameters() if id(p) not in arch]  # type: ignore[attr-defined]

    def op_weights(self) -> dict[str, torch.Tensor]:
        """Softmax of the alphas over the ops each mask allows (0 for the others)."""
        return {t: self.alphas[t].masked_fill(~m, float("-inf")).softmax(-1) for t, m in self.masks.items()}

    def edge_weights(self) -> dict[str, torch.Tensor]:
        """Softmax of the betas over each node's incoming edges; ones without edge normalisation."""
        lay = self.layout
        if not self.edge_normalization:
            return {t: torch.ones(lay.edges, device=self.betas[t].device) for t in lay.groups}
        spans = [lay.node_edges(n) for n in range(lay.nodes)]
        return {t: torch.cat([self.betas[t][r.start:r.stop].softmax(0) for r in spans]) for t in lay.groups}

    def route(self, path: Mapping[str, Sequence[int]] | None) -> Route:
        """Per cell type, what its cells run: (op weights, edge weights or None, allowed op indices per edge);
        for a `path` (one op index per edge per type) no weights and that one op."""
        if path is None:
            allowed = {t: [[k for k, ok in enumerate(row) if ok] for row in m.tolist()] for t, m in self.masks.items()}
            return self.op_weights(), self.edge_weights() if self.edge_normalization else None, allowed
        missing = [t for t in self.layout.groups if t not in path]
        if missing:
            raise ValueError(f"the path lacks cell type(s) {', '.join(missing)}; it names one op index per edge "
                             f"for each of {', '.join(self.layout.groups)}")
        return None, None, {t: [[int(k)] for k in path[t]] for t in self.layout.groups}

    def derive(self, *, max_skip: int | None = 2, limit: float | None = None) -> tuple[dict[str, Genotype], dict]:
        edge = self.edge_weights() if self.edge_normalization else None
        return self.space.derive(self.op_weights(), edge, max_skip=max_skip, limit=limit)

    def expected_cost(self) -> torch.Tensor:
        """The derived network's expected MACs: per edge, the op costs weighted by the softmax over non-none
        ops; per node, the edges weighted by their share of its `keep` kept inputs (keep x the edge weight with
        edge normalisation, keep/(incoming edges) without)."""
        lay = self.layout
        costs = self.space.op_costs()
        weights, edges = self.op_weights(), self.edge_weights()
        real = [k for k, op in enumerate(lay.ops) if op != "none"]
        total = torch.tensor(costs.fixed)
        for t in lay.groups:
            w = weights[t][:, real]
            w = w / w.sum(1, keepdim=True).clamp_min(1e-12)
            per_edge = (w * costs.per_op[t][:, real].to(w.device)).sum(1)
            share = lay.keep * edges[t] if self.edge_normalization else \
                torch.tensor([lay.keep / (lay.inputs + lay.edge_node[e]) for e in range(lay.edges)], device=w.device)
            total = total + (share * per_edge).sum()
        return total


__all__ = ["CellLayout", "CellParam", "CellSupernet", "Genotype", "OpCosts", "cell_graph", "derive", "derive_genotype",
           "draw_cells", "fit_budget", "measure_op_costs", "plan_sizes", "validate_cell"]
