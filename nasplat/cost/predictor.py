"""Few-shot latency predictors: a new device's latency of any architecture, from a few measured ones.

A user measures N architectures on a device nasplat cannot reach (`arch,latency_ms` rows, `read_measured`);
`fit_predictor` fits that device's latency from those N figures plus prior knowledge, and the saved
`LatencyPredictor` is then a search's latency source (`predict(space, arch)`, in ms).

Prior knowledge, for a tabular space with a reference latency table (NAS-Bench-201 ships one of 14 devices,
`space.latency_table`): every other device's latency of every cell. Each reference column is first
denoised: a least-squares fit of it over all the table's cells on the cell's structure (a
one-hot of each edge's operation, the products of those of every two edges, the operations on a path from
input to output, and whether there is such a path), which keeps the device's per-operation costs and their
interactions and drops its measurement noise. The new device's latency is then fitted as a linear
combination of those denoised columns, twice, and the two fits averaged:

- "relative": latency = b + sum_d v_d * column_d / mean_d, least squares on relative errors (rows weighted
  by 1/latency), the intercept free and a ridge penalty on v whose strength comes from exact leave-one-out
  cross-validation over the N points (7 strengths, 1e-4 .. 1e2);
- "log": latency = c * column_k + b + sum_d u_d * column_d / mean_d, least squares on the log of the ratio
  (Gauss-Newton, 5 steps), where c * column_k is the single reference device whose geometric-mean ratio
  to the N points predicts them best in leave-one-out, and ridge penalties on b and on u (8 x 8 strengths,
  1e-3 .. 1e3 and none at all) shrink the fit towards that one-device ratio, chosen the same way.

Both fits are linear in the structural features, so the predictor stores one coefficient per feature
(`coef`) and needs nothing but the architecture to predict; the reference table's path and the columns it
used are stored, and checked on load, so that the file says what it was fitted from. Cells whose output
does not depend on their input (the space's `connected()` is false; 341 of NAS-Bench-201's 15,625) are left
out of the fit when at least 3 connected ones remain: on two of the shipped devices (Pixel 3, Raspberry
Pi 4) most of them take from 3 microseconds to 0.2 ms against 1 ms and more for any connected cell, and one
such point among 20 would pull every coefficient towards it. They are predicted like the others.

Why this method: in bench/latency_predictor.py (leave one device out over the 14 shipped devices, 20 draws
of N cells, scored on all 15,625 cells) it predicts 84.4% of the cells within +-10% with Spearman 0.973 on
average at N = 20 (81.5% / 0.968 at N = 10, 86.1% / 0.976 at N = 50), against 73.0% / 0.941 for the best
baseline (the best-correlated other device, rescaled) and 88.3% / 0.979 for the ceiling (the device's own
column fitted on all its cells). In development runs of the same protocol (not kept in bench/), the average
did a little better than either fit alone, and raw instead of denoised reference columns, non-negative least
squares on them, a ridge on the one-hot operations added to the fit, and choosing between the two fits by
leave-one-out did no better.

Spaces without a table (TinyNet) use the same two fits and average on other features: the per-op lookup
table's calibrated sum (`lut.predict(space, arch)`, when a `lut` is given), MACs and params (fvcore, in
millions), and every numeric parameter of the architecture (searched and derived; a one-hot for a choice of
non-numbers); the one-device ratio of the "log" fit is the LUT sum's or the MACs' ratio.

N may be as small as 3, but 10 or more are recommended: with 3 points the fit runs, the "log" fit keeps to
the one-device ratio, and accuracy falls off well below the N = 10 figures above (a development run, not
kept in bench/). Measured latencies of the same architecture listed twice
are averaged (`read_measured`).

The file (JSON, written atomically):

    {"format": 1, "kind": "nasplat-latency-predictor", "space": ..., "space_options": {...},
     "method": "reference-span" | "structure", "n": N, "reference": path | null, "columns": [...],
     "exclude": [...], "lut": path | null, "coef": {feature: ms}, "floor_ms": ms,
     "fit": {"prior": ..., "lambda_relative": ..., "lambda_log": [...], "loo_within10": ..., ...},
     "measured": [[arch text, ms], ...]}
"""
from __future__ import annotations

import csv
import itertools
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import UserError
from ..files import write_json
from ..tasks.tabular import load_table
from .device_table import KEY, latency_columns

if TYPE_CHECKING:
    from ..arch import Arch
    from ..space import SearchSpace

FORMAT = 1
KIND = "nasplat-latency-predictor"
MIN_MEASURED = 3
BAND = 0.10  # the accuracy figures count predictions within +-10% of the measurement
BIAS = "1"  # the feature that is 1 for every architecture (the intercept)
RELATIVE_LAMBDAS = tuple(10.0 ** k for k in range(-4, 3))
LOG_LAMBDAS = (*(10.0 ** k for k in range(-3, 4)), 1e9)  # 1e9: that part held at the one-device ratio
GAUSS_NEWTON_STEPS = 5
LOO_CAP = 1.0  # a leave-one-out error counts at most this much (squared), so one wild point cannot decide
FLOOR = 0.1  # predictions are kept at or above this share of the smallest measured latency
LATENCY = "latency_ms"


# ---------------------------------------------------------------------------------------------- reading

def read_measured(space: SearchSpace, path: str | Path) -> list[tuple[Arch, float]]:
    """The (architecture, ms) rows of a CSV file with a header naming `arch` (`space.to_text(arch)`) and
    `latency_ms` (other columns are ignored). An architecture listed more than once gets the mean of its
    figures (repeated measurements). ValueError, one line naming the file and line, for anything else."""
    path = Path(path)
    where = f"measured latencies {path}"
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [name.strip() for name in reader.fieldnames or []]
            missing = [c for c in (KEY, LATENCY) if c not in header]
            if missing:
                raise UserError(f"{where} line 1: the header lacks {' and '.join(repr(c) for c in missing)} (it "
                                f"has: {', '.join(repr(h) for h in header) or 'nothing'}); expected a header "
                                f"row like `{KEY},{LATENCY}`, then one architecture and its latency in ms a row")
            reader.fieldnames = header
            figures: dict[Arch, list[float]] = {}
            for record in reader:
                line = reader.line_num
                text, value = (record.get(KEY) or "").strip(), (record.get(LATENCY) or "").strip()
                try:
                    arch = space.parse(text)
                except ValueError as exc:
                    raise UserError(f"{where} line {line}: {_one_line(exc)}") from None
                try:
                    ms = float(value)
                except ValueError:
                    raise UserError(f"{where} line {line}: {LATENCY} {value!r} is not a number; give the "
                                    f"latency in milliseconds, e.g. 12.5") from None
                if not (math.isfinite(ms) and ms > 0):
                    raise UserError(f"{where} line {line}: {LATENCY} {value!r} is not a latency; give a "
                                    f"positive, finite number of milliseconds")
                figures.setdefault(arch, []).append(ms)
    except FileNotFoundError:
        raise UserError(f"{where}: no such file; give a CSV file with a header `{KEY},{LATENCY}` and one "
                        f"measured architecture a row") from None
    except IsADirectoryError:
        raise UserError(f"{where} is a directory, not a CSV file of `{KEY},{LATENCY}` rows") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"{where} is not a readable CSV file ({_one_line(exc)}); expected UTF-8 text with a "
                        f"header `{KEY},{LATENCY}`") from None
    if len(figures) < MIN_MEASURED:
        raise UserError(f"{where} holds {len(figures)} distinct architecture{'s' * (len(figures) != 1)}; a "
                        f"predictor needs at least {MIN_MEASURED} (10 or more recommended)")
    return [(arch, sum(values) / len(values)) for arch, values in figures.items()]


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


# ------------------------------------------------------------------------------- structural features

def structure_features(space: SearchSpace, arch: Arch) -> dict[str, float]:
    """The features a tabular space's architecture is described by, each 1 where present: the bias, one
    per parameter (`name=value`, choices; a numeric parameter of another kind gives its value), one per two
    choices of different parameters (`a=x&b=y`), and for spaces with a cell graph (`graph()` whose edges
    carry `op`, input node lowest, output highest) the operations on an input-to-output path
    (`live:j>i=op`) and `connected` where there is such a path."""
    from ..space import Choice

    features: dict[str, float] = {BIAS: 1.0}
    chosen = []
    for name, param in sorted(space.parameters().items()):
        value = arch[name]
        if isinstance(param, Choice):
            chosen.append(f"{name}={value}")
        else:
            features[name] = float(value)
    for item in chosen:
        features[item] = 1.0
    for a, b in itertools.combinations(chosen, 2):
        features[f"{a}&{b}"] = 1.0
    graph = getattr(space, "graph", None)
    if callable(graph):
        import networkx as nx

        cell = graph(arch)
        source, sink = min(cell.nodes), max(cell.nodes)
        ahead = nx.descendants(cell, source) | {source}
        behind = nx.ancestors(cell, sink) | {sink}
        for j, i, data in cell.edges(data=True):
            if j in ahead and i in behind:
                features[f"live:{j}>{i}={data.get('op')}"] = 1.0
        if sink in ahead:
            features["connected"] = 1.0
    return features


def _connected(space: SearchSpace, arch: Arch) -> bool:
    test = getattr(space, "connected", None)
    return bool(test(arch)) if callable(test) else True


@dataclass(frozen=True)
class ReferenceDesign:
    """A reference latency table over a space: its rows' structural features (`features`, rows x names),
    latency columns (`latency`, rows x columns), which rows are connected, and each column's denoised fit
    (`denoise`, names x columns: the least-squares coefficients of the column on the features, over all rows)."""

    path: Path
    keys: tuple[str, ...]
    index: Mapping[str, int]
    names: tuple[str, ...]
    features: np.ndarray
    columns: tuple[str, ...]
    latency: np.ndarray
    connected: np.ndarray
    denoise: np.ndarray

    def column(self, name: str) -> int:
        return self.columns.index(name)

    def coef_vector(self, coef: Mapping[str, float]) -> np.ndarray:
        """A predictor's coefficients aligned with `names` (0 for a feature it lacks)."""
        return np.array([coef.get(name, 0.0) for name in self.names])


def reference_design(space: SearchSpace, path: str | Path) -> ReferenceDesign:
    """The design of the table at `path` (every row parsed as an architecture of `space`), built once per
    space, file and file version (a few seconds for NAS-Bench-201's 15,625 rows)."""
    resolved = Path(path).expanduser().resolve()
    try:
        stat = resolved.stat()
    except OSError as exc:
        raise UserError(f"reference latency table {path} cannot be read ({exc.strerror or exc})") from None
    key = (space.name, json.dumps(dict(space.options), sort_keys=True, default=str), resolved, stat.st_mtime_ns,
           stat.st_size)
    if key not in _DESIGNS:
        while len(_DESIGNS) >= 2:
            _DESIGNS.pop(next(iter(_DESIGNS)))
        _DESIGNS[key] = _design(space, resolved)
    return _DESIGNS[key]


_DESIGNS: dict[tuple[Any, ...], ReferenceDesign] = {}


def _design(space: SearchSpace, path: Path) -> ReferenceDesign:
    table = load_table(path, key=KEY)
    columns = latency_columns(table)
    for column in columns:
        table.numeric(column, what="latency column")
    keys = tuple(table.rows)
    rows, connected, names = [], [], {}
    for key in keys:
        try:
            arch = space.parse(key)
        except ValueError as exc:
            raise UserError(f"reference latency table {path}: row {key!r} names no {space.name} architecture "
                            f"({_one_line(exc)})") from None
        features = structure_features(space, arch)
        for feature in features:
            names.setdefault(feature, len(names))
        rows.append(features)
        connected.append(bool(features.get("connected")) if callable(getattr(space, "graph", None))
                         else _connected(space, arch))
    matrix = np.zeros((len(keys), len(names)))
    for r, features in enumerate(rows):
        for feature, value in features.items():
            matrix[r, names[feature]] = value
    latency = np.array([[float(table.rows[key][c]) for c in columns] for key in keys])  # type: ignore[arg-type]
    mask = np.array(connected, dtype=bool)
    # least squares by the normal equations (binary features: well scaled), the min-norm solution by pinv
    denoise = np.linalg.pinv(matrix.T @ matrix, hermitian=True) @ (matrix.T @ latency)
    return ReferenceDesign(path, keys, {k: i for i, k in enumerate(keys)}, tuple(names), matrix, tuple(columns),
                           latency, mask, denoise)


# ------------------------------------------------------------------------------------------ the fits

@dataclass(frozen=True)
class _Fit:
    """pred = bias + basis @ weights, and the fit's leave-one-out predictions of the N points."""

    bias: float
    weights: np.ndarray
    loo: np.ndarray
    info: dict[str, Any]


def _fit_relative(basis: np.ndarray, y: np.ndarray) -> _Fit:
    """latency = b + basis/mean @ v, least squares on relative errors (rows weighted by 1/latency), the
    intercept free, ridge on v with its strength chosen by exact leave-one-out (the weighted hat matrix)."""
    scale = basis.mean(0)
    scale[scale == 0] = 1.0
    design = np.hstack([np.ones((len(y), 1)), basis / scale])
    a = design / y[:, None]
    ata, atb = a.T @ a, a.T @ np.ones(len(y))
    best = None
    for lam in RELATIVE_LAMBDAS:
        penalty = np.r_[1e-8, np.full(basis.shape[1], lam)]
        inverse = np.linalg.pinv(ata + np.diag(penalty))
        beta = inverse @ atb
        hat = np.einsum("ij,jk,ik->i", a, inverse, a)
        residual = (1.0 - a @ beta) / np.maximum(1.0 - hat, 1e-9)  # relative leave-one-out error
        error = float(np.mean(np.minimum(residual ** 2, LOO_CAP)))
        if best is None or error < best[0]:
            best = (error, beta, y * (1.0 - residual), lam)
    error, beta, loo, lam = best  # type: ignore[misc]
    return _Fit(float(beta[0]), beta[1:] / scale, loo, {"lambda_relative": lam})


def _fit_log(prior: np.ndarray, basis: np.ndarray, y: np.ndarray, prior_names: Sequence[str]) -> _Fit:
    """latency = c * prior_k + b + basis/mean @ u on log ratios: prior_k is the prior column whose
    geometric-mean ratio predicts the points best in leave-one-out; ridge on b and u, shrinking towards
    that ratio, with strengths chosen by approximate leave-one-out (the last Gauss-Newton step's hat)."""
    n = len(y)
    logs = np.log(y)[:, None] - np.log(np.maximum(prior, 1e-12))
    loo_logs = (logs.sum(0)[None, :] - logs) / max(n - 1, 1)
    errors = np.mean(np.minimum((logs - loo_logs) ** 2, LOO_CAP), 0)
    k = int(np.argmin(errors))
    ratio = float(np.exp(logs[:, k].mean()))
    base = ratio * prior[:, k]
    scale = basis.mean(0)
    scale[scale == 0] = 1.0
    design = np.hstack([np.ones((n, 1)), basis / scale])
    best = (float(errors[k]), np.zeros(design.shape[1]), np.exp(loo_logs[:, k]) * prior[:, k], (math.inf, math.inf))
    log_y = np.log(y)
    for lam_bias, lam_basis in itertools.product(LOG_LAMBDAS, LOG_LAMBDAS):
        penalty = np.r_[lam_bias, np.full(basis.shape[1], lam_basis)]
        beta = np.zeros(design.shape[1])
        for _ in range(GAUSS_NEWTON_STEPS):
            predicted = np.maximum(base + design @ beta, 1e-3 * y)
            jacobian = design / predicted[:, None]
            step = np.linalg.lstsq(jacobian.T @ jacobian + np.diag(penalty),
                                   jacobian.T @ (log_y - np.log(predicted)) - penalty * beta, rcond=None)[0]
            beta = beta + step
        predicted = np.maximum(base + design @ beta, 1e-3 * y)
        jacobian = design / predicted[:, None]
        inverse = np.linalg.pinv(jacobian.T @ jacobian + np.diag(penalty))
        hat = np.einsum("ij,jk,ik->i", jacobian, inverse, jacobian)
        residual = (log_y - np.log(predicted)) / np.maximum(1.0 - hat, 1e-9)
        error = float(np.mean(np.minimum(residual ** 2, LOO_CAP)))
        if error < best[0]:
            best = (error, beta, y * np.exp(-residual), (lam_bias, lam_basis))
    error, beta, loo, lams = best
    weights = beta[1:] / scale
    return _Fit(float(beta[0]), weights, loo, {"prior": prior_names[k], "prior_ratio": ratio, "prior_index": k,
                                               "lambda_log": [None if math.isinf(x) else x for x in lams]})


def _fit_both(prior: np.ndarray, basis: np.ndarray, y: np.ndarray, prior_names: Sequence[str]) \
        -> tuple[float, np.ndarray, np.ndarray, dict[str, Any]]:
    """The average of the relative and the log fit: (bias, basis weights, prior weights, info); the info
    holds the leave-one-out figures of the average over the N points."""
    relative = _fit_relative(basis, y)
    log = _fit_log(prior, basis, y, prior_names)
    prior_weights = np.zeros(prior.shape[1])
    prior_weights[log.info.pop("prior_index")] = 0.5 * log.info["prior_ratio"]
    loo = 0.5 * (relative.loo + log.loo)
    ratio = loo / y
    info = {**relative.info, **log.info, "loo_within10": float(np.mean(np.abs(ratio - 1) <= BAND)),
            "loo_median_error": float(np.median(np.abs(ratio - 1)))}
    return 0.5 * (relative.bias + log.bias), 0.5 * (relative.weights + log.weights), prior_weights, info


# ------------------------------------------------------------------------------------------ fitting

def fit_predictor(space: SearchSpace, measured: Sequence[tuple[Arch, float]], *, reference: Path | str | None = None,
                  exclude: Sequence[str] = (), lut: Any = None, seed: int = 0) -> LatencyPredictor:
    """A predictor of the device that measured `measured` ((arch, ms) pairs, at least 3).

    With a reference latency table (`reference`, default `space.latency_table` where the space ships one)
    it spans the table's columns but those in `exclude` (which hides a device the table already has, as the
    leave-one-device-out benchmark does); without one, the LUT sum (`lut`, anything with
    `predict(space, arch)`), MACs, params and the architecture's numbers. The fit is deterministic; `seed`
    is recorded only (nothing is drawn at random)."""
    measured = [(arch, float(ms)) for arch, ms in measured]
    distinct = {arch for arch, _ in measured}
    if len(distinct) < MIN_MEASURED:
        raise UserError(f"a latency predictor needs at least {MIN_MEASURED} measured architectures, got "
                        f"{len(distinct)} (10 or more recommended)")
    if len(distinct) < len(measured):
        raise UserError("measured latencies list an architecture twice; average them first (read_measured does)")
    bad = [ms for _, ms in measured if not (math.isfinite(ms) and ms > 0)]
    if bad:
        raise UserError(f"measured latency {bad[0]!r} is not a positive, finite number of milliseconds")
    for arch, _ in measured:
        space.validate(arch)
    if reference is None:
        reference = getattr(space, "latency_table", None)
    if reference is not None:
        data = _fit_reference(space, measured, Path(reference), exclude)
    else:
        if exclude:
            raise UserError(f"exclude={list(exclude)}: there is no reference table to exclude columns of")
        data = _fit_structure(space, measured, lut)
    data["fit"]["seed"] = seed
    return LatencyPredictor(data, lut=lut)


def _fit_reference(space: SearchSpace, measured: list[tuple[Arch, float]], reference: Path,
                   exclude: Sequence[str]) -> dict[str, Any]:
    design = reference_design(space, reference)
    unknown = [c for c in exclude if c not in design.columns]
    if unknown:
        raise UserError(f"exclude: {', '.join(map(repr, unknown))} {'is' if len(unknown) == 1 else 'are'} not "
                        f"a column of {reference}; its columns: {', '.join(design.columns)}")
    columns = [c for c in design.columns if c not in exclude]
    if not columns:
        raise UserError(f"exclude hides every column of {reference}; keep at least one reference device")
    rows = []
    for arch, _ in measured:
        key = space.to_text(arch)
        if key not in design.index:
            raise UserError(f"reference latency table {reference} has no row for the measured {space.name} "
                            f"architecture {key!r}")
        rows.append(design.index[key])
    y_all = np.array([ms for _, ms in measured])
    connected = design.connected[rows]
    use = connected if connected.sum() >= MIN_MEASURED else np.ones(len(rows), dtype=bool)
    picked = [design.column(c) for c in columns]
    weights_of = design.denoise[:, picked]  # names x columns
    basis_all = np.maximum(design.features[rows] @ weights_of, 1e-6)
    bias, basis_weights, prior_weights, info = _fit_both(basis_all[use], basis_all[use], y_all[use], columns)
    coef = weights_of @ (basis_weights + prior_weights)
    coef[design.names.index(BIAS)] += bias
    info.update({"n_fitted": int(use.sum()), "left_out_disconnected": int((~use).sum())})
    return {"format": FORMAT, "kind": KIND, "space": space.name, "space_options": dict(space.options),
            "method": "reference-span", "n": len(measured), "reference": str(design.path), "columns": columns,
            "exclude": list(exclude), "lut": None,
            "coef": {name: float(c) for name, c in zip(design.names, coef) if c != 0.0},
            "floor_ms": FLOOR * float(y_all.min()), "fit": info,
            "measured": [[space.to_text(arch), ms] for arch, ms in measured]}


def arch_features(space: SearchSpace, arch: Arch, lut: Any = None) -> dict[str, float]:
    """The features of the structural fit (spaces without a reference table): the bias, the LUT's
    prediction in ms (`lut`, when given), MACs and params in millions, and every parameter of the
    architecture (a number as it is; a one-hot `name=value` otherwise)."""
    from .flops import measure

    counts = measure(space, arch)
    features: dict[str, float] = {BIAS: 1.0, "macs": counts["macs"] / 1e6, "params": counts["params"] / 1e6}
    if lut is not None:
        features["lut"] = float(lut.predict(space, arch))
    for name, value in sorted(arch.items()):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            features[f"param:{name}"] = float(value)
        else:
            features[f"param:{name}={value}"] = 1.0
    return features


def _fit_structure(space: SearchSpace, measured: list[tuple[Arch, float]], lut: Any) -> dict[str, Any]:
    rows = [arch_features(space, arch, lut) for arch, _ in measured]
    names = sorted({name for row in rows for name in row} - {BIAS})
    basis = np.array([[row.get(name, 0.0) for name in names] for row in rows])
    y = np.array([ms for _, ms in measured])
    prior_names = [name for name in ("lut", "macs") if name in names]
    prior = basis[:, [names.index(name) for name in prior_names]]
    if (prior <= 0).any():
        name = prior_names[int(np.argmax((prior <= 0).any(0)))]
        raise UserError(f"cannot fit: a measured architecture has a {name} of zero or less; its latency cannot be "
                        f"a multiple of it")
    bias, basis_weights, prior_weights, info = _fit_both(prior, basis, y, prior_names)
    coef = dict(zip(names, basis_weights.tolist()))
    for name, weight in zip(prior_names, prior_weights):
        coef[name] += float(weight)
    coef[BIAS] = bias
    info.update({"n_fitted": len(measured)})
    return {"format": FORMAT, "kind": KIND, "space": space.name, "space_options": dict(space.options),
            "method": "structure", "n": len(measured), "reference": None, "columns": [], "exclude": [],
            "lut": str(lut.path) if lut is not None and getattr(lut, "path", None) else None,
            "lut_used": lut is not None, "coef": {k: float(v) for k, v in coef.items() if v != 0.0},
            "floor_ms": FLOOR * float(y.min()), "fit": info,
            "measured": [[space.to_text(arch), ms] for arch, ms in measured]}


# ---------------------------------------------------------------------------------------- the predictor

class LatencyPredictor:
    """A fitted few-shot latency predictor: `predict(space, arch)` in ms, cached per architecture."""

    def __init__(self, data: Mapping[str, Any], *, path: Path | None = None, lut: Any = None):
        self.data = dict(data)
        self.path = path
        self.space: str = str(data["space"])
        self.method: str = str(data["method"])
        self.coef: dict[str, float] = {str(k): float(v) for k, v in data["coef"].items()}
        self.floor_ms = float(data["floor_ms"])
        self.lut = lut
        self._cache: dict[Arch, float] = {}
        self._features: Callable[[SearchSpace, Arch], Mapping[str, float]] = (
            structure_features if self.method == "reference-span" else
            (lambda space, arch: arch_features(space, arch, self.lut)))

    @property
    def n(self) -> int:
        return int(self.data["n"])

    @property
    def columns(self) -> list[str]:
        return list(self.data.get("columns", []))

    @property
    def reference(self) -> str | None:
        return self.data.get("reference")

    def check(self, space: SearchSpace) -> None:
        """Refuses (ValueError, one line) a space other than the one the predictor was fitted for."""
        if space.name != self.space:
            raise UserError(f"latency predictor {self._name} was fitted for space {self.space!r}, not "
                            f"{space.name!r}; fit one on architectures of {space.name} measured on the device")

    def predict(self, space: SearchSpace, arch: Arch) -> float:
        """The device's latency of `arch` in ms."""
        cached = self._cache.get(arch)
        if cached is not None:
            return cached
        if arch.space != self.space:
            self.check(space)
            raise ValueError(f"architecture of space {arch.space!r} given to a predictor for {self.space!r}")
        if self.method != "reference-span" and self.lut is None and self.data.get("lut_used"):
            raise ValueError(f"latency predictor {self._name} needs the lookup table it was fitted with; load it "
                             f"with lut=")
        features = self._features(space, arch)
        value = sum(self.coef.get(name, 0.0) * x for name, x in features.items())
        value = max(float(value), self.floor_ms)
        self._cache[arch] = value
        return value

    def predict_rows(self, design: ReferenceDesign) -> np.ndarray:
        """Predictions for every row of a reference design at once (benchmarks)."""
        return np.maximum(design.features @ design.coef_vector(self.coef), self.floor_ms)

    @property
    def _name(self) -> str:
        return str(self.path) if self.path is not None else "(unsaved)"

    def describe(self) -> dict[str, Any]:
        """What bundles and the journal record of it."""
        return {"kind": "predictor", "path": str(self.path) if self.path is not None else None,
                "method": self.method, "space": self.space, "n": self.n, "reference": self.reference,
                "columns": self.columns, "lut": self.data.get("lut"),
                "loo_within10": self.data.get("fit", {}).get("loo_within10")}

    def __str__(self) -> str:
        source = f"{len(self.columns)} reference devices" if self.method == "reference-span" else "structure"
        return f"latency predictor fitted on {self.n} {self.space} architectures ({source})"

    def save(self, path: str | Path) -> Path:
        """Writes the JSON file atomically (a temporary file beside it, then renamed over)."""
        path = Path(path)
        if self.data.get("lut_used") and not self.data.get("lut"):
            raise ValueError("this predictor was fitted with a lookup table that has no file; it cannot be saved "
                             "self-contained (fit it with a LatencyTable loaded from a file)")
        write_json(path, self.data)
        self.path = path
        return path

    @classmethod
    def load(cls, path: str | Path, *, space: SearchSpace | None = None, lut: Any = None) -> LatencyPredictor:
        """The predictor saved at `path` (ValueError, one line, for a missing, unreadable or foreign file, a
        reference table that no longer has its columns, or a predictor of another space than `space`)."""
        path = Path(path)
        where = f"latency predictor {path}"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"{where}: no such file (fit one with `nasplat latency fit`)") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UserError(f"{where} is not a readable JSON file ({_one_line(exc)})") from None
        if not isinstance(data, dict) or data.get("kind") != KIND:
            raise UserError(f"{path} is no nasplat latency predictor (it lacks \"kind\": \"{KIND}\"); fit one "
                            f"with `nasplat latency fit`")
        if data.get("format") != FORMAT:
            raise UserError(f"{where} has format {data.get('format')!r}; this nasplat reads format {FORMAT}")
        missing = [k for k in ("space", "method", "n", "coef", "floor_ms", "columns") if k not in data]
        if missing or not isinstance(data["coef"], dict) or data["method"] not in ("reference-span", "structure"):
            raise UserError(f"{where} is damaged (it lacks or garbles {', '.join(missing) or 'coef/method'})")
        try:
            {str(k): float(v) for k, v in data["coef"].items()}
            float(data["floor_ms"])
        except (TypeError, ValueError):
            raise UserError(f"{where} is damaged (a coefficient is not a number)") from None
        if data.get("reference"):
            try:
                table = load_table(data["reference"], key=KEY)
            except ValueError as exc:
                raise UserError(f"{where} was fitted from the reference table {data['reference']}, which cannot be "
                                f"read now ({_one_line(exc)})") from None
            gone = [c for c in data["columns"] if c not in table.columns]
            if gone:
                raise UserError(f"{where} was fitted from columns {', '.join(gone)} of {data['reference']}, which "
                                f"it no longer has; refit it")
        if lut is None and data.get("lut_used"):
            if not data.get("lut"):
                raise UserError(f"{where} needs the lookup table it was fitted with, and names no file of it")
            from .lut import LatencyTable

            lut = LatencyTable.load(data["lut"])
        predictor = cls(data, path=path, lut=lut)
        if space is not None:
            predictor.check(space)
        return predictor
