"""Latency on the target hardware: the protocol's repeatability, the lookup table's accuracy, and a
latency-constrained TinyNet search whose result is measured against its limit.

Stages (all by default; each caches its figures in bench/out/latency/<device>/ and is skipped when they are
there, so a killed run resumes; --fresh redoes them):

- repeat: the whole protocol 5 times on one model (the default search's TinyNet, r=0.555 d=0.465 w=0.479 at
  its 124 px target, 1000 classes), per runtime: the coefficient of variation of the 5 figures, against the
  same for a naive figure (the median of 30 back-to-back runs) taken in the same loop.
- lut: `nasplat latency build-lut tinynet` then `nasplat latency validate` on 50 random architectures: the
  share predicted within +-10% and the Spearman rank correlation.
- predictor: the few-shot predictor fitted on 20 TinyNet models measured whole plus the lut stage's table,
  scored on 50 others against the same 50 measured a second time (the machine's own noise).
- drift: 20 more architectures measured whole, each followed at once by the calibrated sum of its units
  timed afresh: how much of the table's error is the method's and how much the machine's drift since the build.
- search: `nasplat search tinynet --latency LIMIT --lut TABLE --trials 8` and the best architecture's latency
  measured afresh against LIMIT.

Differs from nn-Meter's setting: CPU figures are for this shared 2-core cloud VM at one thread (not a phone
CPU), and the TinyNet space is continuous in resolution, so the table keys every reachable input side.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from results import write_section
from torch.utils import benchmark

from nasplat.cost.latency import Protocol, clear_cache, describe_fingerprint, fingerprint, measure_arch
from nasplat.registry import SPACES
from nasplat.units import format_ms, format_time

MODEL = {"r": 0.555, "d": 0.465, "w": 0.479}  # the default `nasplat search tinynet --flops 24M` result
REPEATS = 5


def _cached(path: Path, fresh: bool, compute):  # noqa: ANN001, ANN202 - a stage's figures, computed once
    if path.exists() and not fresh:
        return json.loads(path.read_text())
    data = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))
    return data


def _naive_median(space, arch, protocol: Protocol, runs: int = 30) -> float:  # noqa: ANN001
    """The figure without the protocol: a median of 30 back-to-back runs after one warm-up run."""
    target = space.target(arch)
    model = space.build(arch, num_classes=target.num_classes).to(protocol.device).eval()
    x = torch.randn(target.input_shape, device=protocol.device)

    def run() -> None:
        with torch.inference_mode():
            model(x)
    timer = benchmark.Timer(stmt="run()", globals={"run": run}, num_threads=protocol.threads)
    run()
    return statistics.median(timer.timeit(1).median * 1e3 for _ in range(runs))


def repeat_stage(device: str, runtimes: list[str]) -> dict:
    space = SPACES.create("tinynet")
    arch = space.arch(MODEL)
    rows = {}
    for runtime in runtimes:
        protocol = Protocol(device=device, runtime=runtime)
        figures, naive, seconds = [], [], []
        for _ in range(REPEATS):
            clear_cache()
            start = time.perf_counter()
            figures.append(measure_arch(space, arch, protocol=protocol).ms)
            seconds.append(time.perf_counter() - start)
            if runtime == "torch":
                naive.append(_naive_median(space, arch, protocol))
        rows[runtime] = {"figures": figures, "naive": naive, "seconds": statistics.median(seconds),
                         "protocol": protocol.to_dict(), "fingerprint": fingerprint(protocol)}
        print(f"{runtime}: {[round(f, 3) for f in figures]} ms", flush=True)
    return rows


def _cv(values: list[float]) -> float:
    return statistics.stdev(values) / statistics.mean(values)


def repeat_section(rows: dict, device: str) -> str:
    lines = ["| runtime | protocol figures, 5 repeats (ms) | CV | max/min | naive: median of 30 runs, 5 repeats (ms) "
             "| naive CV | s per figure |", "|---|---|---|---|---|---|---|"]
    for runtime, row in rows.items():
        figures, naive = row["figures"], row["naive"]
        naive_cells = (f"{', '.join(f'{v:.3f}' for v in naive)} | {_cv(naive):.1%}" if naive else "- | -")
        lines.append(f"| {runtime} | {', '.join(f'{v:.3f}' for v in figures)} | {_cv(figures):.1%} | "
                     f"{max(figures) / min(figures):.3f} | {naive_cells} | {row['seconds']:.1f} |")
    any_row = next(iter(rows.values()))
    protocol = any_row["protocol"]
    return "\n".join([
        f"Model: TinyNet r=0.555 d=0.465 w=0.479 (the default 24M search's result) at its target 1x3x124x124, "
        f"1000 classes. Device `{device}`: {describe_fingerprint(any_row['fingerprint'])}.",
        f"Protocol: {protocol['warmup']} warm-up runs, then {protocol['rounds']} rounds of "
        f"{protocol['seconds']} s of timed runs, {protocol['gap']} s apart (torch.utils.benchmark, CUDA "
        f"synchronised); the figure is the fastest run; batch {protocol['batch']}, {protocol['threads']} thread(s). "
        "Each repeat builds the model afresh.",
        "", *lines, "",
        "Goal: the 5 protocol figures agree within 5% (CV). CV = sample standard deviation / mean.",
    ])


def lut_stage(device: str, out: Path, validate_n: int) -> dict:
    from nasplat.cost.lut import LatencyTable, build_lut, validate

    space = SPACES.create("tinynet")
    protocol = Protocol(device=device)
    start = time.perf_counter()
    path = build_lut(space, protocol=protocol, out=out / "tinynet-lut.json")
    build_seconds = time.perf_counter() - start
    table = LatencyTable.load(path)
    start = time.perf_counter()
    report = validate(space, table, n=validate_n, seed=1, protocol=protocol)
    return {"table": str(path), "entries": len(table.entries), "build_seconds": build_seconds,
            "validate_seconds": time.perf_counter() - start, "calibration": table.calibration,
            "validation": report}


def lut_subset_stage(device: str, runtime: str, out: Path, validate_n: int) -> dict:
    """A table restricted to the ops of the architectures it is validated on (and calibrated on): checks the
    method on a runtime whose full table would take long to build (ONNX Runtime exports every op)."""
    from nasplat.cost.lut import LatencyTable, build_lut, random_archs, validate

    space = SPACES.create("tinynet")
    protocol = Protocol(device=device, runtime=runtime)
    units = [u for arch in random_archs(space, validate_n, seed="validate-1") for u in space.latency_units(arch)]
    start = time.perf_counter()
    path = build_lut(space, protocol=protocol, out=out / f"tinynet-lut-{runtime}-subset.json", units=units)
    build_seconds = time.perf_counter() - start
    table = LatencyTable.load(path)
    start = time.perf_counter()
    report = validate(space, table, n=validate_n, seed=1, protocol=protocol)
    return {"table": str(path), "entries": len(table.entries), "build_seconds": build_seconds,
            "validate_seconds": time.perf_counter() - start, "calibration": table.calibration,
            "validation": report, "runtime": runtime, "subset": True}


def lut_section(data: dict, device: str) -> str:
    v = data["validation"]
    rows = v["rows"]
    errors = sorted(abs(r["predicted"] / r["measured"] - 1) for r in rows)
    what = (f"the ops of the {len(rows)} validation and 10 calibration architectures only, runtime "
            f"{data['runtime']}" if data.get("subset") else "every op configuration of the TinyNet space")
    return "\n".join([
        f"Table: {data['entries']} op configurations ({what}) profiled on `{device}` in "
        f"{format_time(data['build_seconds'])} (resumable; `nasplat latency build-lut tinynet --device {device}`), "
        f"calibration ({data['calibration']['method']}, Theil-Sen on {data['calibration']['n']} whole architectures): "
        f"predicted = {data['calibration']['scale']:.3f} x summed {data['calibration']['offset_ms']:+.3f} ms.",
        "",
        "| architectures | within +-10% | Spearman | median abs error | worst abs error | measured range |",
        "|---|---|---|---|---|---|",
        f"| {len(rows)} random | {v['within']:.0%} | {v['spearman']:.3f} | {statistics.median(errors):.1%} | "
        f"{errors[-1]:.1%} | {format_ms(min(r['measured'] for r in rows))} - "
        f"{format_ms(max(r['measured'] for r in rows))} |",
        "",
        "Goal on this CPU: at least 90% within +-10% (nn-Meter reports 99% on its phone CPUs).",
    ])


FIT, HELD_OUT = 20, 50  # predictor stage: models it is fitted on, models it is scored on


def _measure_pass(space, archs, protocol: Protocol, path: Path) -> list[float]:  # noqa: ANN001
    """Each architecture measured whole, afresh (no cache), in order; saved after each, so a killed pass resumes."""
    done = json.loads(path.read_text()) if path.exists() else []
    for arch in archs[len(done):]:
        clear_cache()
        done.append(measure_arch(space, arch, protocol=protocol).ms)
        path.write_text(json.dumps(done))
        print(f"{path.stem}: {len(done)}/{len(archs)} {done[-1]:.3f} ms", flush=True)
    return done


def predictor_stage(device: str, out: Path) -> dict:
    """The few-shot predictor on TinyNet here: fitted on FIT models measured whole plus the lookup table (the
    lut stage's), scored on HELD_OUT other models against this machine's own noise: the same models measured
    whole a second time, after the first pass (minutes apart)."""
    from nasplat.cost.lut import LatencyTable, random_archs
    from nasplat.cost.predictor import fit_predictor

    space = SPACES.create("tinynet")
    protocol = Protocol(device=device)
    table = LatencyTable.load(out / "tinynet-lut.json")
    fit_archs = random_archs(space, FIT, seed="predictor-fit")
    test_archs = random_archs(space, HELD_OUT, seed="predictor-held-out")
    fit_ms = _measure_pass(space, fit_archs, protocol, out / "predictor-fit.json")
    first = _measure_pass(space, test_archs, protocol, out / "predictor-first.json")
    second = _measure_pass(space, test_archs, protocol, out / "predictor-second.json")
    predictor = fit_predictor(space, list(zip(fit_archs, fit_ms)), lut=table)
    predicted = [predictor.predict(space, a) for a in test_archs]
    lut_only = [table.predict(space, a) for a in test_archs]
    return {"fit": FIT, "held_out": HELD_OUT, "method": predictor.describe().get("method"),
            "first": first, "second": second, "predicted": predicted, "lut": lut_only}


def predictor_section(data: dict) -> str:
    first, second = data["first"], data["second"]

    def errors(values: list[float]) -> list[float]:
        return [abs(v / m - 1) for v, m in zip(values, first)]

    noise = statistics.median(errors(second))
    rows = [("predictor (fit on {fit} models + the table)".format(**data), errors(data["predicted"])),
            ("the table alone (calibrated sum)", errors(data["lut"])),
            ("a second whole measurement, minutes later", errors(second))]
    lines = ["| against the first measurement | median abs error | within +-10% |", "|---|---|---|"]
    lines += [f"| {name} | {statistics.median(e):.1%} | {sum(x <= 0.1 for x in e) / len(e):.0%} |" for name, e in rows]
    ratio = statistics.median(rows[0][1]) / noise
    return "\n".join([
        f"TinyNet on this CPU (torch eager, 1 thread, batch 1): the few-shot predictor (`nasplat latency fit "
        f"tinynet --lut TABLE`, method {data['method']}) fitted on {data['fit']} random architectures measured "
        f"whole, scored on {data['held_out']} others measured whole twice, one pass after the other. Ground truth "
        f"here moves from minute to minute, so the score is against the machine's own noise: the median "
        f"difference between the two measurements of the same models.", "", *lines, "",
        f"Predictor median error / measurement noise: **{ratio:.2f}** (goal <= 1.5: "
        f"{'met' if ratio <= 1.5 else 'missed'}).",
    ])


def drift_stage(device: str, out: Path, n: int) -> dict:
    """Separates the table's method error from the machine's drift: for each architecture, its whole latency
    and, right after, the calibrated sum of its units timed afresh; against the table's prediction."""
    from nasplat.cost.latency import measure_model
    from nasplat.cost.lut import LatencyTable, random_archs, unit_protocol

    space = SPACES.create("tinynet")
    table = LatencyTable.load(out / "tinynet-lut.json")
    fit = table.calibration
    protocol = Protocol(device=device)
    rows = []
    for arch in random_archs(space, n, seed="drift"):
        clear_cache()
        whole = measure_arch(space, arch, protocol=protocol).ms
        fresh = sum(measure_model(u.build(), u.input_shape, protocol=unit_protocol(protocol)).ms
                    for u in space.latency_units(arch))
        rows.append({"arch": arch.to_json(), "whole": whole, "table": table.predict(space, arch),
                     "fresh": fit["scale"] * fresh + fit["offset_ms"]})
        print(f"whole {whole:.2f}  table {rows[-1]['table']:.2f}  fresh units {rows[-1]['fresh']:.2f}", flush=True)
    return {"rows": rows}


def drift_section(data: dict) -> str:
    rows = data["rows"]

    def within(key: str) -> float:
        return sum(abs(r[key] / r["whole"] - 1) <= 0.10 for r in rows) / len(rows)

    def median_error(key: str) -> float:
        return statistics.median(abs(r[key] / r["whole"] - 1) for r in rows)
    return "\n".join([
        f"{len(rows)} random architectures, each measured whole and then, within seconds, as the calibrated sum "
        "of its units timed afresh; against the table built earlier:",
        "",
        "| prediction | within +-10% of the whole measurement | median abs error |",
        "|---|---|---|",
        f"| the table (built earlier) | {within('table'):.0%} | {median_error('table'):.1%} |",
        f"| its units timed afresh, same calibration | {within('fresh'):.0%} | {median_error('fresh'):.1%} |",
        "",
        "The gap between the two rows is the machine's drift between the table's build and the measurement; the "
        "second row is the decomposition's own error.",
    ])


def search_stage(device: str, out: Path, limit: str, table: str | None, trials: int, strategy: str) -> dict:
    from nasplat import api

    runs = out / "search"
    previous = sorted(runs.iterdir(), key=lambda p: p.stat().st_mtime) if runs.exists() else []
    if previous and (previous[-1] / "best" / "arch.json").exists():
        run = previous[-1]
    else:
        outcome = api.search("tinynet", strategy=strategy, latency=limit, latency_protocol={"device": device},
                             lut=table, trials=trials, out=runs)
        run = outcome.run.path
    bundle = json.loads((run / "best" / "arch.json").read_text())
    events = [json.loads(line) for line in (run / "journal.jsonl").read_text().splitlines()]
    results = [e for e in events if e.get("event") == "result"]
    space = SPACES.create("tinynet")
    from nasplat.arch import Arch

    clear_cache()
    fresh = measure_arch(space, Arch.from_dict(bundle["arch"]), protocol=Protocol(device=device)).ms
    return {"run": str(run), "limit": limit, "strategy": strategy, "trials": trials, "best": bundle["arch"], "costs": bundle["costs"],
            "accuracy": bundle["metrics"].get("accuracy"), "fresh_ms": fresh,
            "ok": sum(r["status"] == "ok" for r in results),
            "rejected_predicted": sum("predicted latency" in (r.get("error") or "") for r in results),
            "rejected_measured": sum("measured latency" in (r.get("error") or "") for r in results),
            "other_infeasible": sum(r["status"] == "infeasible" and "latency" not in (r.get("error") or "")
                                    for r in results)}


def search_section(data: dict, device: str) -> str:
    limit_ms = float(data["limit"].removesuffix("ms"))
    params = data["best"]["params"]
    return "\n".join([
        f"`nasplat search tinynet --latency {data['limit']} --device {device} --lut TABLE --trials {data['trials']} "
        f"--strategy {data['strategy']}`: "
        f"{data['ok']} trained and within the limit, {data['rejected_predicted']} rejected by predicted latency "
        f"before training, {data['rejected_measured']} trained then rejected by measured latency.",
        "",
        "| best | accuracy | predicted | measured in the search | measured afresh | limit | afresh / limit |",
        "|---|---|---|---|---|---|---|",
        f"| r={params['r']} d={params['d']} w={params['w']} | {data['accuracy']:.2f}% | "
        f"{format_ms(data['costs'].get('latency_predicted', float('nan')))} | {format_ms(data['costs']['latency'])} | "
        f"{format_ms(data['fresh_ms'])} | {data['limit']} | {data['fresh_ms'] / limit_ms:.3f} |",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--stages", default="repeat,lut,predictor,drift,search")
    parser.add_argument("--runtimes", default="torch,onnxruntime")
    parser.add_argument("--validate", type=int, default=50, help="random architectures the table is checked on")
    parser.add_argument("--limit", default="4ms", help="the search's latency limit")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--strategy", default="bayesian")
    parser.add_argument("--out", default=str(Path(__file__).parent / "out" / "latency"))
    parser.add_argument("--fresh", action="store_true", help="redo stages whose figures are cached")
    args = parser.parse_args()
    stages = args.stages.split(",")
    out = Path(args.out) / args.device.replace(":", "-")
    title = f"({args.device})"
    if "repeat" in stages:
        rows = _cached(out / "repeat.json", args.fresh, lambda: repeat_stage(args.device, args.runtimes.split(",")))
        write_section(f"Latency protocol repeatability {title}", repeat_section(rows, args.device))
    if "lut" in stages:
        data = _cached(out / "lut.json", args.fresh, lambda: lut_stage(args.device, out, args.validate))
        write_section(f"Latency lookup table accuracy {title}", lut_section(data, args.device))
    if "lut-ort" in stages:
        data = _cached(out / "lut-ort.json", args.fresh,
                       lambda: lut_subset_stage(args.device, "onnxruntime", out, args.validate))
        write_section(f"Latency lookup table accuracy, ONNX Runtime {title}", lut_section(data, args.device))
    if "predictor" in stages:
        data = _cached(out / "predictor.json", args.fresh, lambda: predictor_stage(args.device, out))
        write_section(f"Few-shot latency predictor: TinyNet on this machine ({args.device})", predictor_section(data))
    if "drift" in stages:
        data = _cached(out / "drift.json", args.fresh, lambda: drift_stage(args.device, out, 20))
        write_section(f"Latency lookup table: method error against machine drift {title}", drift_section(data))
    if "search" in stages:
        table = out / "tinynet-lut.json"
        data = _cached(out / "search.json", args.fresh, lambda: search_stage(
            args.device, out, args.limit, str(table) if table.exists() else None, args.trials, args.strategy))
        write_section(f"Latency-constrained TinyNet search {title}", search_section(data, args.device))


if __name__ == "__main__":
    sys.exit(main())
