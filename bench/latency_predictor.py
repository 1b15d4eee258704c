"""Few-shot latency predictor, leave one device out over the 14 devices of nasplat's NAS-Bench-201 latency table.

For each device in turn, its column is hidden (`fit_predictor(..., exclude=[device])`) and N of its cells
(N = 10, 20, 50; 20 draws each, seeded) are given as the user's measurements; the predictor is scored on
ALL 15,625 cells of that device: the share predicted within +-10% and the Spearman rank correlation. The
same draws feed three baselines, fitted on the same cells as the predictor (the connected ones, when at
least 3 are; the predictor leaves disconnected cells out of its fit, and giving the baselines the same
cells keeps them from being pulled by a microsecond outlier):

- (a) ridge on one-hot ops: latency ~ the 6 x 5 one-hot of the cell's operations, ridge with its strength
  chosen by leave-one-out (scikit-learn's RidgeCV), in ms;
- (b) the other device whose latencies correlate best (Pearson) with the N measurements, rescaled by a
  least-squares line on the N points;
- (c) both: ridge on the one-hot ops and that device's latency (standardised), strength by leave-one-out.

Two references bound what any predictor can reach from the cell's structure: the device's own column fitted
on all its 15,625 cells with the predictor's structural features ("ceiling"), and functional twins, pairs
of cells that compute the same function (edge 2<-1 `none`, so nodes 1 and 2 swap roles), measured within
10% of each other.

    .venv/bin/python bench/latency_predictor.py      # about 3 minutes
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from results import write_section
from scipy.stats import spearmanr
from sklearn.linear_model import RidgeCV

from nasplat.cost.predictor import BAND, fit_predictor, reference_design
from nasplat.registry import SPACES

SECTION = "Few-shot latency predictor: leave one device out (NAS-Bench-201, 14 devices)"
SIZES = (10, 20, 50)
DRAWS = 20
ALPHAS = np.logspace(-3, 3, 13)
OUT = Path(__file__).resolve().parent / "out" / "latency_predictor.json"
KINDS = ("method", "a_ridge", "b_device", "c_both")
LABELS = {"method": "predictor", "a_ridge": "(a) ridge on ops", "b_device": "(b) best device",
          "c_both": "(c) both"}


def scores(predicted: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    return float(np.mean(np.abs(predicted / truth - 1.0) <= BAND)), float(spearmanr(predicted, truth)[0])


def one_hot(design) -> np.ndarray:  # noqa: ANN001 - the 6 x 5 one-hot of the ops, from the design's features
    names = [i for i, name in enumerate(design.names) if "=" in name and "&" not in name and ":" not in name]
    return design.features[:, names]


def baselines(design, ops: np.ndarray, target: int, rows: np.ndarray,  # noqa: ANN001
              y: np.ndarray) -> dict[str, np.ndarray]:
    others = [j for j in range(design.latency.shape[1]) if j != target]
    a = RidgeCV(alphas=ALPHAS).fit(ops[rows], y)
    corr = [abs(np.corrcoef(design.latency[rows, j], y)[0, 1]) if np.std(design.latency[rows, j]) > 0 else 0.0
            for j in others]
    best = others[int(np.nanargmax(corr))]
    x = design.latency[:, best]
    slope, intercept = np.polyfit(x[rows], y, 1)
    z = (x - x.mean()) / x.std()
    both = np.hstack([ops, z[:, None]])
    c = RidgeCV(alphas=ALPHAS).fit(both[rows], y)
    floor = 0.1 * y.min()  # as the predictor: no prediction below a tenth of the smallest measurement
    return {"a_ridge": np.maximum(a.predict(ops), floor), "b_device": np.maximum(slope * x + intercept, floor),
            "c_both": np.maximum(c.predict(both), floor)}


def twins(space, design) -> dict[str, float]:  # noqa: ANN001
    """Per device, the share of functional-twin pairs (connected cells with edge 2<-1 `none`, and the same
    cell with nodes 1 and 2 swapped) measured within 10% of each other."""
    pairs = []
    for i, key in enumerate(design.keys):
        arch = space.parse(key)
        if arch["edge_2_1"] != "none":
            continue
        twin = arch.replace(edge_1_0=arch["edge_2_0"], edge_2_0=arch["edge_1_0"], edge_3_1=arch["edge_3_2"],
                            edge_3_2=arch["edge_3_1"])
        j = design.index[space.to_text(twin)]
        if i < j and design.connected[i]:
            pairs.append((i, j))
    a, b = (np.array(side) for side in zip(*pairs))
    ratio = design.latency[a] / design.latency[b]
    return {c: float(np.mean(np.abs(ratio[:, k] - 1) <= BAND)) for k, c in enumerate(design.columns)} | {
        "_pairs": len(pairs)}


def run(seed: int, sizes: tuple[int, ...], draws: int, devices: tuple[str, ...] = ()) -> dict:
    space = SPACES.create("nasbench201")
    design = reference_design(space, space.latency_table)
    ops = one_hot(design)
    results: dict = {"sizes": list(sizes), "draws": draws, "devices": {}}
    started = time.perf_counter()
    fit_seconds = []
    for target, column in enumerate(design.columns):
        if devices and column not in devices:
            continue
        truth = design.latency[:, target]
        ceiling = np.maximum(design.features @ design.denoise[:, target], 1e-6)
        per = results["devices"][column] = {"ceiling": scores(ceiling, truth)}
        for n in sizes:
            cells: dict[str, list[tuple[float, float]]] = {kind: [] for kind in KINDS}
            for draw in range(draws):
                rng = np.random.default_rng([seed, target, n, draw])
                rows = rng.choice(len(truth), n, replace=False)
                archs = [space.parse(design.keys[r]) for r in rows]
                t0 = time.perf_counter()
                predictor = fit_predictor(space, list(zip(archs, truth[rows].tolist())), exclude=[column], seed=draw)
                fit_seconds.append(time.perf_counter() - t0)
                cells["method"].append(scores(predictor.predict_rows(design), truth))
                used = rows[design.connected[rows]] if design.connected[rows].sum() >= 3 else rows
                for kind, predicted in baselines(design, ops, target, used, truth[used]).items():
                    cells[kind].append(scores(predicted, truth))
            per[str(n)] = {kind: [float(np.mean([c[0] for c in v])), float(np.mean([c[1] for c in v]))]
                           for kind, v in cells.items()}
            m = per[str(n)]["method"]
            print(f"{column:16s} N={n:3d}  predictor {m[0]:.3f} {m[1]:.3f}  " + "  ".join(
                f"{kind} {v[0]:.3f} {v[1]:.3f}" for kind, v in per[str(n)].items() if kind != "method"),
                file=sys.stderr, flush=True)
    results["twins"] = twins(space, design)
    results["seconds"] = time.perf_counter() - started
    results["fit_seconds_median"] = statistics.median(fit_seconds)
    return results


def table(results: dict, n: int) -> list[str]:
    devices = results["devices"]
    lines = [f"| device (N = {n}) | predictor | (a) ridge on ops | (b) best device | (c) both | ceiling | twins |",
             "|---|---|---|---|---|---|---|"]
    for column, per in devices.items():
        cells = [f"{per[str(n)][k][0]:.1%} / {per[str(n)][k][1]:.3f}" for k in KINDS]
        lines.append(f"| {column} | " + " | ".join(cells) + f" | {per['ceiling'][0]:.1%} / {per['ceiling'][1]:.3f}"
                     f" | {results['twins'][column]:.0%} |")
    means = [np.mean([per[str(n)][k] for per in devices.values()], 0) for k in KINDS]
    ceiling = np.mean([per["ceiling"] for per in devices.values()], 0)
    twins_mean = np.mean([results["twins"][c] for c in devices])
    lines.append("| **mean** | " + " | ".join(f"**{m[0]:.1%} / {m[1]:.3f}**" for m in means)
                 + f" | {ceiling[0]:.1%} / {ceiling[1]:.3f} | {twins_mean:.0%} |")
    return lines


def verdict(results: dict, n: int = 20) -> list[str]:
    devices = results["devices"]
    mean = np.mean([per[str(n)]["method"] for per in devices.values()], 0)
    ceiling = np.mean([per["ceiling"] for per in devices.values()], 0)
    worst = []
    for column, per in devices.items():
        own = per[str(n)]["method"]
        best_w = max(per[str(n)][k][0] for k in KINDS[1:])
        best_r = max(per[str(n)][k][1] for k in KINDS[1:])
        worst.append((own[0] - best_w, own[1] - best_r, column))
    w_gap, _, w_dev = min(worst)
    _, r_gap, r_dev = min(worst, key=lambda t: t[1])
    below = [c for dw, dr, c in worst if dw < 0 or dr < 0]
    noisy = [c for c, per in devices.items() if per["ceiling"][0] < 0.9]
    lines = [
        f"- Mean share within +-10% at N = {n}: **{mean[0]:.1%}** (goal 90%): "
        f"{'met' if mean[0] >= 0.9 else 'missed'}.",
        f"- Mean Spearman at N = {n}: **{mean[1]:.3f}** (goal 0.98): {'met' if mean[1] >= 0.98 else 'missed'}.",
        f"- No device below its best baseline at N = {n}: "
        + ("**met** on both figures" if not below else f"**missed** on {', '.join(below)}")
        + f" (smallest margin within 10%: {w_gap:+.1%} on {w_dev}; Spearman: {r_gap:+.4f} on {r_dev}).",
    ]
    if mean[0] < 0.9 or mean[1] < 0.98:
        shares = ", ".join(f"{results['twins'][c]:.0%}" for c in noisy)
        lines.append(
            f"- Why the mean goals are out of reach: the ceiling, the device's own column fitted on all 15,625 of "
            f"its cells with the predictor's features, averages {ceiling[0]:.1%} within 10% and Spearman "
            f"{ceiling[1]:.3f}; on {', '.join(noisy)} it is under 90%, and there functional twins (the same "
            f"computation measured twice, {results['twins']['_pairs']} pairs) agree within 10% only {shares} of "
            "the time: the measurements' own noise, which no predictor of a cell's latency can follow. The "
            f"predictor's shortfall from the ceiling at N = {n}: {ceiling[0] - mean[0]:.1%} within 10% and "
            f"{ceiling[1] - mean[1]:.3f} Spearman.")
    return lines


def render(results: dict) -> str:
    sizes = results["sizes"]
    devices = results["devices"]
    summary = ["| N | predictor | (a) ridge on ops | (b) best device | (c) both |", "|---|---|---|---|---|"]
    for n in sizes:
        means = [np.mean([per[str(n)][k] for per in devices.values()], 0) for k in KINDS]
        summary.append(f"| {n} | " + " | ".join(f"{m[0]:.1%} / {m[1]:.3f}" for m in means) + " |")
    text = [
        "Setting: a new device measures N NAS-Bench-201 cells; `fit_predictor` fits its latency from them and "
        "the other 13 devices' columns of `nasplat/data/hw_latency/nb201-latency.csv` (the left-out device's "
        "column hidden with `exclude`), and is scored on all 15,625 cells, disconnected ones included, as the "
        f"share predicted within +-10% / Spearman rho; {results['draws']} seeded draws of N cells per device and "
        "N. HELP (Lee et al., NeurIPS 2021) meta-learns a latency predictor over many devices (a device embedding "
        "from its latencies of a few reference architectures, MAML over devices); nasplat meta-learns nothing: "
        "it denoises each reference device's column by a least-squares fit on the cell's structure, then fits "
        "the new device as a linear combination of those columns (the average of a relative-error ridge fit and "
        "a log-error fit shrunk towards the best single device's ratio, their penalties chosen by leave-one-out "
        "over the N points). HELP reports on its own devices and sampled architectures, not this protocol, so "
        "its figures are not comparable.",
        "",
        "Mean over the 14 left-out devices (within +-10% / Spearman):",
        "",
        *summary,
        "",
        *verdict(results),
        "",
        f"Wall time {results['seconds'] / 60:.1f} min for {len(devices) * len(sizes) * results['draws']} fits "
        f"(median fit {results['fit_seconds_median'] * 1000:.0f} ms, after a one-off "
        "structural design of the table).",
    ]
    for n in sizes:
        text += ["", *table(results, n)]
    text += ["", "Ceiling: the device's own column fitted on all its cells with the predictor's structural "
             "features. Twins: share of functional-twin pairs measured within 10% of each other."]
    return "\n".join(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--draws", type=int, default=DRAWS)
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--devices", default="", help="comma-separated columns (all by default)")
    parser.add_argument("--no-write", action="store_true", help="print the section instead of writing RESULTS.md")
    args = parser.parse_args()
    sizes = tuple(int(s) for s in args.sizes.split(","))
    devices = tuple(d for d in args.devices.split(",") if d)
    results = run(args.seed, sizes, args.draws, devices)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=1))
    body = render(results)
    if args.no_write or sizes != SIZES or args.draws != DRAWS or args.seed != 0 or devices:
        print(body)
    else:
        write_section(SECTION, body, command="python bench/latency_predictor.py")
        print(body)


if __name__ == "__main__":
    main()
