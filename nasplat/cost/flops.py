"""MACs (the papers' "FLOPs", counted by fvcore), binary operations and parameters, at the target shape.

Convention: conv, linear and matmul multiply-accumulates only (fvcore's default total also counts batch
norm, pooling and upsampling), model in eval mode, batch 1, at the target input shape. Results are cached
by Arch key, since strategies revisit architectures and TinyNet's width solve measures many candidates.

Binarized convolutions (`nasplat.binary.BinaryConv2d`) do binary operations (BOPs) instead of MACs. For a
network that has them, "macs" follows the binary-network papers: full-precision MACs + BOPs/64 (a 64-bit
word holds 64 binary operations), and the counts add `fp_macs`, `bops` and `size_bits` (the model size: one
bit per binary weight plus a 32-bit scale per binary layer, 32 bits per other parameter).
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


BOPS_PER_MAC = 64  # binary operations that cost as much as one full-precision MAC (one 64-bit word)


def count_costs(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, float]:
    """MACs and params of one forward pass on zeros of `input_shape`, in eval mode; for a model with
    binarized convolutions also `fp_macs`, `bops` and `size_bits`, with `macs` = fp_macs + bops/64."""
    from fvcore.nn import FlopCountAnalysis

    from ..binary import BinaryConv2d

    logging.getLogger("fvcore").setLevel(logging.ERROR)  # it warns about every uncounted op
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            analysis = FlopCountAnalysis(model, torch.zeros(input_shape))
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            by_op = analysis.by_operator()
            binary = {name: m for name, m in model.named_modules() if isinstance(m, BinaryConv2d) and m.binary}
            per_module = analysis.by_module_and_operator() if binary else {}
    finally:
        model.train(was_training)
    total = float(sum(v for op, v in by_op.items() if op in COUNTED_OPS))
    params = count_params(model)
    if not binary:
        return {"macs": total, "params": float(params)}
    bops = float(sum(per_module.get(name, {}).get("conv", 0) for name in binary))
    binary_weights = sum(m.weight.numel() for m in binary.values())
    size_bits = 32 * (params - binary_weights) + binary_weights + 32 * len(binary)
    return {"macs": total - bops + bops / BOPS_PER_MAC, "params": float(params), "fp_macs": total - bops,
            "bops": bops, "size_bits": float(size_bits)}


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> float:
    """MACs of one forward pass (full-precision MACs + BOPs/64 where convolutions are binarized)."""
    return count_costs(model, input_shape)["macs"]


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def measure(space: SearchSpace, arch: Arch) -> dict[str, float]:
    """The counts of `count_costs` for `arch` built at its target configuration (cached by Arch key)."""
    key = (space.name, repr(sorted(space.options.items())), arch.key())
    if key not in _CACHE:
        target = space.target(arch)
        _CACHE[key] = count_costs(space.build(arch, num_classes=target.num_classes), target.input_shape)
    return dict(_CACHE[key])
