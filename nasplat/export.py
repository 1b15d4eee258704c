"""The deployable bundle of an architecture: arch.json, safetensors weights, TorchScript and ONNX.

A bundle folder holds `arch.json` (the Arch, its costs, the target configuration, what the saved weights
take, and the checks the exports passed) next to the files it lists. Every file is written under a
temporary name and verified; only then is an old arch.json removed, the files renamed into place and
arch.json written last. So a folder with an arch.json is always a complete bundle: an export that fails
leaves the previous bundle as it was, one killed while renaming leaves no arch.json, and each listed
file's SHA-256 in arch.json catches anything else.
"""
from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .arch import Arch
from .conversion import allowed_difference, leaves, quiet_torch, write_onnx
from .errors import UserError
from .files import sha256
from .registry import SPACES
from .space import Target

if TYPE_CHECKING:
    from .space import SearchSpace

ARCH_FILE = "arch.json"
FILES = {"weights": "weights.safetensors", "torchscript": "model.pt", "onnx": "model.onnx"}
FORMATS = ("json", *FILES)


class BundleError(UserError):
    """A bundle that is missing, incomplete, corrupted or does not fit its architecture."""


def export_bundle(model: nn.Module | None, arch: Arch, space: SearchSpace, *, out: Path,
                  costs: Mapping[str, float], input_shape: Sequence[int], num_classes: int,
                  metrics: Mapping[str, float] | None = None,
                  formats: Sequence[str] = FORMATS, trained: bool = True,
                  latency: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """Writes the bundle of `model` (built by `space` for `arch`) into `out`; returns format -> path.

    `input_shape` and `num_classes` are the configuration the model takes: the proxy task's for a
    trained model, the target's for an untrained target export (`trained=False`). arch.json is always
    written (it is what makes the folder a bundle), so "json" may be named in `formats` or left out.
    The TorchScript and ONNX files are checked against PyTorch on a random batch of two; an export that
    differs by more than 1e-4 raises BundleError and leaves no arch.json behind. Without a model (an
    architecture answered from a table) only arch.json is written, describing an untrained model.
    `latency` records how a latency in `costs` was measured (protocol and device fingerprint).
    """
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise UserError(f"unknown export format(s) {', '.join(unknown)}; known: {', '.join(FORMATS)}")
    wanted = [f for f in FILES if f in formats]
    if model is None and (wanted or trained):
        raise ValueError("without a model only arch.json can be written (formats=('json',), trained=False)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if model is not None:  # exports trace in eval mode; the caller's model is left as is
        model = copy.deepcopy(model).cpu().eval()
    shape = tuple(int(n) for n in input_shape)
    temps = {f: out / f".{FILES[f]}.tmp-{os.getpid()}" for f in wanted}
    try:
        with quiet_torch():
            if "weights" in temps:
                _write_weights(model, arch, temps["weights"])
            deployable = getattr(space, "deployable", None)  # post-processing the TorchScript file includes
            wrap = (lambda network: deployable(network, classes=num_classes)) if deployable is not None else None
            if "torchscript" in temps:
                _write_torchscript(model, temps["torchscript"], shape, wrap=wrap)
            how = write_onnx(model, temps["onnx"], shape) if "onnx" in temps else {}
            verified = {**_verify(model, temps, shape, final={f: out / FILES[f] for f in wanted}, wrap=wrap),
                        **how} if model is not None else {}
        from . import __version__

        manifest = {
            "arch": arch.to_dict(),
            "describe": space.describe(arch),
            "space_options": dict(space.options),
            "costs": {k: float(v) for k, v in costs.items()},
            **({"latency": dict(latency)} if latency else {}),
            "target": space.target(arch).to_dict(),
            "weights": {"input_shape": list(shape), "num_classes": int(num_classes), "trained": trained},
            "metrics": dict(metrics or {}),
            "files": {FILES[f]: {"format": f, "sha256": sha256(temps[f]), "bytes": temps[f].stat().st_size}
                      for f in wanted},
            "verified": verified,
            "nasplat_version": __version__,
            "torch_version": torch.__version__,
        }
        temps["json"] = out / f".{ARCH_FILE}.tmp-{os.getpid()}"
        temps["json"].write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        (out / ARCH_FILE).unlink(missing_ok=True)  # from here until the rename below, no bundle is claimed
        for f in set(FILES) - set(wanted):  # files of an earlier bundle in this folder would be stale
            (out / FILES[f]).unlink(missing_ok=True)
        for f in wanted:
            _commit(temps[f], out / FILES[f])
        _commit(temps["json"], out / ARCH_FILE)
    finally:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)
    return {"json": out / ARCH_FILE, **{f: out / FILES[f] for f in wanted}}


def read_bundle(path: str | Path) -> dict[str, Any]:
    """The parsed, validated arch.json of a bundle folder, its arch.json, or a run folder (its best/)."""
    file = _locate(Path(path))
    hint = _hint(file.parent)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"{file} does not exist: {file.parent} is no complete bundle; {hint}") from None
    except json.JSONDecodeError as e:
        raise BundleError(f"{file} is not valid JSON (line {e.lineno}: {e.msg}); {hint}") from None
    except UnicodeDecodeError:
        raise BundleError(f"{file} is not valid JSON (not UTF-8 text); {hint}") from None
    try:
        _validate(data)
    except (ValueError, TypeError) as e:  # TypeError: Arch refuses a parameter value
        raise BundleError(f"{file} is not a nasplat bundle manifest ({e}); {hint}") from None
    return data


def load(bundle: str | Path, *, target: bool = False) -> nn.Module:
    """The model of a bundle in eval mode: trained (weights loaded strictly) or, with target=True,
    untrained at the target configuration.

    `bundle` is a bundle folder, its arch.json, or a run folder (then its best/). The space is the
    registered one of the architecture's name, built with the options recorded at export.
    """
    file = _locate(Path(bundle))
    return _model(file, read_bundle(file), target=target).eval()


def export_run(run: str | Path, *, out: Path, formats: Sequence[str] = FORMATS,
               target: bool = False) -> dict[str, Path]:
    """Exports the bundle of a run (its best/) or a bundle folder again into `out`, in `formats`.

    target=False: the trained model at the configuration it was trained at; target=True: the untrained
    model at the target configuration, the one to train in full and deploy.
    """
    file = _locate(Path(run))
    data = read_bundle(file)
    arch = Arch.from_dict(data["arch"])
    taken = Target.from_dict(data["target"]) if target else Target.from_dict(data["weights"])
    return export_bundle(_model(file, data, target=target), arch, _space(file, data, arch), out=Path(out),
                         costs=data["costs"], input_shape=taken.input_shape, num_classes=taken.num_classes,
                         metrics=data["metrics"], formats=formats, trained=not target, latency=data.get("latency"))


def _model(file: Path, data: Mapping[str, Any], *, target: bool) -> nn.Module:
    arch = Arch.from_dict(data["arch"])
    space = _space(file, data, arch)
    if target:
        return space.build(arch, num_classes=Target.from_dict(data["target"]).num_classes)
    model = space.build(arch, num_classes=data["weights"]["num_classes"])
    hint = _hint(file.parent)
    weights = _read_weights(file.parent, data, hint)
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as e:  # missing, unexpected or mis-shaped tensors
        detail = " ".join(str(e).split())[:300]
        raise BundleError(f"{file.parent / FILES['weights']} does not fit the architecture in {ARCH_FILE} "
                          f"({detail}); {hint}") from None
    return model


def _space(file: Path, data: Mapping[str, Any], arch: Arch) -> SearchSpace:
    try:
        space = SPACES.get(arch.space)(**data["space_options"])
        space.validate(arch)
    except LookupError as e:
        raise BundleError(f"{file} needs search space {arch.space!r}, which is not installed ({e})") from None
    except ValueError as e:
        raise BundleError(f"{file} holds an architecture this version cannot build ({e}); "
                          f"{_hint(file.parent)}") from None
    return space


def _read_weights(folder: Path, data: Mapping[str, Any], hint: str) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    name = FILES["weights"]
    path = folder / name
    if name not in data["files"]:
        raise BundleError(f"{folder / ARCH_FILE} lists no {name}: the bundle was exported without "
                          f"weights; export it with --format weights or load it with target=True")
    if not path.is_file():
        raise BundleError(f"{path} is missing; {hint}")
    if sha256(path) != data["files"][name]["sha256"]:
        raise BundleError(f"{path} does not match the checksum in {ARCH_FILE} (corrupted, or from another "
                          f"export); {hint}")
    try:
        return load_file(path)
    except (SafetensorError, OSError) as e:
        raise BundleError(f"{path} cannot be read ({e}); {hint}") from None


def _locate(path: Path) -> Path:
    """The arch.json that `path` names: itself, inside it, or inside its best/ (a run folder)."""
    if path.is_dir():
        if not (path / ARCH_FILE).exists() and (path / "best").is_dir():
            return path / "best" / ARCH_FILE
        if not (path / ARCH_FILE).exists() and (path / "journal.jsonl").exists():
            raise BundleError(f"run {path} has no best/ bundle: no finished trial yet (none ended ok, or "
                              f"exporting the best one failed; see its journal)")
        return path / ARCH_FILE
    if path.suffix == ".json" or path.exists():
        return path
    raise BundleError(f"{path} does not exist (expected a bundle folder, its {ARCH_FILE}, or a run folder)")


def _hint(folder: Path) -> str:
    """What the user can do about a damaged bundle: export it again from its run, unless it is the run's."""
    if folder.name == "best" and (folder.parent / "journal.jsonl").exists():
        return f"the bundle of run {folder.parent} is damaged; its journal still records each trial's architecture"
    return "re-export it from its run with `nasplat export RUN --out DIR`"


def _validate(data: Any) -> None:
    """Raises ValueError naming the first field of arch.json that is missing or malformed."""
    if not isinstance(data, dict):
        raise ValueError("the top level is not a JSON object")
    for key in ("arch", "target", "weights", "files", "space_options", "costs", "metrics"):
        if not isinstance(data.get(key), dict):
            raise ValueError(f"field {key!r} is missing or not a JSON object")
    Arch.from_dict(data["arch"])
    for key in ("target", "weights"):
        shape, classes = data[key].get("input_shape"), data[key].get("num_classes")
        if not (isinstance(shape, list) and shape and all(isinstance(n, int) and n > 0 for n in shape)):
            raise ValueError(f"field '{key}.input_shape' is not a list of positive integers")
        if not (isinstance(classes, int) and classes > 0):
            raise ValueError(f"field '{key}.num_classes' is not a positive integer")
    if not isinstance(data["weights"].get("trained"), bool):
        raise ValueError("field 'weights.trained' is not true or false")
    for name, entry in data["files"].items():
        if not (isinstance(entry, dict) and isinstance(entry.get("sha256"), str)):
            raise ValueError(f"field 'files.{name}' has no sha256")


def _write_weights(model: nn.Module, arch: Arch, path: Path) -> None:
    from safetensors.torch import save_file

    # a fresh contiguous copy per tensor: safetensors refuses views and tensors sharing storage
    tensors = {k: torch.clone(v.detach(), memory_format=torch.contiguous_format)
               for k, v in model.state_dict().items()}
    save_file(tensors, path, metadata={"arch": arch.to_json()})


def _write_torchscript(model: nn.Module, path: Path, shape: tuple[int, ...], *,
                       wrap: Callable[[nn.Module], nn.Module] | None = None) -> None:
    """The traced network, or with `wrap` (a space's `deployable`: post-processing such as a detector's NMS,
    whose loops tracing would freeze) the scripted wrapper around the traced network."""
    with torch.no_grad():
        traced = torch.jit.trace(model, torch.zeros(shape), check_trace=False)  # _verify checks it
        module = torch.jit.script(wrap(traced)) if wrap is not None else traced
    torch.jit.save(module, str(path))


def _verify(model: nn.Module, temps: Mapping[str, Path], shape: tuple[int, ...], *, final: Mapping[str, Path],
            wrap: Callable[[nn.Module], nn.Module] | None = None) -> dict[str, Any]:
    """Max abs differences between each export's outputs and PyTorch's on one random batch of two
    (two, so that the ONNX dynamic batch axis is exercised too); the TorchScript file against `wrap(model)`
    when the space post-processes. Raises BundleError above `allowed_difference`."""
    x = torch.randn((2, *shape[1:]), generator=torch.Generator().manual_seed(0))
    verified: dict[str, Any] = {"input_shape": list(x.shape)}
    if wrap is not None and "torchscript" in temps:
        verified["torchscript_postprocessed"] = True
    for fmt in ("torchscript", "onnx"):
        if fmt not in temps:
            continue
        with torch.no_grad():
            reference = leaves((wrap(model) if wrap is not None and fmt == "torchscript" else model)(x))
        try:
            output = _run_export(fmt, temps[fmt], x)
        except Exception as e:  # whatever the runtime raises, the file is unusable
            raise BundleError(f"{final[fmt]} fails to run on a batch of two ({type(e).__name__}: "
                              f"{str(e)[:300]}); the export is wrong and was not written") from e
        shapes = [list(t.shape) for t in output], [list(t.shape) for t in reference]
        if shapes[0] != shapes[1]:
            raise BundleError(f"{final[fmt]} gives outputs of shapes {shapes[0]}, PyTorch {shapes[1]}; "
                              f"the export is wrong and was not written")
        diff = max((float((a - b).abs().max()) for a, b in zip(output, reference) if a.numel()), default=0.0)
        allowed = allowed_difference(reference)
        if not diff <= allowed:  # also catches NaN
            raise BundleError(f"{final[fmt]} differs from PyTorch by {diff:.3g} (max abs, over the allowed "
                              f"{allowed:.3g}); the export is wrong and was not written")
        verified[f"{fmt}_max_abs_diff"] = diff
        verified["tolerance"] = allowed
    return verified


def _run_export(fmt: str, path: Path, x: torch.Tensor) -> list[torch.Tensor]:
    if fmt == "torchscript":
        with torch.no_grad():
            return leaves(torch.jit.load(str(path)).eval()(x))
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [torch.from_numpy(a) for a in session.run(None, {"input": x.numpy()})]


def _commit(tmp: Path, final: Path) -> None:
    """Flushes `tmp` to disk and renames it over `final` (atomic within one folder)."""
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)


