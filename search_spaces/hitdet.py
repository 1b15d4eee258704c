"""Hit-Detector's trinity space (Guo et al., CVPR 2020): a detector whose backbone, neck and head are all searched.

Every searchable position ("slot") chooses one op from the same candidate vocabulary, the block zoo released
with the paper (research/methods.md §4.2): MBConv blocks `ir_k{k}_e{e}[_d{d}]` (1 x 1 expansion by e, k x k
depthwise at dilation d, 1 x 1 projection; residual where shapes allow), depthwise-separable blocks
`sd_k{k}_d{d}`, plain `conv_1x1` and `conv_3x3`, and, in the backbone only, `skip` (a strided 1 x 1
convolution where shapes differ).
Screening (strategies/hitdet.py) keeps a few ops per component out of this vocabulary; the joint search then
searches each component over what it kept.

The detector is a one-stage, anchor-free FCOS-style one (the paper's is Faster R-CNN; see
nasplat/tasks/detection.py for the targets): a stride-2 stem and `stages` of searchable blocks, the first of
each stage strided, the last three stages' outputs (C3, C4, C5 at strides 8, 16, 32) feeding an FPN-like neck
of 3 lateral slots (C_i -> F channels) and a top-down path of nearest upsampling and sums, then 3 fused slots
(F -> F); a head shared by the three levels of `head_layers` slots and a 3 x 3 predictor of K class logits, 4
box distances and a centerness logit per location. Slots are named b0.. (backbone), n0..n2 (neck laterals),
n3..n5 (neck fused) and h0.. (head).

`fixed` architectures: `space.fpn(backbone=...)` gives a backbone with the plain FPN neck (1 x 1 laterals,
3 x 3 fused) and a 3 x 3 convolution head, the paper's baseline of a searched backbone under a fixed neck and
head. Costs are fvcore MACs at the target, 3 x 512 x 512 by default; the supernet's expected cost is the sum
of its slots' softmax-weighted op costs, each op counted once standalone at its slot's shape.
"""
from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nasplat.arch import Arch
from nasplat.cost import count_costs
from nasplat.errors import UserError
from nasplat.registry import register_space
from nasplat.space import Choice, SearchSpace, Target
from nasplat.tasks.detection import Detector

OPS = ("skip", "conv_1x1", "conv_3x3",
       "ir_k3_e1", "ir_k3_e3", "ir_k3_e6", "ir_k5_e1", "ir_k5_e3", "ir_k5_e6", "ir_k7_e6",
       "ir_k3_e3_d2", "ir_k3_e6_d2", "ir_k3_e6_d3", "ir_k5_e6_d2", "ir_k5_e6_d3",
       "sd_k3_d1", "sd_k3_d2", "sd_k3_d3", "sd_k5_d1", "sd_k5_d2", "sd_k5_d3")
COMPONENTS = ("backbone", "neck", "head")
# what each component's slots choose from: as released, only the backbone's vocabulary has skip (a neck or
# head position has to compute something; given skip, the DARTS-style search collapsed the head into no layers)
COMPONENT_OPS = {"backbone": OPS, "neck": tuple(op for op in OPS if op != "skip"),
                 "head": tuple(op for op in OPS if op != "skip")}
PREFIX = {"b": "backbone", "n": "neck", "h": "head"}
LEVELS = 3  # C3..C5 / P3..P5
FPN_OPS = {"lateral": "conv_1x1", "fused": "conv_3x3", "head": "conv_3x3"}
SHRINK = 8  # op costs are counted at sides this many times smaller (see _op_costs)
DEFAULT_BLOCK = "ir_k3_e3"  # the backbone block when a backbone is held fixed (screening the neck or head)
_MB = re.compile(r"ir_k(\d)_e(\d)(?:_d(\d))?$")
_SD = re.compile(r"sd_k(\d)_d(\d)$")


# -- operations -----------------------------------------------------------------------------------------------

def _conv_bn(c_in: int, c_out: int, kernel: int, *, stride: int = 1, dilation: int = 1, groups: int = 1,
             act: bool = True) -> list[nn.Module]:
    pad = dilation * (kernel - 1) // 2
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, kernel, stride, pad, dilation=dilation, groups=groups,
                                         bias=False), nn.BatchNorm2d(c_out)]
    return layers + [nn.ReLU(inplace=True)] if act else layers


class Block(nn.Module):
    """An op's layers, with the identity added back when input and output shapes match (`residual`)."""

    def __init__(self, layers: Sequence[nn.Module], *, residual: bool):
        super().__init__()
        self.body = nn.Sequential(*layers)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + x if self.residual else self.body(x)


def make_op(op: str, c_in: int, c_out: int, stride: int) -> nn.Module:
    """The standalone module of `op` from c_in to c_out channels at `stride` (1 or 2)."""
    same = c_in == c_out and stride == 1
    if op == "skip":
        return nn.Identity() if same else Block(_conv_bn(c_in, c_out, 1, stride=stride, act=False), residual=False)
    if op == "conv_1x1":
        return Block(_conv_bn(c_in, c_out, 1, stride=stride, act=False), residual=False)
    if op == "conv_3x3":
        return Block(_conv_bn(c_in, c_out, 3, stride=stride), residual=False)
    if match := _MB.match(op):
        k, e, d = int(match[1]), int(match[2]), int(match[3] or 1)
        hidden = c_in * e
        expand = _conv_bn(c_in, hidden, 1) if e > 1 else []
        layers = [*expand, *_conv_bn(hidden, hidden, k, stride=stride, dilation=d, groups=hidden),
                  *_conv_bn(hidden, c_out, 1, act=False)]
        return Block(layers, residual=same)
    if match := _SD.match(op):
        k, d = int(match[1]), int(match[2])
        layers = [*_conv_bn(c_in, c_in, k, stride=stride, dilation=d, groups=c_in), *_conv_bn(c_in, c_out, 1, act=False)]
        return Block(layers, residual=same)
    raise UserError(f"unknown hitdet op {op!r}; the ops are {', '.join(OPS)}")


# -- the detector's layout ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SlotShape:
    """Where a slot sits: its channels in and out, its stride, and its input side at the target resolution
    (for the head, the sides of the three levels it runs on)."""

    c_in: int
    c_out: int
    stride: int
    sides: tuple[int, ...]


@dataclass(frozen=True)
class Plan:
    stem: int
    stages: tuple[tuple[int, int], ...]  # (channels, blocks) per stage, each stage halving the resolution
    neck: int
    head_layers: int
    resolution: int

    @cached_property
    def slots(self) -> dict[str, SlotShape]:
        shapes: dict[str, SlotShape] = {}
        c, side, b = self.stem, self.resolution // 2, 0
        outputs: list[tuple[int, int]] = []
        for channels, blocks in self.stages:
            for i in range(blocks):
                stride = 2 if i == 0 else 1
                shapes[f"b{b}"] = SlotShape(c, channels, stride, (side,))
                c, side, b = channels, side // stride, b + 1
            outputs.append((c, side))
        levels = outputs[-LEVELS:]
        for i, (channels, level_side) in enumerate(levels):
            shapes[f"n{i}"] = SlotShape(channels, self.neck, 1, (level_side,))
        for i, (_, level_side) in enumerate(levels):
            shapes[f"n{LEVELS + i}"] = SlotShape(self.neck, self.neck, 1, (level_side,))
        for i in range(self.head_layers):
            shapes[f"h{i}"] = SlotShape(self.neck, self.neck, 1, tuple(s for _, s in levels))
        return shapes

    def component(self, component: str) -> tuple[str, ...]:
        return tuple(s for s in self.slots if PREFIX[s[0]] == component)


def fpn_ops(plan: Plan, backbone: Mapping[str, str] | None = None) -> dict[str, str]:
    ops = {s: (backbone or {}).get(s, DEFAULT_BLOCK) for s in plan.component("backbone")}
    ops |= {f"n{i}": FPN_OPS["lateral"] for i in range(LEVELS)}
    ops |= {f"n{LEVELS + i}": FPN_OPS["fused"] for i in range(LEVELS)}
    return ops | {s: FPN_OPS["head"] for s in plan.component("head")}


def component_of(slot: str) -> str:
    return PREFIX[slot[0]]


class _Detector(nn.Module):
    """The macro structure; `make(slot, shape)` builds each slot's module, `run(slot, module, x)` runs it."""

    def __init__(self, plan: Plan, classes: int, make: Callable[[str, SlotShape], nn.Module]):
        super().__init__()
        self.plan = plan
        self.stem = nn.Sequential(*_conv_bn(3, plan.stem, 3, stride=2))
        self.slot = nn.ModuleDict({name: make(name, shape) for name, shape in plan.slots.items()})
        self.predictor = nn.Conv2d(plan.neck, classes + 5, 3, padding=1)
        self.classes = classes
        self.blocks = plan.component("backbone")
        stage_ends, b = [], 0
        for _, blocks in plan.stages:
            b += blocks
            stage_ends.append(f"b{b - 1}")
        self.taps = tuple(stage_ends[-LEVELS:])
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Class logits start at a prior of 0.01 (FCOS, RetinaNet), so the many background locations do not
        swamp the first steps' focal loss."""
        nn.init.normal_(self.predictor.weight, std=0.01)
        nn.init.zeros_(self.predictor.bias)
        nn.init.constant_(self.predictor.bias[:self.classes], -4.595)  # log(0.01 / 0.99)

    def run(self, slot: str, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return module(x)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.stem(x)
        taps = []
        for name in self.blocks:
            x = self.run(name, self.slot[name], x)
            if name in self.taps:
                taps.append(x)
        lateral = [self.run(f"n{i}", self.slot[f"n{i}"], c) for i, c in enumerate(taps)]
        for i in range(LEVELS - 2, -1, -1):  # top-down: each level adds the coarser one, upsampled
            lateral[i] = lateral[i] + F.interpolate(lateral[i + 1], size=lateral[i].shape[-2:], mode="nearest")
        outputs = []
        for i, p in enumerate(lateral):
            p = self.run(f"n{LEVELS + i}", self.slot[f"n{LEVELS + i}"], p)
            for j in range(self.plan.head_layers):
                p = self.run(f"h{j}", self.slot[f"h{j}"], p)
            outputs.append(self.predictor(p))
        return tuple(outputs)


class Network(_Detector):
    """The standalone detector of an Arch: level i of its output is N x (K + 5) x h_i x w_i, finest first."""

    def __init__(self, ops: Mapping[str, str], *, plan: Plan, classes: int):
        super().__init__(plan, classes, lambda slot, s: make_op(ops[slot], s.c_in, s.c_out, s.stride))


class MixedOp(nn.Module):
    """The softmax-weighted sum of a slot's candidate ops."""

    def __init__(self, candidates: Sequence[str], shape: SlotShape):
        super().__init__()
        self.candidates = tuple(candidates)
        self.ops = nn.ModuleList(make_op(op, shape.c_in, shape.c_out, shape.stride) for op in candidates)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return sum(w * op(x) for w, op in zip(weights, self.ops))


class Supernet(_Detector):
    """Every slot mixes its candidates (a slot with one candidate is that op, unweighted); an architecture
    parameter vector per searched slot, `alphas()[slot]`."""

    def __init__(self, space: HitDet, candidates: Mapping[str, Sequence[str]]):
        self.candidates = {slot: tuple(candidates[slot]) for slot in space.plan.slots}
        super().__init__(space.plan, space.classes,
                         lambda slot, s: MixedOp(self.candidates[slot], s) if len(self.candidates[slot]) > 1
                         else make_op(self.candidates[slot][0], s.c_in, s.c_out, s.stride))
        self.space = space
        self.searched_slots = tuple(s for s, c in self.candidates.items() if len(c) > 1)
        self._alphas = nn.ParameterDict({s: nn.Parameter(1e-3 * torch.randn(len(self.candidates[s])))
                                         for s in self.searched_slots})
        costs = space.op_costs
        self._fixed = costs["fixed"] + sum(costs[s][c[0]] for s, c in self.candidates.items() if len(c) == 1)
        self._cost = {s: torch.tensor([costs[s][op] for op in self.candidates[s]], dtype=torch.float64)
                      for s in self.searched_slots}

    def run(self, slot: str, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if slot in self._alphas:
            return module(x, F.softmax(self._alphas[slot], dim=-1))
        return module(x)

    def alphas(self) -> dict[str, nn.Parameter]:
        return dict(self._alphas)

    def arch_parameters(self) -> list[nn.Parameter]:
        return list(self._alphas.values())

    def weight_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if not n.startswith("_alphas.")]

    def op_weights(self) -> dict[str, torch.Tensor]:
        """Per searched slot, the softmax weights of its candidates (in `candidates[slot]` order)."""
        return {s: F.softmax(a.detach(), dim=-1) for s, a in self._alphas.items()}

    def expected_cost(self) -> torch.Tensor:
        """MACs at the target expected under the softmax weights: differentiable in the alphas."""
        total = torch.tensor(self._fixed, dtype=torch.float64)
        for s, alpha in self._alphas.items():
            total = total + (F.softmax(alpha, dim=-1).double() * self._cost[s]).sum()
        return total.float()

    def group_norms(self, component: str) -> dict[str, torch.Tensor]:
        """Per candidate op of `component`, the l2 norm over the component's searched slots of its softmax
        weights: the groups of the screening's group-sparsity penalty (one group per op)."""
        slots = [s for s in self.searched_slots if component_of(s) == component]
        if not slots:
            return {}
        ops = self.candidates[slots[0]]
        weights = torch.stack([F.softmax(self._alphas[s], dim=-1) for s in slots])  # slots x ops
        return dict(zip(ops, weights.norm(dim=0)))

    def derive(self, *, max_skip: int | None = None, limit: float | None = None,
               fits: Callable[[dict[str, str]], bool] | None = None) -> tuple[dict[str, str], dict]:
        """The strongest candidate per slot (the argmax of its alphas; fixed slots keep their op). Over a MAC
        `limit`, or while `fits(chosen)` is false (a measured latency, say), slots are cheapened one swap at a
        time, each time the swap to a candidate of fewer MACs that loses the least softmax weight. `max_skip`
        (a cell-space option) does not apply."""
        costs = self.space.op_costs
        weights = self.op_weights()
        chosen = {s: c[0] for s, c in self.candidates.items()}
        for s, w in weights.items():
            chosen[s] = self.candidates[s][int(w.argmax())]

        def over() -> bool:
            return (limit is not None and self.space.cost(self.space.arch(chosen)) > limit) or (
                fits is not None and not fits(chosen))

        cheapened = 0
        while over():
            swaps = [(float(weights[s][i]) - float(weights[s][self.candidates[s].index(chosen[s])]), s, op)
                     for s in weights for i, op in enumerate(self.candidates[s])
                     if costs[s][op] < costs[s][chosen[s]]]
            if not swaps:
                break
            _, slot, op = max(swaps)
            chosen[slot] = op
            cheapened += 1
        return chosen, ({"cheapened": cheapened} if cheapened else {})


# -- the space ------------------------------------------------------------------------------------------------

@register_space("hitdet")
class HitDet(SearchSpace):
    """Hit-Detector's searched backbone, neck and head (see the module docstring).

    Options: `stem` channels (16), `stages` as "channels:blocks,..." (24:2,40:2,80:2,112:2: strides 4 to 32),
    `neck` channels (96), `head_layers` (2), `resolution` of the target (512) and `classes` (5, the generated
    detection set's; the detection task's own class count is what the proxy trains with).
    """

    default_task = "detection"
    component_ops = COMPONENT_OPS  # what strategies/hitdet.py screens (its DetectorSpace protocol)

    def __init__(self, *, stem: int = 16, stages: str | Sequence[Sequence[int]] = "24:2,40:2,80:2,112:2",
                 neck: int = 96, head_layers: int = 2, resolution: int = 512, classes: int = 5):
        parsed = _parse_stages(stages)
        if len(parsed) < LEVELS:
            raise UserError(f"stages={stages!r}: the neck reads the last {LEVELS} stages; give at least {LEVELS}")
        if resolution % 2 ** (len(parsed) + 1):
            raise UserError(f"resolution={resolution} must be a multiple of {2 ** (len(parsed) + 1)}, the "
                            f"coarsest stride of {len(parsed)} stages")
        if min(stem, neck, head_layers, classes) < 1:
            raise UserError("stem, neck, head_layers and classes must be at least 1")
        super().__init__(stem=stem, stages=stages, neck=neck, head_layers=head_layers, resolution=resolution,
                         classes=classes)
        self.plan = Plan(stem, parsed, neck, head_layers, resolution)
        self.classes = classes
        self.resolution = resolution

    def parameters(self) -> dict[str, Choice]:
        return {slot: Choice(COMPONENT_OPS[component_of(slot)]) for slot in self.plan.slots}

    def build(self, arch: Arch, *, num_classes: int | None = None) -> nn.Module:
        self.validate(arch)
        return Network(self.searched(arch), plan=self.plan, classes=num_classes or self.classes)

    def target(self, arch: Arch) -> Target:
        return Target((1, 3, self.resolution, self.resolution), self.classes)

    def smallest(self, *, candidates: Mapping[str, Sequence[str]] | None = None) -> Arch:
        """The cheapest detector, over every op or, with `candidates` (per slot, as `candidates()` gives), over
        those."""
        pool = candidates or {slot: COMPONENT_OPS[component_of(slot)] for slot in self.plan.slots}
        return self.arch({slot: min(ops, key=lambda op, s=slot: self.op_costs[s][op]) for slot, ops in pool.items()})

    def deployable(self, network: nn.Module, *, classes: int) -> nn.Module:
        """`network` (built for `classes`) with the detection task's decoding and NMS at their default
        thresholds: what the TorchScript export holds, returning boxes in pixels, scores and labels."""
        return Detector(network, classes=classes)

    def fpn(self, backbone: Mapping[str, str] | None = None) -> dict[str, str]:
        """The slots of the fixed baseline: `backbone` (default all `DEFAULT_BLOCK`), the plain FPN neck and
        a 3 x 3 convolution head."""
        return fpn_ops(self.plan, backbone)

    def supernet(self, *, candidates: Mapping[str, Sequence[str]] | None = None, **_: Any) -> Supernet:
        """The weight-sharing detector over `candidates` (per slot; every op everywhere by default). Options of
        the cell supernets (partial channels, edge normalisation) do not apply and are ignored."""
        return Supernet(self, candidates or {s: COMPONENT_OPS[component_of(s)] for s in self.plan.slots})

    def component_slots(self, component: str) -> tuple[str, ...]:
        return self.plan.component(component)

    def candidates(self, ops: Mapping[str, Sequence[str]]) -> dict[str, tuple[str, ...]]:
        """Per slot, the ops of its component in `ops` (component -> ops); a component not in `ops` is fixed at
        the FPN baseline's op."""
        for component, chosen in ops.items():
            if component not in COMPONENTS:
                raise UserError(f"unknown hitdet component {component!r}; use {', '.join(COMPONENTS)}")
            unknown = sorted(set(chosen) - set(COMPONENT_OPS[component]))
            if unknown or not chosen:
                raise UserError(f"{component} ops {', '.join(unknown) or '(none)'}: choose among "
                                f"{', '.join(COMPONENT_OPS[component])}")
        fixed = self.fpn()
        return {s: tuple(ops[component_of(s)]) if component_of(s) in ops else (fixed[s],) for s in self.plan.slots}

    @property
    def op_costs(self) -> dict[str, Any]:
        """MACs at the target of every op in every slot, and "fixed": the stem and the predictor, which no
        architecture changes. Counted once per plan and class count in a process (a few hundred fvcore
        counts, some seconds)."""
        return _op_costs(self.plan, self.classes)

    def cost(self, arch: Arch) -> float:
        """MACs at the target from the per-op table (equal to fvcore on the whole network: the parts add up)."""
        return self.op_costs["fixed"] + sum(self.op_costs[s][op] for s, op in self.searched(arch).items())

    def describe(self, arch: Arch) -> str:
        ops = self.searched(arch)
        return " | ".join(f"{c}: " + " ".join(ops[s] for s in self.plan.component(c)) for c in COMPONENTS)


@functools.cache
def _op_costs(plan: Plan, classes: int) -> dict[str, Any]:
    measured: dict[tuple, float] = {}
    costs: dict[str, Any] = {}
    for slot, shape in plan.slots.items():
        costs[slot] = {}
        for op in OPS:
            total = 0.0
            for side in shape.sides:
                # a convolution's MACs grow with the output's area, and a "same"-padded op keeps the side (or
                # halves an even one): counted at a side `shrink` times smaller, exactly, then scaled back
                shrink = math.gcd(side // 2, SHRINK)
                key = (op, shape.c_in, shape.c_out, shape.stride, side // shrink)
                if key not in measured:
                    measured[key] = count_costs(make_op(op, shape.c_in, shape.c_out, shape.stride),
                                                (1, shape.c_in, side // shrink, side // shrink))["macs"]
                total += measured[key] * shrink ** 2
            costs[slot][op] = total
    reference = fpn_ops(plan)
    whole = count_costs(Network(reference, plan=plan, classes=classes),
                        (1, 3, plan.resolution, plan.resolution))["macs"]
    costs["fixed"] = whole - sum(costs[s][op] for s, op in reference.items())
    return costs


def _parse_stages(stages: str | Sequence[Sequence[int]]) -> tuple[tuple[int, int], ...]:
    try:
        if isinstance(stages, str):
            parsed = tuple(tuple(int(v) for v in part.split(":")) for part in stages.split(","))
        else:
            parsed = tuple(tuple(int(v) for v in part) for part in stages)
        if not parsed or any(len(p) != 2 or min(p) < 1 for p in parsed):
            raise ValueError
    except (TypeError, ValueError):
        raise UserError(f"stages={stages!r} is not a list of channels:blocks pairs (e.g. 24:2,32:2,64:2,96:2)") \
            from None
    return parsed
