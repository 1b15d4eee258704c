"""Latency measured on the device that will run the model, under a protocol recorded with every figure.

A `Protocol` names where (`cpu`, `cuda[:N]`, or `ray:<resource>[:cuda]`, a Ray task pinned to the node that
advertises the custom resource), with what runtime (`torch` eager or `onnxruntime`), at what batch and with
how many threads, and how: warm-up runs, then timed runs through `torch.utils.benchmark` (which synchronises
CUDA around its timer) until `seconds` have passed, in `rounds` separated rounds.

The figure is the fastest timed run, with rounds spread over a few seconds (`gap` between them): an
estimate of the latency undisturbed by the rest of the machine, as `timeit` advises. Interference only ever
adds time, and on a shared machine it comes in phases of seconds in which every run, even a round's fastest,
is slowed by up to 50%: repeated medians of 30 runs varied by up to 21% here, the median of round medians
by 12-20% between repeats of a protocol, the fastest run of rounds spread over 3 s by about 4%
(bench/latency.py). The median of every timed run, the latency under the machine's load at the time, is
recorded beside it. Every figure carries the machine's fingerprint; figures are cached per
(fingerprint, protocol, space, architecture).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..errors import LatencyError

if TYPE_CHECKING:
    from ..arch import Arch
    from ..space import SearchSpace

RUNTIMES = ("torch", "onnxruntime")


@dataclass(frozen=True)
class Protocol:
    """How a latency figure is taken; recorded with it. `threads` are intra-op threads (CPU)."""

    device: str = "cpu"
    runtime: str = "torch"
    batch: int = 1
    threads: int = 1
    warmup: int = 10  # untimed runs first (allocators, caches, cuDNN's autotuning)
    rounds: int = 10  # timed rounds, spread in time; the figure is the fastest run of them all
    seconds: float = 0.05  # timed run time per round (at least one run per round)
    gap: float = 0.25  # seconds between rounds, so that they sample different moments of the machine's load

    def __post_init__(self) -> None:
        parse_device(self.device)
        if self.runtime not in RUNTIMES:
            raise LatencyError(f"unknown latency runtime {self.runtime!r}; known: {', '.join(RUNTIMES)}")
        for name in ("batch", "threads", "rounds"):
            if getattr(self, name) < 1:
                raise LatencyError(f"latency {name} must be at least 1, got {getattr(self, name)}")
        if self.warmup < 0 or not self.seconds > 0 or self.gap < 0:
            raise LatencyError(f"latency warmup and gap must be >= 0 and seconds > 0, got {self.warmup}, "
                               f"{self.gap} and {self.seconds}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Protocol:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    @property
    def remote(self) -> str | None:
        """The Ray resource of a `ray:` device, else None."""
        return parse_device(self.device)[0]

    def on_node(self) -> Protocol:
        """The protocol as the node that runs it applies it: `ray:edge:cuda` becomes `cuda` there."""
        return replace(self, device=parse_device(self.device)[1])


def parse_device(text: str) -> tuple[str | None, str]:
    """'cpu' -> (None, 'cpu'); 'cuda:1' -> (None, 'cuda:1'); 'ray:edge' -> ('edge', 'cpu');
    'ray:edge:cuda' -> ('edge', 'cuda'). Raises LatencyError naming the accepted forms."""
    remote, _, local = text.partition(":") if text.startswith("ray:") else (None, "", text)
    if remote is not None:
        remote, _, local = local.partition(":")
        local = local or "cpu"
        if not remote:
            raise LatencyError("--device ray: needs a resource name, e.g. ray:jetson (the node started with "
                               "`ray start --resources '{\"jetson\": 1}'`)")
    kind, _, index = local.partition(":")
    if kind not in ("cpu", "cuda") or (index and (kind == "cpu" or not index.isdigit())):
        raise LatencyError(f"unknown latency device {text!r}; use cpu, cuda, cuda:N or ray:<resource>[:cuda]")
    return remote, local


@dataclass(frozen=True)
class Latency:
    """One measured figure: milliseconds per batch (the fastest timed run), the spread of the rounds, the
    median of all timed runs, how and where."""

    ms: float
    spread: float  # (max - min) / min of the rounds' fastest runs: how far the rounds disagreed
    rounds_ms: tuple[float, ...]  # each round's fastest run
    median_ms: float  # the median of every timed run: the latency under the machine's load at the time
    runs: int  # timed runs in all
    input_shape: tuple[int, ...]
    protocol: Protocol
    fingerprint: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"ms": self.ms, "spread": self.spread, "rounds_ms": list(self.rounds_ms),
                "median_ms": self.median_ms, "runs": self.runs,
                "input_shape": list(self.input_shape), "protocol": self.protocol.to_dict(),
                "fingerprint": dict(self.fingerprint)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Latency:
        return cls(float(data["ms"]), float(data["spread"]), tuple(data["rounds_ms"]), float(data["median_ms"]),
                   int(data["runs"]),
                   tuple(data["input_shape"]), Protocol.from_dict(data["protocol"]), dict(data["fingerprint"]))


@cache
def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def fingerprint(protocol: Protocol) -> dict[str, Any]:
    """What the figure depends on besides the model: the hardware, the software, and the protocol's
    device, runtime and threads. Measured here, so a `ray:` device's comes back from its node."""
    device = protocol.on_node().device
    gpu = None
    if device.startswith("cuda"):
        _check_cuda(device)
        gpu = torch.cuda.get_device_name(torch.device(device))
    ort = None
    if protocol.runtime == "onnxruntime":
        import onnxruntime

        ort = onnxruntime.__version__
    return {"cpu": _cpu_model(), "cpus": os.cpu_count(), "machine": platform.machine(), "gpu": gpu,
            "torch": torch.__version__, "onnxruntime": ort, "device": device.split(":")[0],
            "runtime": protocol.runtime, "threads": protocol.threads}


def fingerprint_key(print_: Mapping[str, Any]) -> str:
    """A short stable digest of a fingerprint, for cache keys and file names."""
    return hashlib.sha256(json.dumps(dict(print_), sort_keys=True).encode()).hexdigest()[:12]


def describe_fingerprint(print_: Mapping[str, Any]) -> str:
    where = print_.get("gpu") or f"{print_.get('cpu')} ({print_.get('threads')} thread(s))"
    software = f"torch {print_.get('torch')}" + (f", onnxruntime {print_['onnxruntime']}"
                                                 if print_.get("onnxruntime") else "")
    return f"{print_.get('runtime')} on {where}, {software}"


def _check_cuda(device: str) -> None:
    if not torch.cuda.is_available():
        raise LatencyError(f"--device {device}: this machine has no CUDA GPU that torch can use "
                           f"(torch {torch.__version__}); measure on cpu, or on a GPU node with ray:<resource>:cuda")
    index = torch.device(device).index or 0
    if index >= torch.cuda.device_count():
        raise LatencyError(f"--device {device}: there are only {torch.cuda.device_count()} CUDA device(s)")


@contextlib.contextmanager
def _threads(count: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _torch_runner(model: nn.Module, x: torch.Tensor, protocol: Protocol) -> Callable[[], Any]:
    device = torch.device(protocol.device)
    model = model.to(device).eval()
    x = x.to(device)

    def run() -> Any:
        with torch.inference_mode():
            return model(x)
    return run


def _onnxruntime_runner(model: nn.Module, x: torch.Tensor, protocol: Protocol) -> Callable[[], Any]:
    import onnxruntime

    from ..conversion import quiet_torch, write_onnx

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = protocol.threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    providers = ["CPUExecutionProvider"]
    if protocol.device.startswith("cuda"):
        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            raise LatencyError("--runtime onnxruntime --device cuda needs onnxruntime-gpu (this onnxruntime has "
                               f"{', '.join(onnxruntime.get_available_providers())})")
        index = torch.device(protocol.device).index or 0
        providers = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    with tempfile.TemporaryDirectory() as tmp, quiet_torch():
        path = Path(tmp) / "model.onnx"
        write_onnx(model.cpu().eval(), path, tuple(x.shape))
        session = onnxruntime.InferenceSession(str(path), options, providers=providers)
    feed = {"input": x.cpu().numpy()}
    return lambda: session.run(None, feed)


RUNNERS: dict[str, Callable[[nn.Module, torch.Tensor, Protocol], Callable[[], Any]]] = {
    "torch": _torch_runner, "onnxruntime": _onnxruntime_runner}


def measure_model(model: nn.Module, input_shape: tuple[int, ...], *, protocol: Protocol) -> Latency:
    """Times `model` on this machine on a random batch of `input_shape` (batch replaced by the protocol's)."""
    from torch.utils import benchmark

    if protocol.remote:
        raise LatencyError(f"measure_model runs here; a {protocol.device} device measures an architecture "
                           f"(measure_arch) on its node")
    print_ = fingerprint(protocol)
    shape = (protocol.batch, *input_shape[1:])
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    with _threads(protocol.threads):
        run = RUNNERS[protocol.runtime](model, x, protocol)
        for _ in range(protocol.warmup):
            run()
        timer = benchmark.Timer(stmt="run()", globals={"run": run}, num_threads=protocol.threads)
        fastest, times, runs = [], [], 0
        for i in range(protocol.rounds):
            if i and protocol.gap:
                time.sleep(protocol.gap)
            measured = timer.blocked_autorange(min_run_time=protocol.seconds)  # per-run times of its blocks
            fastest.append(min(measured.times) * 1e3)
            times += [t * 1e3 for t in measured.times]
            runs += len(measured.times) * measured.number_per_run
    ms = min(fastest)
    return Latency(ms, (max(fastest) - ms) / ms, tuple(fastest), statistics.median(times), runs, shape,
                   protocol, print_)


_CACHE: dict[tuple[str, ...], Latency] = {}


def _cache_key(space: SearchSpace, arch: Arch, protocol: Protocol) -> tuple[str, ...]:
    # a ray: device is named by its resource; its node's fingerprint is known only once it has answered
    where = f"ray:{protocol.device}" if protocol.remote else fingerprint_key(fingerprint(protocol))
    return (where, json.dumps(protocol.to_dict(), sort_keys=True), space.name,
            repr(sorted(space.options.items())), arch.key())


def measure_arch(space: SearchSpace, arch: Arch, *, protocol: Protocol) -> Latency:
    """The latency of `arch` built at its target configuration, on the protocol's device (cached)."""
    key = _cache_key(space, arch, protocol)
    if key not in _CACHE:
        if protocol.remote:
            _CACHE[key] = _measure_on_ray(space, arch, protocol)
        else:
            _CACHE[key] = measure_model(*_target_model(space, arch), protocol=protocol)
    return _CACHE[key]


def _target_model(space: SearchSpace, arch: Arch) -> tuple[nn.Module, tuple[int, ...]]:
    """`arch` built at its target configuration, and the input shape it takes there."""
    target = space.target(arch)
    return space.build(arch, num_classes=target.num_classes), tuple(target.input_shape)


def _measure_remote(model: nn.Module, input_shape: tuple[int, ...], protocol: dict[str, Any]) -> dict[str, Any]:
    """What a Ray node runs: time the model the driver built and shipped (so the node needs no registry)."""
    return measure_model(model, input_shape, protocol=Protocol.from_dict(protocol)).to_dict()


def _measure_on_ray(space: SearchSpace, arch: Arch, protocol: Protocol) -> Latency:
    """Runs the measurement as a Ray task that needs one unit of the custom resource, so Ray places it on
    the node started with `ray start --resources '{"<resource>": 1}'`; the figure's fingerprint is that
    node's. Joins the running cluster (RAY_ADDRESS, or the local one) unless Ray is already initialised."""
    import ray

    resource = protocol.remote
    if not ray.is_initialized():
        try:
            ray.init(address=os.environ.get("RAY_ADDRESS", "auto"), log_to_driver=False, logging_level="ERROR")
        except ConnectionError as exc:
            raise LatencyError(f"--device {protocol.device}: no Ray cluster to join ({exc}); start one with "
                               f"`ray start --head --resources '{{\"{resource}\": 1}}'` or set RAY_ADDRESS") from None
    if ray.cluster_resources().get(resource, 0) < 1:
        known = sorted(k for k in ray.cluster_resources() if k not in ("CPU", "GPU", "memory", "object_store_memory")
                       and not k.startswith("node:"))
        raise LatencyError(f"--device {protocol.device}: no node of the Ray cluster advertises the resource "
                           f"{resource!r} (custom resources: {', '.join(known) or 'none'}); start one with "
                           f"`ray start --address ... --resources '{{\"{resource}\": 1}}'`")
    on_node = protocol.on_node()
    task = ray.remote(_measure_remote).options(
        resources={resource: 1}, num_cpus=protocol.threads if on_node.device == "cpu" else 0,
        num_gpus=1 if on_node.device.startswith("cuda") else 0, max_retries=1)
    ref = task.remote(*_target_model(space, arch), on_node.to_dict())
    figure = Latency.from_dict(ray.get(ref))
    return replace(figure, protocol=protocol)


def clear_cache() -> None:
    _CACHE.clear()



@dataclass
class LatencyPlan:
    """How a search learns an architecture's latency, in ms. Three forms:

    - `protocol` alone: measured on the protocol's device, before training;
    - `protocol` and a `predictor` (a lookup table): predicted before training, corrected by what the search
      measures (`observe`), and measured on the device for the architectures it trains, which has the last
      word. The correction scales predictions by the 75th percentile of the measured/predicted ratios so far
      (their largest while there are fewer than 4): a table is a snapshot of a machine whose speed drifts,
      and a width solved to the predicted limit would otherwise be trained only to fail its measured check
      about half the time; the upper quantile leaves a margin;
    - a `predictor` alone (a device's column of a latency table, or a predictor fitted from a few
      measurements of a device nasplat cannot reach): its figure is final, and `free` to ask, so strategies
      may check a latency limit before they propose.
    """

    protocol: Protocol | None
    predictor: Any = None  # anything with predict(space, arch) -> ms: a LatencyTable, DeviceTable, LatencyPredictor
    ratios: list[float] = field(default_factory=list)  # measured / predicted, as observed

    def __post_init__(self) -> None:
        if self.protocol is None and self.predictor is None:
            raise ValueError("a latency plan needs a protocol to measure by, a predictor, or both")

    @property
    def free(self) -> bool:
        """Whether a figure costs nothing to get: no device measures it."""
        return self.protocol is None

    @property
    def confirmed(self) -> bool:
        """Whether trained architectures are measured after a prediction admitted them."""
        return self.protocol is not None and self.predictor is not None

    def estimate(self, space: SearchSpace, arch: Arch) -> float:
        """The figure known before training, in ms: the predictor's (corrected where a measurement confirms
        it), else a measurement."""
        if self.predictor is None:
            return self.measure(space, arch)
        return self.predicted(space, arch) * self.correction

    def predicted(self, space: SearchSpace, arch: Arch) -> float:
        """The predictor's own figure, in ms, before any correction."""
        return float(self.predictor.predict(space, arch))

    @property
    def correction(self) -> float:
        if not self.ratios:
            return 1.0
        if len(self.ratios) < 4:
            return max(self.ratios)
        return statistics.quantiles(self.ratios, n=4)[2]

    def observe(self, metrics: Mapping[str, float]) -> None:
        """Learns from a result that carries both the predictor's own figure and a measurement (a no-op
        otherwise)."""
        if self.confirmed and metrics.get("latency_predicted") and "latency" in metrics:
            self.ratios.append(float(metrics["latency"]) / float(metrics["latency_predicted"]))

    def measure(self, space: SearchSpace, arch: Arch) -> float:
        if self.protocol is None:
            raise ValueError("this latency plan has no device to measure on; its predictor's figure is final")
        return measure_arch(space, arch, protocol=self.protocol).ms
