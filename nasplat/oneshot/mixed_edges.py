"""The supernet side of the cell spaces (binary-cells, abandit-cells, crowd): their op tables, the mixed edges
that weigh every op of an edge, and the node states a supernet cell computes from them (PC-DARTS's partial
channels and edge weights). Each space supplies its op table and its layout; this module knows neither."""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from .cells import CellLayout

CHANNELS_LAST = torch.channels_last  # depthwise convolutions run 2-3x faster in it on CPU (measured)

Core = Callable[[int, int, bool], nn.Module]  # (channels, stride, affine BN) -> the op's module after its prep


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


@dataclass(frozen=True)
class OpTable:
    """A cell space's ops: op -> (its prep at stride 1 and at stride 2, its core). A standalone op is its prep
    then its core; a supernet's mixed edge shares each source's preps among its ops. `mode` is the
    binarization the preps run under (nasplat.binary: under "both" a sign replaces the ReLU)."""

    entries: Mapping[str, tuple[tuple[str, str], Core]]
    mode: str = "none"

    def prep_of(self, op: str, stride: int) -> str:
        return self.entries[op][0][stride - 1]

    def core(self, op: str, channels: int, stride: int, *, affine: bool) -> nn.Module:
        return self.entries[op][1](channels, stride, affine)

    def make_op(self, op: str, channels: int, stride: int, *, affine: bool = True) -> nn.Module:
        """A standalone op: its prep, then its core."""
        return nn.Sequential(Prep(self.prep_of(op, stride), stride, self.mode),
                             self.core(op, channels, stride, affine=affine))


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


class MixedEdge(nn.Module):
    """One supernet edge of any cell space: the cores of its ops (from `table`, without affine BN) on the
    source's 1/M channels (PC-DARTS), weighted and summed; an op named "none" is never run. The cell adds the
    bypassing channels per node, not per edge (concatenation and shuffle are linear)."""

    def __init__(self, table: OpTable, ops: Sequence[str], *, channels: int, stride: int, partial: int):
        super().__init__()
        if channels % partial:
            raise UserError(f"partial_channels={partial} must divide the cell's channels ({channels})")
        self.part = channels // partial
        self.skipped = frozenset(k for k, op in enumerate(ops) if op == "none")
        self.preps = ["none" if op == "none" else table.prep_of(op, stride) for op in ops]
        self.ops = nn.ModuleList(nn.Identity() if op == "none" else table.core(op, self.part, stride, affine=False)
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


def node_states(layout: CellLayout, inputs: Sequence[torch.Tensor], edges: Sequence[MixedEdge],
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


__all__ = ["CHANNELS_LAST", "Core", "MixedEdge", "OpTable", "Prep", "SourceState", "channel_shuffle", "node_states"]
