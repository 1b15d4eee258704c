"""A PyTorch model as a file another runtime runs: the ONNX writer, and how closely its outputs must agree.

Below both the deployable bundle (`nasplat.export`) and latency measurement (`nasplat.cost`), which write
ONNX files each for their own purpose; it imports nothing of nasplat.
"""
from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

# max abs difference allowed between an export's outputs and PyTorch's: TOLERANCE for outputs up to 1, scaled by
# the largest output above it and capped at RELATIVE_TOLERANCE of it (see allowed_difference)
TOLERANCE = 1e-4
RELATIVE_TOLERANCE = 1e-3


def allowed_difference(reference: Sequence[torch.Tensor]) -> float:
    """The difference an export may show against PyTorch's `reference` outputs. Scaled by the largest output:
    untrained NAS-Bench-201 cells of skip connections reach 1e3 to 1e7, where float32 alone differs by 2e-4
    and more; and capped by it, since untrained TinyNets output about 1e-13, where 1e-4 would check nothing."""
    scale = max((float(t.abs().max()) for t in reference if t.numel()), default=0.0)
    return min(TOLERANCE * max(1.0, scale), RELATIVE_TOLERANCE * scale)


ONNX_OPSET = 18


def write_onnx(model: nn.Module, path: Path, shape: tuple[int, ...]) -> dict[str, Any]:
    """torch.export-based ("dynamo") export, the supported path since torch 2.9, with a dynamic batch
    axis; a model torch.export cannot capture falls back to the deprecated TorchScript-based exporter.
    Returns how the file was made, for arch.json's "verified"."""
    # a batch of 2: torch.export specialises a dimension of size 1, which then cannot be the dynamic batch axis
    example = (torch.zeros((2, *shape[1:])),)
    with torch.no_grad():
        count = len(leaves(model(*example)))
    outputs = ["output"] if count == 1 else [f"output{i}" for i in range(count)]
    names = {"input_names": ["input"], "output_names": outputs, "opset_version": ONNX_OPSET}
    try:
        program = torch.onnx.export(model, example, None, dynamo=True, verbose=False,
                                    dynamic_shapes=({0: torch.export.Dim("batch")},), **names)
        program.save(str(path))
        return {"onnx_exporter": "dynamo", "onnx_opset": ONNX_OPSET}
    except Exception as dynamo_error:  # torch.export fails in many ways: graph breaks, data-dependent shapes
        try:
            torch.onnx.export(model, example, str(path), dynamo=False,
                              dynamic_axes={name: {0: "batch"} for name in ("input", *outputs)}, **names)
        except Exception as legacy_error:
            raise RuntimeError(f"ONNX export failed with both exporters: dynamo: {dynamo_error}; "
                               f"torchscript: {legacy_error}") from legacy_error
        first_line = (str(dynamo_error).splitlines() or [type(dynamo_error).__name__])[0]
        return {"onnx_exporter": "torchscript", "onnx_opset": ONNX_OPSET, "onnx_dynamo_error": first_line[:300]}

def leaves(output: Any) -> list[torch.Tensor]:
    """The tensors of a model's output, in order: detection and counting heads return tuples."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, (tuple, list)):
        return [t for item in output for t in leaves(item)]
    raise TypeError(f"cannot export a model whose output is a {type(output).__name__}; "
                    f"return a tensor or a tuple of tensors")

@contextlib.contextmanager
def quiet_torch() -> Iterator[None]:
    """TorchScript is deprecated in torch 2.13 and the ONNX exporter logs about optional packages
    (torchvision); both are expected here, so neither should reach the user on every export."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        logger.setLevel(level)
