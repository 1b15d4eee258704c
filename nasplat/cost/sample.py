"""A latency sample: N architectures of a space, chosen to be diverse, as ONNX files for a device without nasplat.

`write_sample` writes a folder that is copied to the target device (a phone board, a Raspberry Pi: Python,
numpy and onnxruntime, no torch), where `python measure_latency.py` times every model under nasplat's
protocol and writes `latency.csv` (`arch,latency_ms,median_ms,runs`, `arch` being `space.to_text(arch)`),
which `nasplat latency fit SPACE --measured latency.csv` reads back:

    models/000.onnx ...    one model per architecture, untrained, at the target input shape and the batch
    manifest.json          the space, each model's file, arch text, input shape, MACs, params and sha256,
                           and the protocol's settings
    measure_latency.py     the standalone timing script (nasplat/cost/measure_onnx.py; stdlib, numpy and
                           onnxruntime only)
    README.txt             the two commands

The models are exported with the TorchScript-based ONNX exporter (`dynamo=False`) at the fixed sample
shape: it was many times faster here than the dynamo exporter of `nasplat.conversion.write_onnx` (the one used
as a fallback), which would make a sample of 50 take minutes (an ad-hoc timing, not a benchmark). Each file is checked once
against PyTorch with onnxruntime before it is listed.
"""
from __future__ import annotations

import itertools
import json
import math
import os
import random
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UserError
from ..files import sha256, write_json
from ..space import Choice, FloatRange, IntRange
from .flops import measure

if TYPE_CHECKING:
    import numpy as np
    from torch import nn

    from ..arch import Arch
    from ..constraints import Constraint
    from ..space import SearchSpace

FORMAT = "nasplat-latency-sample"  # manifest.json's "format"; measure_onnx.py checks it
VERSION = 1
RUNTIMES = ("onnxruntime",)
MANIFEST = "manifest.json"
SCRIPT = "measure_latency.py"
README = "README.txt"
MODELS = "models"
SCRIPT_SOURCE = Path(__file__).with_name("measure_onnx.py")

Progress = Callable[[str], None]


# --- choosing the architectures ---------------------------------------------------------------------------


def pool(space: SearchSpace, count: int, *, seed: int = 0, constraints: Sequence[Constraint] = (),
         progress: Progress | None = None) -> list[Arch]:
    """Up to `count` distinct architectures of `space` completed under `constraints`, keeping only those whose
    MACs and params meet them (the ones a search under these constraints would train): the whole space,
    in enumeration order, when it has at most `count` members, else random draws (seeded) in the order drawn.

    Every architecture returned has its costs measured (`flops.measure`, cached), which is most of the time
    this takes.
    """
    counted = [c for c in constraints if c.metric in ("macs", "params")]
    size = space.size()
    if math.isfinite(size) and size <= count:
        params = space.parameters()
        names = list(params)
        proposals: Any = (dict(zip(names, values))
                          for values in itertools.product(*(params[n].all_values() for n in names)))
    else:
        rng = random.Random(seed)
        attempts = 20 * count + 100  # draws allowed: spaces repeat architectures, budgets reject some
        proposals = (space.sample(rng) for _ in range(attempts))
    chosen: dict[Arch, None] = {}
    seen: set[Arch] = set()
    for params_ in proposals:
        arch = space.complete(params_, constraints=constraints)
        if arch in seen:
            continue
        seen.add(arch)
        costs = measure(space, arch)  # choose() needs every candidate's MACs anyway
        if all(c.holds(costs) for c in counted):
            chosen[arch] = None
            if progress is not None and (len(chosen) % 50 == 0 or len(chosen) == count):
                progress(f"candidates: {len(chosen)}/{count} measured ({len(seen) - len(chosen)} over the budget)")
        if len(chosen) >= count:
            break
    return list(chosen)


def default_candidates(n: int) -> int:
    """The pool `choose` picks `n` from by default: 10·N, at least 50 (N=50 takes about 1 min to measure)."""
    return max(10 * n, 50)


def choose(space: SearchSpace, n: int, *, seed: int = 0, constraints: Sequence[Constraint] = (),
           candidates: int | None = None, progress: Progress | None = None) -> list[Arch]:
    """N distinct architectures of `space` that spread over both its cost range and its parameters.

    From a pool of `candidates` architectures (default 10·N, at least 50; `pool()`: those meeting
    `constraints`, the whole space where it is that small; less any whose output does not depend on the
    input, such as NAS-Bench-201's disconnected cells), the pool's cheapest and most expensive by MACs
    come first, then greedy farthest-point picks: each next architecture is the candidate farthest from all
    picked so far. Distances are Euclidean over one feature per parameter (a range's value scaled to [0, 1];
    a choice one-hot, scaled so that two different choices are 1 apart; derived parameters such as
    TinyNet's solved width scaled to the pool's range) plus log MACs scaled to the pool's range and weighted
    as much as the diagonal of the parameter cube (√(number of parameters)), so cost and structure count
    alike. Deterministic per seed; the list is in pick order, so any prefix is itself spread out.

    Why not N random architectures: a latency predictor is fitted on these measurements, and random draws
    crowd where most architectures lie (in NAS-Bench-201, cells of middling MACs) while rarely reaching
    the cheap and expensive ends or the rarer ops, so the fit extrapolates exactly where a budget
    constrained search needs it. Farthest-point picks include both ends of the cost range, fill it
    evenly, and bring in every op and parameter value early (a pick that repeats its predecessors' choices
    is near them), so each measurement adds what the others lack.

    For a space that derives parameters from a budget (TinyNet's width) pass the search's constraints:
    without them TinyNet's width is always 1, and the sample would never vary it.
    """
    if n < 1:
        raise UserError(f"a latency sample needs at least one architecture, got n={n}")
    count = candidates if candidates is not None else default_candidates(n)
    if count < n:
        raise UserError(f"candidates={count} is fewer than the {n} architectures asked for")
    archs = pool(space, count, seed=seed, constraints=constraints, progress=progress)
    constant: list[Arch] = []
    while True:
        if len(archs) < n:
            budget = f" meeting {', '.join(map(str, constraints))}" if constraints else ""
            dropped = f", besides {len(constant)} whose output does not depend on the input" if constant else ""
            raise UserError(f"only {len(archs)} distinct {space.name} architectures{budget} were found{dropped}; "
                            f"ask for at most {len(archs)}" + (" or loosen the constraints" if constraints else ""))
        picked = [archs[i] for i in _farthest_points(space, archs, n)]
        found = [a for a in picked if _ignores_input(space, a)]
        if not found:
            break
        constant += found
        archs = [a for a in archs if a not in found]
    if constant and progress is not None:
        progress(f"left out {len(constant)} architecture(s) whose output does not depend on the input")
    return picked


def _ignores_input(space: SearchSpace, arch: Arch) -> bool:
    """Whether the model of `arch` gives the same output for two different inputs: NAS-Bench-201's cells
    without a path of operations from input to output. Exported, such a model is a constant with no input
    at all, whose time says nothing about the ops the predictor is fitted on."""
    import torch

    from ..conversion import leaves

    shape = space.target(arch).input_shape
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = space.build(arch, num_classes=space.target(arch).num_classes).eval()
        inputs = torch.randn((2, *shape)).unbind(0)
        with torch.no_grad():
            first, second = (leaves(model(x)) for x in inputs)
    return all(torch.equal(a, b) for a, b in zip(first, second))


def _farthest_points(space: SearchSpace, archs: Sequence[Arch], n: int) -> list[int]:
    """Indices of `n` of `archs`: the cheapest, the most expensive, then greedy max-min distance."""
    import numpy as np

    costs = [measure(space, a) for a in archs]
    texts = [space.to_text(a) for a in archs]
    order = sorted(range(len(archs)), key=lambda i: (costs[i]["macs"], costs[i]["params"], texts[i]))
    features = _features(space, archs, [c["macs"] for c in costs])
    picked = [order[0]]
    if n > 1 and order[-1] != order[0]:
        picked.append(order[-1])
    nearest = np.min([((features - features[i]) ** 2).sum(axis=1) for i in picked], axis=0)
    while len(picked) < n:
        nearest[picked] = -1.0  # never again; argmax takes the first of equals, i.e. the pool's order
        best = int(np.argmax(nearest))
        picked.append(best)
        nearest = np.minimum(nearest, ((features - features[best]) ** 2).sum(axis=1))
    return picked


def _features(space: SearchSpace, archs: Sequence[Arch], macs: Sequence[float]) -> np.ndarray:
    """One row per architecture: the parameters and log MACs as `choose` describes."""
    import numpy as np

    params = space.parameters()
    columns: list[np.ndarray] = []
    names = sorted({k for a in archs for k in a})
    for name in names:
        values = [a.get(name) for a in archs]
        param = params.get(name)
        if isinstance(param, (IntRange, FloatRange)):
            columns.append(np.array([_unit(param, v) for v in values], dtype=float)[:, None])
        elif param is None and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            columns.append(_scaled(np.array(values, dtype=float))[:, None])  # derived: the pool's range
        else:  # a choice (or a derived value that is no number): one-hot over the values seen
            levels = list(param.values) if isinstance(param, Choice) else sorted(set(map(repr, values)))
            keys = values if isinstance(param, Choice) else list(map(repr, values))
            onehot = np.zeros((len(archs), len(levels)))
            for row, key in enumerate(keys):
                onehot[row, levels.index(key)] = 1.0 / math.sqrt(2.0)
            columns.append(onehot)
    cost = _scaled(np.log(np.maximum(np.array(macs, dtype=float), 1.0))) * math.sqrt(max(1, len(names)))
    return np.hstack([*columns, cost[:, None]])


def _unit(param: IntRange | FloatRange, value: Any) -> float:
    low, high = float(param.low), float(param.high)
    if high == low:
        return 0.0
    if isinstance(param, FloatRange) and param.log:
        return (math.log(value) - math.log(low)) / (math.log(high) - math.log(low))
    return (float(value) - low) / (high - low)


def _scaled(values: np.ndarray) -> np.ndarray:
    spread = float(values.max() - values.min())
    return (values - values.min()) / spread if spread > 0 else values * 0.0


# --- writing the sample -----------------------------------------------------------------------------------


def write_sample(space: SearchSpace, n: int, *, out: Path, runtime: str = "onnxruntime", batch: int = 1,
                 threads: int = 1, seed: int = 0, constraints: Sequence[Constraint] = (),
                 candidates: int | None = None, progress: Progress | None = None) -> Path:
    """Writes a latency sample of `n` architectures (`choose`) into `out`; returns the manifest's path.

    Models are exported untrained at the target input shape with `batch` as a fixed batch size; `threads`
    is the default intra-op thread count the script times with (its --threads overrides it). Resumable: a
    model whose file in `out` matches the earlier manifest (same space and options, architecture, input
    shape and sha256) is kept, not exported again, and the manifest is rewritten after every model, so an
    interrupted call loses at most one export. `progress`, when given, receives one line per step.
    """
    from .latency import Protocol

    if runtime not in RUNTIMES:
        raise UserError(f"latency sample runtime {runtime!r} is not supported; accepted: {', '.join(RUNTIMES)}")
    protocol = Protocol(runtime=runtime, batch=batch, threads=threads)  # checks batch and threads
    out = Path(out)
    say = progress or (lambda line: None)
    archs = choose(space, n, seed=seed, constraints=constraints, candidates=candidates, progress=progress)
    out.mkdir(parents=True, exist_ok=True)
    (out / MODELS).mkdir(exist_ok=True)
    manifest_path = out / MANIFEST
    described = {"name": space.name, "options": dict(space.options)}
    earlier, listed_before = _earlier_models(manifest_path, described)
    manifest: dict[str, Any] = {
        "format": FORMAT, "version": VERSION, "complete": False, "space": described,
        "sample": {"n": n, "seed": seed, "constraints": [c.to_dict() for c in constraints],
                   "candidates": candidates if candidates is not None else default_candidates(n),
                   "method": "cheapest and most expensive by MACs, then greedy farthest-point",
                   "costs": "macs and params of one input (batch 1) at the target shape, nasplat.cost.flops"},
        "protocol": protocol.to_dict(),
        "models": [],
    }
    manifest.update(_versions())
    width = max(3, len(str(n - 1)))
    for index, arch in enumerate(archs):
        text = space.to_text(arch)
        name = f"{MODELS}/{index:0{width}d}.onnx"
        shape = [batch, *space.target(arch).input_shape[1:]]
        costs = measure(space, arch)
        entry = {"file": name, "arch": text, "input_shape": shape, "macs": costs["macs"],
                 "params": costs["params"]}
        old = earlier.get(name)
        path = out / name
        if (old is not None and old.get("arch") == text and old.get("input_shape") == shape
                and path.is_file() and sha256(path) == old.get("sha256")):
            entry = {**old, **entry}
            say(f"[{index + 1}/{n}] {name} kept (unchanged since the earlier write)")
        else:
            entry.update(_export_checked(space, arch, path, tuple(shape)))
            say(f"[{index + 1}/{n}] {name} exported ({entry['exporter']}, {costs['macs'] / 1e6:.1f}M MACs, "
                f"max abs diff {entry['max_abs_diff']:.2g})")
        manifest["models"].append(entry)
        write_json(manifest_path, manifest)
    listed = {m["file"] for m in manifest["models"]}
    for name in sorted(listed_before - listed):  # the earlier sample's models that this one does not have
        if Path(name).parent == Path(MODELS) and Path(name).suffix == ".onnx":
            (out / name).unlink(missing_ok=True)
    shutil.copyfile(SCRIPT_SOURCE, out / SCRIPT)
    os.chmod(out / SCRIPT, 0o755)
    (out / README).write_text(_readme(space, n, manifest), encoding="utf-8")
    manifest["complete"] = True
    write_json(manifest_path, manifest)
    return manifest_path


def _earlier_models(path: Path, space: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], set[str]]:
    """The manifest already in the folder: file -> entry where it describes the same space and format (the
    models that may be kept), and every model file it lists (those of another space are replaced)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        listed = {m["file"] for m in data["models"] if isinstance(m, dict) and isinstance(m.get("file"), str)}
    except (OSError, ValueError, TypeError, KeyError):
        return {}, set()
    if not (data.get("format") == FORMAT and data.get("version") == VERSION and data.get("space") == space):
        return {}, listed
    return {m["file"]: m for m in data["models"] if isinstance(m, dict) and m.get("file") in listed}, listed


def _versions() -> dict[str, Any]:
    import onnxruntime
    import torch

    from .. import __version__
    return {"nasplat_version": __version__, "torch_version": torch.__version__,
            "onnxruntime_version": onnxruntime.__version__}


def _export_checked(space: SearchSpace, arch: Arch, path: Path, shape: tuple[int, ...]) -> dict[str, Any]:
    """Builds `arch` (weights seeded by its key, so a file is reproducible), exports it to `path` through
    a temporary file, and checks it against PyTorch; returns the manifest fields it adds."""
    import torch

    from ..conversion import quiet_torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(arch.key(), 16) % (2 ** 31))
        model = space.build(arch, num_classes=space.target(arch).num_classes).eval()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with quiet_torch():
            how = _export(model, tmp, shape)
        how.update(_check(model, tmp, shape, final=path))
        with open(tmp, "rb") as stream:
            os.fsync(stream.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    how.update({"sha256": sha256(path), "bytes": path.stat().st_size})
    return how


def _export(model: nn.Module, path: Path, shape: tuple[int, ...]) -> dict[str, Any]:
    """The TorchScript-based exporter at the fixed `shape` (a static graph, as deployed); where it fails,
    nasplat's dynamo export (`write_onnx`, with a dynamic batch axis)."""
    import torch

    from ..conversion import ONNX_OPSET, leaves, write_onnx

    x = torch.zeros(shape)
    with torch.no_grad():
        count = len(leaves(model(x)))
    outputs = ["output"] if count == 1 else [f"output{i}" for i in range(count)]
    try:
        torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["input"], output_names=outputs,
                          opset_version=ONNX_OPSET)
        return {"exporter": "torchscript", "opset": ONNX_OPSET}
    except Exception as exc:  # the deprecated exporter fails on some ops; dynamo may still capture them
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:300]
        info = write_onnx(model, path, shape)
        return {"exporter": info["onnx_exporter"], "opset": info["onnx_opset"], "torchscript_error": first}


def _check(model: nn.Module, path: Path, shape: tuple[int, ...], *, final: Path) -> dict[str, Any]:
    """onnxruntime's outputs against PyTorch's on one random input; ValueError beyond the tolerances."""
    import numpy as np
    import onnxruntime
    import torch

    from ..conversion import allowed_difference, leaves

    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = [t.numpy() for t in leaves(model(x))]
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    output = session.run(None, {node.name: x.numpy() for node in session.get_inputs()[:1]})
    if [o.shape for o in output] != [r.shape for r in reference]:
        raise UserError(f"{final} gives outputs of shapes {[o.shape for o in output]}, PyTorch "
                        f"{[r.shape for r in reference]}; the export is wrong and was not written")
    diff = max(float(np.abs(o - r).max()) if r.size else 0.0 for o, r in zip(output, reference))
    scale = max(float(np.abs(r).max()) if r.size else 0.0 for r in reference)
    allowed = allowed_difference([torch.from_numpy(r) for r in reference])
    if not diff <= allowed:  # NaN fails too
        raise UserError(f"{final} differs from PyTorch by {diff:.3g} (max abs; largest output {scale:.3g}, "
                        f"allowed {allowed:.3g}); the export is wrong and was not written")
    return {"max_abs_diff": diff, "max_abs_output": scale}


def _readme(space: SearchSpace, n: int, manifest: dict[str, Any]) -> str:
    threads = manifest["protocol"]["threads"]
    return (
        f"nasplat latency sample: {n} {space.name} architectures as ONNX models, to be timed on the target device.\n"
        f"\n"
        f"1. Copy this whole folder to the device and run there (needs Python 3.7+, numpy and onnxruntime;\n"
        f"   not torch or nasplat):\n"
        f"\n"
        f"       python measure_latency.py\n"
        f"\n"
        f"   It times every model ({threads} thread(s); --threads N to change; --help for the protocol) and\n"
        f"   writes latency.csv and latency.json beside it. Stopped, it keeps what it measured; run it again\n"
        f"   to resume.\n"
        f"\n"
        f"2. Copy latency.csv back and fit the predictor with nasplat:\n"
        f"\n"
        f"       nasplat latency fit {space.name} --measured latency.csv --out PRED.json\n"
        f"\n"
        f"manifest.json lists each model's architecture, input shape, MACs, params and sha256.\n"
    )


