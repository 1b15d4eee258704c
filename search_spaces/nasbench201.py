"""NAS-Bench-201: the cell space whose 15,625 members were all trained (Dong & Yang, ICLR 2020).

A cell has four nodes; node i sums one operation applied to each earlier node j, so six edges each take
one of five operations. The Arch is that plain literal, `edge_i_j` naming the edge into node i from node
j; `describe()` gives the benchmark's own cell string, `|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|...|`,
by which the benchmark's tables are keyed, so the same space is searched from a table (the task
"nasbench201", the default) or trained as the real network (`--task classification`).

Cells whose output cannot be reached from the input through operations other than `none` (341 of the
15,625) are kept: the benchmark trained them (they score chance, under 10%, on CIFAR-10) and the published
protocol lets a search query them; built, they give a constant output. `connected()` tells them apart.

The network is the benchmark's: a 3x3 conv stem of 16 channels, three stages of five cells at 16, 32 and
64 channels with a residual reduction block between stages, BN-ReLU, global average pooling and a linear
classifier; operations are ReLU-Conv-BN, 3x3 average pooling, identity, or nothing.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
import networkx as nx
import torch
from torch import nn

import nasplat
from nasplat.arch import Arch
from nasplat.errors import UserError
from nasplat.registry import register_space
from nasplat.space import Choice, Param, SearchSpace, Target

NODES = 4
OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
EDGES = tuple((i, j) for i in range(1, NODES) for j in range(i))  # (to, from), in the cell string's order
STEM_CHANNELS = 16
CELLS_PER_STAGE = 5
STAGES = 3
RESOLUTION = 32

# every cell's latency on 14 real devices (HW-NAS-Bench and HELP), read by `--device table:COLUMN`
SHIPPED_LATENCY = Path(nasplat.__file__).parent / "data" / "hw_latency" / "nb201-latency.csv"


def edge_name(to: int, source: int) -> str:
    return f"edge_{to}_{source}"


class ReLUConvBN(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int, *, stride: int = 1):
        super().__init__(nn.ReLU(), nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, bias=False),
                         nn.BatchNorm2d(cout))


# operation name -> constructor for `channels` in and out, stride 1 (cells never change the shape); `none`
# has no module: the cell leaves that edge out of its sum
OPERATIONS: dict[str, Callable[[int], nn.Module]] = {
    "skip_connect": lambda c: nn.Identity(),
    "nor_conv_1x1": lambda c: ReLUConvBN(c, c, 1),
    "nor_conv_3x3": lambda c: ReLUConvBN(c, c, 3),
    "avg_pool_3x3": lambda c: nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False),
}


class Cell(nn.Module):
    """Node i is the sum of its incoming operations; a node whose edges are all `none` is zero."""

    def __init__(self, ops: Mapping[tuple[int, int], str], channels: int):
        super().__init__()
        self.inputs = [[j for j in range(i) if ops[(i, j)] != "none"] for i in range(NODES)]
        self.edges = nn.ModuleDict({edge_name(i, j): OPERATIONS[ops[(i, j)]](channels)
                                    for i, j in EDGES if ops[(i, j)] != "none"})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nodes = [x]
        for i in range(1, NODES):
            terms = [self.edges[edge_name(i, j)](nodes[j]) for j in self.inputs[i]]
            nodes.append(sum(terms[1:], terms[0]) if terms else torch.zeros_like(x))
        return nodes[-1]


class ResidualReduction(nn.Module):
    """Halves the resolution and changes the width: two ReLU-Conv-BN 3x3 convs plus an average-pooled 1x1
    shortcut (the benchmark's ResNet basic block between stages)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.body = nn.Sequential(ReLUConvBN(cin, cout, 3, stride=2), ReLUConvBN(cout, cout, 3))
        self.shortcut = nn.Sequential(nn.AvgPool2d(2, stride=2), nn.Conv2d(cin, cout, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.body(x)


class NasBench201Network(nn.Module):
    def __init__(self, ops: Mapping[tuple[int, int], str], *, num_classes: int = 10, channels: int = STEM_CHANNELS):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels))
        layers: list[nn.Module] = []
        for stage in range(STAGES):
            if stage:
                layers.append(ResidualReduction(channels, channels * 2))
                channels *= 2
            layers += [Cell(ops, channels) for _ in range(CELLS_PER_STAGE)]
        self.cells = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.head(self.cells(self.stem(x))))


@register_space("nasbench201")
class NasBench201Space(SearchSpace):
    """NAS-Bench-201's cell: 6 edges x 5 operations; searched from the benchmark's table by default."""

    default_task = "nasbench201"
    latency_table = SHIPPED_LATENCY

    def __init__(self, *, num_classes: int = 10):
        super().__init__(num_classes=num_classes)

    @property
    def num_classes(self) -> int:
        return int(self.options["num_classes"])

    def parameters(self) -> dict[str, Param]:
        return {edge_name(i, j): Choice(OPS) for i, j in EDGES}

    def ops(self, arch: Arch) -> dict[tuple[int, int], str]:
        self.validate(arch)
        return {(i, j): arch[edge_name(i, j)] for i, j in EDGES}

    def build(self, arch: Arch, *, num_classes: int | None = None) -> nn.Module:
        return NasBench201Network(self.ops(arch), num_classes=num_classes or self.num_classes)

    def target(self, arch: Arch) -> Target:
        return Target((1, 3, RESOLUTION, RESOLUTION), self.num_classes)

    def describe(self, arch: Arch) -> str:
        """The benchmark's cell string: nodes separated by `+`, each `|op~j|` feeding it from node j."""
        ops = self.ops(arch)
        return "+".join("|" + "|".join(f"{ops[(i, j)]}~{j}" for j in range(i)) + "|" for i in range(1, NODES))

    def to_text(self, arch: Arch) -> str:
        return self.describe(arch)

    def parse(self, text: str) -> Arch:
        """The Arch of a cell string (the inverse of describe)."""
        nodes = text.strip().split("+")
        params: dict[str, str] = {}
        for i, node in enumerate(nodes, start=1):
            pairs = [token.rpartition("~") for token in node[1:-1].split("|")] if node[:1] == node[-1:] == "|" else []
            if len(nodes) != NODES - 1 or [source for _, _, source in pairs] != [str(j) for j in range(i)]:
                raise UserError(f"cannot read cell string {text!r}; expected three nodes, node i feeding from "
                                "nodes 0..i-1, e.g. |nor_conv_3x3~0|+|nor_conv_3x3~0|skip_connect~1|+"
                                "|none~0|avg_pool_3x3~1|nor_conv_1x1~2|")
            params.update({edge_name(i, j): op for j, (op, _, _) in enumerate(pairs)})
        arch = self.arch(params)
        self.validate(arch)
        return arch

    def graph(self, arch: Arch) -> nx.DiGraph:
        """The cell as a DAG over nodes 0..3, one edge (labelled `op`) per operation other than `none`."""
        graph = nx.DiGraph()
        graph.add_nodes_from(range(NODES))
        graph.add_edges_from((j, i, {"op": op}) for (i, j), op in self.ops(arch).items() if op != "none")
        return graph

    def connected(self, arch: Arch) -> bool:
        """Whether the cell's output depends on its input (a path of operations other than `none`)."""
        return nx.has_path(self.graph(arch), 0, NODES - 1)

    def smallest(self) -> Arch:
        return self.arch({edge_name(i, j): "none" for i, j in EDGES})
