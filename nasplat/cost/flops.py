"""MACs (the papers' "FLOPs", counted by fvcore) and parameters, measured at the target shape.

Convention: conv, linear and matmul multiply-accumulates only (fvcore's default total also counts batch
norm, pooling and upsampling), model in eval mode, batch 1, at the target input shape. Results are cached
by Arch key, since strategies revisit architectures and TinyNet's width solve measures many candidates.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from ..arch import Arch
    from ..space import SearchSpace

# fvcore's operator names for the multiply-accumulate ops that the convention counts
COUNTED_OPS = frozenset({"conv", "linear", "addmm", "matmul", "bmm", "einsum", "mm"})

_CACHE: dict[tuple[str, str, str], dict[str, float]] = {}


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> float:
    """Conv, linear and matmul MACs of one forward pass on zeros of `input_shape`, in eval mode."""
    from fvcore.nn import FlopCountAnalysis

    logging.getLogger("fvcore").setLevel(logging.ERROR)  # it warns about every uncounted op
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            analysis = FlopCountAnalysis(model, torch.zeros(input_shape))
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            by_op = analysis.by_operator()
    finally:
        model.train(was_training)
    return float(sum(v for op, v in by_op.items() if op in COUNTED_OPS))


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def measure(space: SearchSpace, arch: Arch) -> dict[str, float]:
    """MACs and params of `arch` built at its target configuration (cached by Arch key)."""
    key = (space.name, repr(sorted(space.options.items())), arch.key())
    if key not in _CACHE:
        target = space.target(arch)
        model = space.build(arch, num_classes=target.num_classes)
        _CACHE[key] = {"macs": count_macs(model, target.input_shape), "params": float(count_params(model))}
    return dict(_CACHE[key])
