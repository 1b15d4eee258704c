"""TinyNet: EfficientNet-B0 twisted in resolution r, depth d and width w (Han et al., NeurIPS 2020).

The space searches r and d; the width w is derived: `complete()` solves for the largest w whose model
still meets the MACs/params budget (the paper's "tiny formula" solves width from r, d and the FLOPs
constraint, since width is what matters least for tiny nets).

The network is built here in plain PyTorch from B0's timm-style block strings, under one of two scaling
conventions:

- "tinynet": depth `max(1, round(repeats * d))` (Python's round-half-even), stem fixed at 32 channels,
  head `max(1280, make_divisible(1280 * w))`, as in TinyNet's released code.
- "efficientnet": depth `ceil(repeats * d)`, stem `make_divisible(32 * w)`, head
  `make_divisible(1280 * w)`, as in EfficientNet's compound scaling (used for the B^-k baseline).
"""
from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
from torch import nn

from nasplat.arch import Arch
from nasplat.constraints import Constraint
from nasplat.cost import CostModel, count_macs, count_params, measure
from nasplat.cost.lut import Unit
from nasplat.errors import UserError
from nasplat.registry import register_space
from nasplat.space import FloatRange, Param, SearchSpace, Target

Convention = Literal["tinynet", "efficientnet"]

B0_BLOCKS = ("ds_r1_k3_s1_e1_c16_se0.25", "ir_r2_k3_s2_e6_c24_se0.25", "ir_r2_k5_s2_e6_c40_se0.25",
             "ir_r3_k3_s2_e6_c80_se0.25", "ir_r3_k5_s1_e6_c112_se0.25", "ir_r4_k5_s2_e6_c192_se0.25",
             "ir_r1_k3_s1_e6_c320_se0.25")
B0_STEM = 32
B0_HEAD = 1280
B0_RESOLUTION = 224
DROPOUT = 0.2

# the searched ranges, and the range the solved width is kept in
R_RANGE = FloatRange(0.3, 1.0)
D_RANGE = FloatRange(0.3, 1.4)
W_RANGE = FloatRange(0.25, 1.2)
DECIMALS = 3  # r, d and w are kept to 3 decimals, so Arch keys stay few and readable

COUNT_METRICS = frozenset({"macs", "params"})  # the costs that grow with w, so the solve applies to them


def _solved_metrics(costs: CostModel | None) -> frozenset[str]:
    """The constrained metrics w is solved for: MACs and params, and latency where the cost model has it."""
    return costs.metrics if costs is not None else COUNT_METRICS


def make_divisible(value: float, divisor: int = 8, *, min_value: int | None = None,
                   round_limit: float = 0.9) -> int:
    """Nearest multiple of `divisor` (at least `min_value`), bumped up when rounding lost over 10%."""
    min_value = divisor if min_value is None else min_value
    new = max(min_value, int(value + divisor / 2) // divisor * divisor)
    return new + divisor if new < round_limit * value else new


def scale_depth(repeats: int, d: float, *, depth_trunc: Literal["round", "ceil"]) -> int:
    """Blocks in a stage of `repeats` blocks at depth multiplier d (round is Python's half-to-even)."""
    if depth_trunc == "round":
        return max(1, round(repeats * d))
    if depth_trunc == "ceil":
        return max(1, math.ceil(repeats * d))
    raise UserError(f"depth_trunc must be 'round' or 'ceil', not {depth_trunc!r}")


_TOKEN = re.compile(r"([a-z]+)(\d+(?:\.\d+)?)")


@dataclass(frozen=True)
class Stage:
    """One stage of identical blocks, written timm-style as `ir_r2_k3_s2_e6_c24_se0.25`.

    `kind` is "ds" (depthwise-separable: no expansion conv) or "ir" (inverted residual); the stride
    applies to the first block only; `se` is the squeeze ratio to the block's INPUT channels.
    """

    kind: str
    repeats: int
    kernel: int
    stride: int
    expand: int
    channels: int
    se: float

    @classmethod
    def parse(cls, text: str) -> Stage:
        kind, *tokens = text.split("_")
        matches = [_TOKEN.fullmatch(t) for t in tokens]
        fields = {m[1]: m[2] for m in matches if m}
        names = {"r": "repeats", "k": "kernel", "s": "stride", "e": "expand", "c": "channels"}
        if kind not in ("ds", "ir") or not all(matches) or sorted(fields) != sorted([*names, "se"]):
            raise UserError(f"cannot read block string {text!r}; expected e.g. ir_r2_k3_s2_e6_c24_se0.25")
        return cls(kind, se=float(fields["se"]), **{name: int(fields[key]) for key, name in names.items()})

    def __str__(self) -> str:
        return (f"{self.kind}_r{self.repeats}_k{self.kernel}_s{self.stride}_e{self.expand}"
                f"_c{self.channels}_se{self.se:g}")


B0_STAGES = tuple(Stage.parse(b) for b in B0_BLOCKS)


@dataclass(frozen=True)
class Layout:
    """The widths and depths of a scaled network: stem channels, stages, head features."""

    stem: int
    stages: tuple[Stage, ...]
    head: int

    def __str__(self) -> str:
        return " ".join(str(s) for s in self.stages)


def scaled_layout(w: float, d: float, *, convention: Convention = "tinynet") -> Layout:
    """B0 scaled to width multiplier w and depth multiplier d under the named convention."""
    if convention not in ("tinynet", "efficientnet"):
        raise UserError(f"convention must be 'tinynet' or 'efficientnet', not {convention!r}")
    tiny = convention == "tinynet"
    trunc: Literal["round", "ceil"] = "round" if tiny else "ceil"
    stages = tuple(replace(s, repeats=scale_depth(s.repeats, d, depth_trunc=trunc),
                           channels=make_divisible(s.channels * w)) for s in B0_STAGES)
    stem = B0_STEM if tiny else make_divisible(B0_STEM * w)
    head = max(B0_HEAD, make_divisible(B0_HEAD * w)) if tiny else make_divisible(B0_HEAD * w)
    return Layout(stem, stages, head)


def layout_macs(layout: Layout, side: int, *, num_classes: int = 1000) -> int:
    """Conv and linear MACs of the network of `layout` on a side x side input, in closed form.

    Only the width solve uses it, to bisect without building models; the cost of the Arch it picks is
    still measured by fvcore on the built model (tests check the two agree exactly).
    """
    def out(h: int, k: int, s: int) -> int:
        return (h + 2 * ((k - 1) // 2) - k) // s + 1

    h = out(side, 3, 2)
    macs, cin = 3 * layout.stem * 9 * h * h, layout.stem
    for stage in layout.stages:
        for i in range(stage.repeats):
            stride = stage.stride if i == 0 else 1
            mid = cin * stage.expand
            squeezed = max(1, int(cin * stage.se))
            h2 = out(h, stage.kernel, stride)
            expand = cin * mid * h * h if stage.kind == "ir" else 0
            macs += expand + mid * stage.kernel ** 2 * h2 * h2 + 2 * mid * squeezed + mid * stage.channels * h2 * h2
            h, cin = h2, stage.channels
    return macs + cin * layout.head * h * h + layout.head * num_classes


class ConvBnAct(nn.Sequential):
    """Conv (no bias, padding (k-1)//2) + BatchNorm, then SiLU unless act=False."""

    def __init__(self, cin: int, cout: int, kernel: int, *, stride: int = 1, groups: int = 1, act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.SiLU() if act else nn.Identity()


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduced: int):
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.act = nn.SiLU()
        self.expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.expand(self.act(self.reduce(scale))))


class MBConv(nn.Module):
    """Expand 1x1 ("ir" only), depthwise kxk, squeeze-excite, project 1x1; residual if shapes allow."""

    def __init__(self, kind: str, cin: int, cout: int, *, kernel: int, stride: int, expand: int, se: float):
        super().__init__()
        mid = cin * expand
        layers: list[nn.Module] = [ConvBnAct(cin, mid, 1)] if kind == "ir" else []
        layers += [ConvBnAct(mid, mid, kernel, stride=stride, groups=mid),
                   SqueezeExcite(mid, max(1, int(cin * se))),
                   ConvBnAct(mid, cout, 1, act=False)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout  # fixed at build time, so tracing sees no branch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return x + out if self.residual else out


class EfficientNet(nn.Module):
    """An EfficientNet-style classifier for a Layout; any input size (global pooling before the head)."""

    def __init__(self, layout: Layout, *, num_classes: int = 1000, dropout: float = DROPOUT, in_channels: int = 3):
        super().__init__()
        self.layout = layout
        self.stem = ConvBnAct(in_channels, layout.stem, 3, stride=2)
        blocks: list[nn.Module] = []
        cin = layout.stem
        for s in layout.stages:
            stage = [MBConv(s.kind, cin if i == 0 else s.channels, s.channels, kernel=s.kernel,
                            stride=s.stride if i == 0 else 1, expand=s.expand, se=s.se) for i in range(s.repeats)]
            blocks.append(nn.Sequential(*stage))
            cin = s.channels
        self.blocks = nn.Sequential(*blocks)
        self.head = ConvBnAct(cin, layout.head, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(layout.head, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        """EfficientNet's initialisation: He-normal (fan-out) convs, uniform(+-1/sqrt(out)) classifier."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.pool(self.forward_features(x)), 1)
        return self.classifier(self.dropout(x))


def build_efficientnet(w: float, d: float, *, convention: Convention = "tinynet", num_classes: int = 1000,
                       dropout: float = DROPOUT) -> EfficientNet:
    """B0 scaled by width w and depth d; resolution is not part of the model (it takes any size)."""
    return EfficientNet(scaled_layout(w, d, convention=convention), num_classes=num_classes, dropout=dropout)


def resolution(r: float) -> int:
    """Input side for resolution multiplier r: int(224 r), floored as in TinyNet's code."""
    return int(B0_RESOLUTION * r)


# --- the network as per-op latency units (nasplat.cost.lut) ---------------------------------------------


class PoolClassifier(nn.Module):
    """EfficientNet's tail as one module: global pool, flatten, dropout, linear (a latency unit)."""

    def __init__(self, features: int, num_classes: int, *, dropout: float = DROPOUT):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(torch.flatten(self.pool(x), 1)))


def _side_after(h: int, kernel: int, stride: int) -> int:
    """Feature-map side after a conv with padding (kernel-1)//2."""
    return (h + 2 * ((kernel - 1) // 2) - kernel) // stride + 1


def _conv_unit(h: int, cin: int, cout: int, kernel: int, stride: int) -> Unit:
    return Unit(f"conv_bn_silu-{h}x{h}x{cin}-o{cout}-k{kernel}-s{stride}", (1, cin, h, h),
                functools.partial(ConvBnAct, cin, cout, kernel, stride=stride))


def _mbconv_unit(stage: Stage, h: int, cin: int, stride: int) -> Unit:
    return Unit(f"mbconv_{stage.kind}-{h}x{h}x{cin}-o{stage.channels}-k{stage.kernel}-s{stride}-e{stage.expand}"
                f"-se{stage.se:g}", (1, cin, h, h),
                functools.partial(MBConv, stage.kind, cin, stage.channels, kernel=stage.kernel, stride=stride,
                                  expand=stage.expand, se=stage.se))


def layout_units(layout: Layout, side: int, *, num_classes: int) -> list[Unit]:
    """The network of `layout` on a side x side input as latency units, in the order it runs them: the stem,
    every MBConv block (a stage's repeated blocks are one key, listed once per block), the head conv, and
    pool + classifier. Chained, the units' modules compute EfficientNet's forward pass."""
    units = [_conv_unit(side, 3, layout.stem, 3, 2)]
    h, cin = _side_after(side, 3, 2), layout.stem
    for stage in layout.stages:
        for i in range(stage.repeats):
            stride = stage.stride if i == 0 else 1
            units.append(_mbconv_unit(stage, h, cin, stride))
            h, cin = _side_after(h, stage.kernel, stride), stage.channels
    units.append(_conv_unit(h, cin, layout.head, 1, 1))
    units.append(Unit(f"pool_linear-{h}x{h}x{layout.head}-o{num_classes}", (1, layout.head, h, h),
                      functools.partial(PoolClassifier, layout.head, num_classes)))
    return units


@functools.cache
def _width_steps() -> tuple[float, ...]:
    """The largest 3-decimal w of each distinct TinyNet channel layout, ascending.

    Channels are a step function of w (make_divisible) and the stem is fixed, so every w of a step
    builds the same model; the width solve bisects over steps instead of over all 951 values of w.
    """
    scale = 10**DECIMALS
    tops: dict[tuple[int, ...], float] = {}
    for k in range(round(W_RANGE.low * scale), round(W_RANGE.high * scale) + 1):
        layout = scaled_layout(k / scale, 1.0)
        tops[(layout.head, *(s.channels for s in layout.stages))] = k / scale  # later k overwrite: the top
    return tuple(sorted(tops.values()))


@register_space("tinynet")
class TinyNetSpace(SearchSpace):
    """r (resolution) and d (depth) searched; w (width) solved so the model lands just under the budget.

    Costs are measured at the target: 3 x int(224 r) x int(224 r) input, `num_classes` outputs.
    """

    def __init__(self, *, num_classes: int = 1000):
        super().__init__(num_classes=num_classes)

    @property
    def num_classes(self) -> int:
        return int(self.options["num_classes"])

    def parameters(self) -> dict[str, Param]:
        return {"r": R_RANGE, "d": D_RANGE}

    def validate(self, arch: Arch) -> None:
        super().validate(arch)
        if "w" not in arch:
            raise UserError("architecture lacks the width 'w' (complete() solves it)")
        if not W_RANGE.contains(arch["w"]):
            raise UserError(f"parameter 'w'={arch['w']!r} lies outside {W_RANGE}")

    def complete(self, params: Mapping[str, Any], *, constraints: Sequence[Constraint] = (),
                 costs: CostModel | None = None) -> Arch:
        """Rounds r and d to 3 decimals and solves w for the constraints on costs that grow with it: MACs,
        params, and latency where `costs` provides it (w=1 without any).

        A 'w' in `params` is ignored: w is derived here. To evaluate a fixed (r, d, w), use `arch()`.
        """
        r, d = round(float(params["r"]), DECIMALS), round(float(params["d"]), DECIMALS)
        counted = [c for c in constraints if c.metric in _solved_metrics(costs)]
        w = self.solve_width(r, d, constraints=counted, costs=costs) if counted else 1.0
        return self.arch({"r": r, "d": d, "w": w})

    def solve_width(self, r: float, d: float, *, constraints: Sequence[Constraint],
                    costs: CostModel | None = None) -> float:
        """The largest 3-decimal w in [0.25, 1.2] whose model meets every constraint on MACs, params and
        (with a cost model that has it) latency.

        These costs only grow with w, so this bisects over w's channel steps: MACs in closed form, the others
        by measuring (fvcore's params, the cost model's latency; both cached by Arch key, so the runner's
        own measure is free), then checks the chosen Arch by measuring. When even w=0.25 breaks the budget,
        returns 0.25 and the runner rejects the Arch as infeasible.
        """
        counted = [c for c in constraints if c.metric in _solved_metrics(costs)]
        side = resolution(r)
        cost_of = costs or (lambda space, arch: measure(space, arch))

        def fits_closed_form(w: float) -> bool:  # microseconds: MACs from the layout, the rest by measuring
            macs = layout_macs(scaled_layout(w, d), side, num_classes=self.num_classes)
            return all(c.limit >= macs for c in counted if c.metric == "macs") and (
                all(c.metric == "macs" for c in counted) or fits_measured(w))

        def fits_measured(w: float) -> bool:
            measured = cost_of(self, self.arch({"r": r, "d": d, "w": w}))
            return all(c.holds(measured) for c in counted)

        steps = _width_steps()
        lo, hi = -1, len(steps)  # invariant: steps[lo] fits (or lo == -1), steps[hi] breaks (or hi == len)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if fits_closed_form(steps[mid]):
                lo = mid
            else:
                hi = mid
        while lo >= 0 and not fits_measured(steps[lo]):  # the measurement has the last word
            lo -= 1
        return steps[lo] if lo >= 0 else W_RANGE.low

    def target(self, arch: Arch) -> Target:
        side = resolution(arch["r"])
        return Target((1, 3, side, side), self.num_classes)

    def build(self, arch: Arch, *, num_classes: int | None = None) -> nn.Module:
        self.validate(arch)
        return build_efficientnet(arch["w"], arch["d"], num_classes=num_classes or self.num_classes)

    def proxy_scale(self, arch: Arch) -> float:
        return float(arch["r"])

    def latency_units(self, arch: Arch) -> list[Unit]:
        """The stem, each MBConv block, the head conv and pool + classifier, at the target input side."""
        self.validate(arch)
        return layout_units(scaled_layout(arch["w"], arch["d"]), resolution(arch["r"]), num_classes=self.num_classes)

    def latency_unit_space(self) -> Iterator[Unit]:
        """Every distinct unit of the space: each channel layout (w's steps) at each input side int(224 r).

        Depth only sets how many repeated blocks (cout -> cout, stride 1) a stage has, so the deepest layout
        (d = 1.4) holds every block of every shallower one. Ordered by layout, then input side.
        """
        seen: set[str] = set()
        sides = range(resolution(R_RANGE.low), resolution(R_RANGE.high) + 1)
        for w in _width_steps():
            layout = scaled_layout(w, D_RANGE.high)
            for side in sides:
                for unit in layout_units(layout, side, num_classes=self.num_classes):
                    if unit.key not in seen:
                        seen.add(unit.key)
                        yield unit

    def describe(self, arch: Arch) -> str:
        """e.g. `r=0.475 (106px) d=0.6 w=0.51 | ds_r1_k3_s1_e1_c8_se0.25 ir_r1_k3_s2_e6_c16_se0.25 ...`"""
        r, d, w = arch["r"], arch["d"], arch["w"]
        return f"r={r:g} ({resolution(r)}px) d={d:g} w={w:g} | {scaled_layout(w, d)}"

    def smallest(self) -> Arch:
        return self.arch({"r": R_RANGE.low, "d": D_RANGE.low, "w": W_RANGE.low})


# --- EfficientNet's inverse compound scaling, the baseline TinyNet is compared with ---------------------

ALPHA, BETA, GAMMA = 1.2, 1.1, 1.15  # EfficientNet's depth, width and resolution bases


@dataclass(frozen=True)
class CompoundScaled:
    """EfficientNet-B0 compound-scaled by phi (d = 1.2^phi, w = 1.1^phi, r = 1.15^phi), measured."""

    phi: float
    macs: float
    params: int

    @property
    def r(self) -> float:
        return GAMMA ** self.phi

    @property
    def d(self) -> float:
        return ALPHA ** self.phi

    @property
    def w(self) -> float:
        return BETA ** self.phi

    @property
    def resolution(self) -> int:
        return resolution(self.r)

    @property
    def layout(self) -> Layout:
        return scaled_layout(self.w, self.d, convention="efficientnet")

    def build(self, *, num_classes: int = 1000) -> EfficientNet:
        return EfficientNet(self.layout, num_classes=num_classes)


def compound_scaled(phi: float) -> CompoundScaled:
    """B0 at compound coefficient phi, with MACs measured at int(224 r) and 1000 classes."""
    model = EfficientNet(scaled_layout(BETA ** phi, ALPHA ** phi, convention="efficientnet"))
    side = resolution(GAMMA ** phi)
    return CompoundScaled(phi, count_macs(model, (1, 3, side, side)), count_params(model))


def inverse_compound_baseline(budget_macs: float, *, phi_range: tuple[float, float] = (-10.0, 3.0)) -> CompoundScaled:
    """The largest phi (3 decimals, in [low, high)) whose compound-scaled B0 keeps MACs <= budget_macs.

    This is the "inversed giant formula" rule as nasplat states it (EfficientNet convention: ceil depth,
    scaled stem and head). The paper's exact construction of its B^-k baselines is unconfirmed: with
    these roundings phi = -4 gives about 40M MACs, not the paper's 24M, so phi is solved for the budget
    instead. MACs grow with phi in steps (a block, 8 channels or one pixel of input at a time), so the
    result need not reach 0.9 x budget: at 24M, phi = -5.989 (96px) gives 21.5M, and phi = -5.988 (97px)
    already 28.2M, because an odd input side rounds every stride-2 feature map up (49, 25, 13, 7, 4
    instead of 48, 24, 12, 6, 3). Check `macs`.
    """
    lo, hi = (round(p * 1000) for p in phi_range)
    low = compound_scaled(lo / 1000)
    if low.macs > budget_macs:
        raise UserError(f"budget {budget_macs:.4g} MACs is below B0 at phi={lo / 1000} ({low.macs:.4g})")
    best = low
    while hi - lo > 1:  # invariant: phi=lo/1000 fits; phi=hi/1000 breaks or is the range's (open) top
        mid = (lo + hi) // 2
        candidate = compound_scaled(mid / 1000)
        if candidate.macs <= budget_macs:
            lo, best = mid, candidate
        else:
            hi = mid
    return best
