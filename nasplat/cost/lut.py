"""Per-op latency lookup tables: profile every op a space can produce on a device once, then predict an
architecture's latency in milliseconds by summing its ops, without building or timing it.

A space decomposes an architecture into `Unit`s (`SearchSpace.latency_units`): the ops a table keys, in
the order the model runs them, covering its whole forward pass; `latency_unit_space()` lists every distinct
unit the space can produce. `build_lut` times each unit under a lighter per-unit protocol derived from the
user's (`unit_protocol`), writing the JSON table atomically every few seconds so that a killed build resumes
where it stopped. It then calibrates: it measures `calibrate` random architectures whole under the user's
protocol and fits `measured ~ scale * summed + offset_ms` with the Theil-Sen estimator (method "affine";
a robust line fit, so one measurement disturbed by a neighbour does not tilt it). The scale absorbs what
timing ops alone gets systematically wrong (an op timed on its own runs with its weights and input warm in
cache, and pays the timer's per-call overhead once per op rather than once per model); the offset, the
per-model work outside the units. With fewer than three architectures the fit is the median of
measured - summed alone (method "offset", scale 1).

Prediction is `scale * sum(mean of each unit) + offset_ms`. `validate` measures fresh random architectures
whole and reports the share predicted within +-10% and the Spearman rank correlation.

The file:

    {"format": 1, "space": ..., "space_options": {...}, "protocol": {...}, "unit_protocol": {...},
     "fingerprint": {...}, "fingerprint_key": ..., "complete": bool,
     "entries": {key: {"count": rounds, "mean": ms, "var": ms^2}},
     "calibration": {"method", "scale", "offset_ms", "seed", "n", "rows": [{"arch", "summed", "measured"}]}}

`mean` is the measurement's figure (`Latency.ms`), `var` the variance of its round figures, `count` the
number of rounds.
"""
from __future__ import annotations

import json
import math
import random
import statistics
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UserError
from ..files import write_json
from .latency import LatencyError, Protocol, describe_fingerprint, fingerprint, fingerprint_key, measure_arch, \
    measure_model

if TYPE_CHECKING:
    from rich.console import Console
    from torch import nn

    from ..arch import Arch
    from ..space import SearchSpace

FORMAT = 1
SAVE_SECONDS = 5.0  # the table is rewritten (atomically) at least this often while profiling
ACCURACY_BAND = 0.10  # validate reports the share of predictions within +-10% of the measurement
# what the fingerprint may differ in before a table is refused rather than warned about
HARD_FIELDS = ("device", "runtime", "threads")


@dataclass(frozen=True)
class Unit:
    """One op of a decomposed architecture: a readable stable key, e.g. `mbconv_ir-56x56x24-o40-k5-s2-e6-se0.25`
    (op, input HxWxC, output channels, kernel, stride, expansion), its input shape at batch 1, and a builder
    of a fresh module (not part of equality)."""

    key: str
    input_shape: tuple[int, ...]
    build: Callable[[], nn.Module] = field(compare=False, repr=False)


def unit_protocol(protocol: Protocol) -> Protocol:
    """The lighter protocol units are timed with: at most 3 warm-up runs, 3 rounds of at most 20 ms with no
    gap (units take from 0.1 to 10 ms, and there are thousands: about 0.1 s each). Units are profiled in a
    shuffled order, so that a phase in which the machine runs slow spreads its error over unrelated units
    instead of one stage's, and the errors of an architecture's units partly cancel in its sum."""
    return replace(protocol, warmup=min(protocol.warmup, 3), rounds=min(protocol.rounds, 3),
                   seconds=min(protocol.seconds, 0.02), gap=0.0)


def default_path(space: SearchSpace | str, protocol: Protocol, *, root: Path | str = "runs/latency") -> Path:
    """`runs/latency/<space>-<fingerprint key>.json` (`-b<batch>` added for a batch other than 1)."""
    name = space if isinstance(space, str) else space.name
    batch = f"-b{protocol.batch}" if protocol.batch != 1 else ""
    return Path(root) / f"{name}-{fingerprint_key(fingerprint(protocol))}{batch}.json"


def _units_of(space: SearchSpace, arch: Arch) -> list[Unit]:
    try:
        return space.latency_units(arch)
    except NotImplementedError as exc:
        raise LatencyError(str(exc)) from None


def _unit_space(space: SearchSpace) -> Iterator[Unit]:
    try:
        yield from space.latency_unit_space()
    except NotImplementedError as exc:
        raise LatencyError(str(exc)) from None


def _differences(old: Mapping[str, Any], new: Mapping[str, Any], fields: list[str]) -> str:
    """`protocol warmup 1 here 10, ...`: the differing sub-fields (unit_protocol left out when the protocol
    it derives from differs)."""
    out = []
    for name in fields:
        if name == "unit_protocol" and "protocol" in fields:
            continue
        a, b = old.get(name), new.get(name)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += [f"{name} {k} {a.get(k)} here {b.get(k)}" for k in sorted({*a, *b}) if a.get(k) != b.get(k)]
        else:
            out.append(f"{name} {a} here {b}")
    return ", ".join(out)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise LatencyError(f"latency table {path}: no such file (make one with `nasplat latency build-lut "
                           f"SPACE --out {path}`)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LatencyError(f"latency table {path} is not valid JSON ({exc})") from None
    missing = [k for k in ("space", "space_options", "protocol", "fingerprint", "entries") if k not in data] \
        if isinstance(data, dict) else ["all fields"]
    if missing:
        raise LatencyError(f"{path} is no latency table (it lacks {', '.join(missing)}); make one with "
                           f"`nasplat latency build-lut SPACE`")
    return data


def random_archs(space: SearchSpace, n: int, *, seed: int | str) -> list[Arch]:
    """`n` architectures spread over what a search visits: searched parameters sampled, derived ones
    solved for a MAC budget drawn log-uniformly between the smallest architecture's MACs and those of the
    unconstrained one (for TinyNet: random r and d, and a width between 0.25 and 1). Deterministic for a
    seed."""
    from ..constraints import Constraint
    from .flops import measure

    rng = random.Random(seed)
    low = measure(space, space.smallest())["macs"]
    archs = []
    for _ in range(n):
        params = space.sample(rng)
        arch = space.complete(params)
        high = measure(space, arch)["macs"]
        if high > low:
            budget = math.exp(rng.uniform(math.log(low), math.log(high)))
            arch = space.complete(params, constraints=[Constraint("macs", budget)])
        archs.append(arch)
    return archs


def _fit(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """measured ~ scale * summed + offset_ms, fitted by Theil-Sen (the median of the pairwise slopes, then the
    median intercept: robust to one measurement a busy neighbour disturbed) with three or more rows; with
    fewer, or a fit with no positive slope, the median of measured - summed alone (scale 1)."""
    summed = [float(r["summed"]) for r in rows]
    measured = [float(r["measured"]) for r in rows]
    if len(rows) >= 3 and len(set(summed)) > 1:
        from scipy.stats import theilslopes

        slope, intercept, *_ = theilslopes(measured, summed)
        if slope > 0:
            return {"method": "affine", "scale": float(slope), "offset_ms": float(intercept)}
    offset = statistics.median(m - s for m, s in zip(measured, summed)) if rows else 0.0
    return {"method": "offset", "scale": 1.0, "offset_ms": offset}


def _progress(progress: bool | Console) -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    console = progress if isinstance(progress, Console) else Console(stderr=True)
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("ETA"), TimeRemainingColumn(), console=console, transient=False,
                    disable=progress is False)


def build_lut(space: SearchSpace, *, protocol: Protocol, out: Path | str, calibrate: int = 10, seed: int = 0,
              progress: bool | Console = True, limit: int | None = None, units: Iterable[Unit] | None = None) -> Path:
    """Profiles every unit of `space.latency_unit_space()` (or `units`; the first `limit` of them) on this
    machine into the table at `out`, then calibrates it on `calibrate` random architectures measured whole
    (their units are profiled too where the unit list left them out). Returns `out`.

    Resumable: the table is rewritten atomically every few seconds, and a rerun on the same `out` skips the
    keys it holds and the calibration architectures already measured. A table made on another machine,
    software, protocol or space is refused (LatencyError) rather than mixed into.
    """
    if protocol.remote:
        raise LatencyError(f"a latency table is built on the machine it describes; run `nasplat latency build-lut` "
                           f"on the node behind {protocol.device} (with --device {protocol.on_node().device})")
    out = Path(out)
    per_unit = unit_protocol(protocol)
    print_ = fingerprint(protocol)
    head = {"format": FORMAT, "space": space.name, "space_options": dict(space.options),
            "protocol": protocol.to_dict(), "unit_protocol": per_unit.to_dict(), "fingerprint": print_,
            "fingerprint_key": fingerprint_key(print_)}
    table: dict[str, Any] = {**head, "complete": False, "entries": {}, "calibration": None}
    resumed = out.exists()
    if resumed:
        old = _read_json(out)
        differing = [k for k in head if json.dumps(old.get(k), sort_keys=True) != json.dumps(head[k], sort_keys=True)]
        if differing:
            detail = (f"made on {describe_fingerprint(old['fingerprint'])}, here {describe_fingerprint(print_)}"
                      if "fingerprint" in differing else _differences(old, head, differing))
            raise LatencyError(f"cannot resume {out}: it differs in {', '.join(differing)} ({detail}); "
                               f"give another --out or delete it")
        table.update(entries=dict(old["entries"]), calibration=old.get("calibration"))
    entries: dict[str, dict[str, float]] = table["entries"]
    listed = list(_unit_space(space) if units is None else units)
    listed = listed[:limit] if limit is not None else listed
    calibration_archs = random_archs(space, calibrate, seed=f"calibrate-{seed}") if calibrate else []
    for arch in calibration_archs:  # profile the calibration architectures' units too, whatever the list
        listed += _units_of(space, arch)
    todo = list({u.key: u for u in listed if u.key not in entries}.values())
    random.Random(seed).shuffle(todo)
    last_save = time.monotonic()

    def save(force: bool = False) -> None:
        nonlocal last_save
        if force or time.monotonic() - last_save >= SAVE_SECONDS:
            write_json(out, table)
            last_save = time.monotonic()

    bar = _progress(progress)
    if resumed and progress is not False:
        bar.console.print(f"resuming {out}: {len(entries)} ops measured, {len(todo)} to go")
    try:
        with bar:
            task = bar.add_task(f"profiling {space.name} ops", total=len(todo))
            for unit in todo:
                figure = measure_model(unit.build(), unit.input_shape, protocol=per_unit)
                rounds = figure.rounds_ms
                entries[unit.key] = {"count": len(rounds), "mean": figure.ms,
                                     "var": statistics.variance(rounds) if len(rounds) > 1 else 0.0}
                bar.advance(task)
                save()
            save(force=True)
            rows = _calibrate(space, table, calibration_archs, protocol, bar, save, seed=seed)
    finally:
        save(force=True)
    table["calibration"] = {**_fit(rows), "seed": seed, "n": len(rows), "rows": rows}
    table["complete"] = True
    save(force=True)
    return out


def _calibrate(space: SearchSpace, table: dict[str, Any], archs: list[Arch], protocol: Protocol, bar: Any,
               save: Callable[..., None], *, seed: int) -> list[dict[str, Any]]:
    previous = table.get("calibration") or {}
    done = {r["arch"]: r for r in previous.get("rows", [])} if previous.get("seed") == seed else {}
    rows: list[dict[str, Any]] = []
    task = bar.add_task(f"calibrating on {len(archs)} whole architectures", total=len(archs))
    for arch in archs:
        row = done.get(arch.to_json())
        if row is None:
            summed = sum(table["entries"][u.key]["mean"] for u in _units_of(space, arch))
            measured = measure_arch(space, arch, protocol=protocol).ms
            row = {"arch": arch.to_json(), "summed": summed, "measured": measured}
        rows.append(row)
        table["calibration"] = {"method": "partial", "seed": seed, "rows": rows}
        bar.advance(task)
        save()
    return rows


class MissingEntry(UserError, LookupError):
    """A table without the op asked for: built for another version of the space, or only in part."""


class LatencyTable:
    """A latency table loaded from `build_lut`'s JSON: predicts architectures' latency in ms."""

    def __init__(self, data: Mapping[str, Any], *, path: Path | None = None):
        self.data = dict(data)
        self.path = path
        self.entries: dict[str, Mapping[str, float]] = dict(data["entries"])

    @classmethod
    def load(cls, path: Path | str) -> LatencyTable:
        path = Path(path)
        return cls(_read_json(path), path=path)

    @property
    def space(self) -> str:
        return str(self.data["space"])

    @property
    def space_options(self) -> dict[str, Any]:
        return dict(self.data["space_options"])

    @property
    def protocol(self) -> Protocol:
        return Protocol.from_dict(self.data["protocol"])

    @property
    def fingerprint(self) -> dict[str, Any]:
        return dict(self.data["fingerprint"])

    @property
    def calibration(self) -> dict[str, Any]:
        """{"method", "scale", "offset_ms", ...}; LatencyError while the build has not finished."""
        calibration = self.data.get("calibration") or {}
        if not self.data.get("complete") or calibration.get("method") not in ("affine", "offset"):
            raise LatencyError(f"latency table {self._name} is unfinished (its build was interrupted); "
                               f"finish it by rerunning `nasplat latency build-lut {self.space} --out {self._name}`")
        return calibration

    @property
    def _name(self) -> str:
        return str(self.path) if self.path else f"for {self.space}"

    def describe_machine(self) -> str:
        """Where and how the table was measured, e.g. `torch on AMD EPYC (1 thread(s)), torch 2.4.1, batch 1`."""
        return f"{describe_fingerprint(self.fingerprint)}, batch {self.protocol.batch}"

    def __len__(self) -> int:
        return len(self.entries)

    def __repr__(self) -> str:
        return (f"LatencyTable({self.space}, {len(self)} ops, {describe_fingerprint(self.fingerprint)}"
                + (f", {self.path}" if self.path else "") + ")")

    def lookup(self, key: str) -> float:
        """The measured latency of one unit in ms (uncalibrated); LookupError naming a key the table lacks."""
        entry = self.entries.get(key)
        if entry is None:
            raise MissingEntry(f"latency table {self._name} has no entry for op {key!r}; it was built for another "
                               f"version of space {self.space!r} or only in part: rebuild it with "
                               f"`nasplat latency build-lut {self.space}`")
        return float(entry["mean"])

    def summed(self, space: SearchSpace, arch: Arch) -> float:
        """The sum of the table's figures for the architecture's units, in ms, before calibration."""
        self.check_space(space)
        return sum(self.lookup(u.key) for u in _units_of(space, arch))

    def predict(self, space: SearchSpace, arch: Arch) -> float:
        """Predicted latency of `arch` in ms: scale * (sum of its units' figures) + offset_ms."""
        calibration = self.calibration
        return float(calibration["scale"]) * self.summed(space, arch) + float(calibration["offset_ms"])

    def check_space(self, space: SearchSpace) -> None:
        """Refuses (LatencyError) a space of another name or options than the table was built for."""
        if space.name != self.space:
            raise LatencyError(f"latency table {self._name} was built for space {self.space!r}, not {space.name!r}")
        if json.dumps(dict(space.options), sort_keys=True) != json.dumps(self.space_options, sort_keys=True):
            raise LatencyError(f"latency table {self._name} was built for {self.space} with options "
                               f"{self.space_options}, not {dict(space.options)}; build one for these options")

    def check(self, protocol: Protocol) -> None:
        """Refuses (LatencyError) a table made on another kind of device, runtime, thread count or batch than
        `protocol`'s; warns where only the machine or software differ (CPU model, torch version)."""
        made, protocol_then = self.fingerprint, self.protocol
        if protocol.remote:  # the node's hardware is known only once it answers: compare what the protocol says
            here = {"device": protocol.on_node().device.split(":")[0], "runtime": protocol.runtime,
                    "threads": protocol.threads}
            hard = [k for k in HARD_FIELDS if made.get(k) != here[k]]
        else:
            here = fingerprint(protocol)
            hard = [k for k in HARD_FIELDS if made.get(k) != here.get(k)]
        if protocol.batch != protocol_then.batch:
            hard.append("batch")
            made, here = {**made, "batch": protocol_then.batch}, {**here, "batch": protocol.batch}
        if hard:
            raise LatencyError(f"latency table {self._name} was made for " + ", ".join(
                f"{k} {made.get(k)}" for k in hard) + ", but latency is measured with " + ", ".join(
                f"{k} {here.get(k)}" for k in hard) + "; build a table for this configuration")
        if protocol.remote:
            warnings.warn(f"latency table {self._name} was made on {describe_fingerprint(made)}; the hardware behind "
                          f"{protocol.device} cannot be checked before it measures", stacklevel=2)
            return
        soft = sorted(k for k in set(made) | set(here) if made.get(k) != here.get(k))
        if soft:
            warnings.warn(f"latency table {self._name} was made on {describe_fingerprint(made)}, but this machine is "
                          f"{describe_fingerprint(here)} (differing: {', '.join(soft)}); its predictions may be off",
                          stacklevel=2)


def validate(space: SearchSpace, table: LatencyTable, *, n: int = 20, seed: int = 0,
             protocol: Protocol | None = None) -> dict[str, Any]:
    """Measures `n` random architectures whole (with `protocol`, by default the table's; never the
    calibration's architectures) and compares them with the table's predictions (`score`)."""
    protocol = protocol or table.protocol
    table.check_space(space)
    table.check(protocol)
    table.calibration  # noqa: B018  (an unfinished table fails here, before any measuring)
    return score(space, table, [(arch, measure_arch(space, arch, protocol=protocol).ms)
                                for arch in random_archs(space, n, seed=f"validate-{seed}")])


def score(space: SearchSpace, predictor: Any, measured: Iterable[tuple[Arch, float]]) -> dict[str, Any]:
    """How well `predictor.predict(space, arch)` matches measured (arch, ms) pairs: {"n", "within": share with
    |predicted / measured - 1| <= 10%, "spearman": rank correlation, "mean_abs_error": mean |relative error|,
    "rows": [{"arch", "describe", "predicted", "measured", "error"}]}."""
    from scipy.stats import spearmanr

    rows = []
    for arch, ms in measured:
        predicted = float(predictor.predict(space, arch))
        rows.append({"arch": arch.to_json(), "describe": space.describe(arch), "predicted": predicted,
                     "measured": ms, "error": predicted / ms - 1})
    errors = [abs(r["error"]) for r in rows]
    rho = float(spearmanr([r["predicted"] for r in rows], [r["measured"] for r in rows]).statistic) \
        if len(rows) > 1 else math.nan
    return {"n": len(rows), "within": sum(e <= ACCURACY_BAND for e in errors) / len(rows) if rows else math.nan,
            "spearman": rho, "mean_abs_error": statistics.fmean(errors) if rows else math.nan, "rows": rows}
