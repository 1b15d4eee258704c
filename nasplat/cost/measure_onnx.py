#!/usr/bin/env python3
"""Times the ONNX models of a nasplat latency sample on this device; writes `arch,latency_ms,median_ms,runs`.

nasplat copies this file into a sample folder as `measure_latency.py` (`nasplat.cost.sample.write_sample`).
It runs where nasplat and torch are not installed: it needs only Python 3.7+, numpy and onnxruntime.

    python measure_latency.py                 # reads manifest.json beside it, writes latency.csv beside it
    python measure_latency.py --threads 4     # intra-op threads (default: the sample's, usually 1)

The protocol is nasplat's own (nasplat.cost.latency): `warmup` untimed runs, then `rounds` rounds of timed
runs, each round running for at least `seconds` (at least one run), with `gap` seconds of sleep between
rounds so that they sample different moments of the device's load. A model's figure, `latency_ms`, is its
fastest timed run; `median_ms` is the median of all its timed runs and `runs` their number. Each run is
timed on its own with time.perf_counter. The protocol and a description of the device are written next to
the CSV (latency.json beside latency.csv).

Every model file is checked against the sha256 the manifest gives before any timing. The CSV is flushed
after each model, so a run that is stopped keeps what it measured; run the script again and it measures
only the models missing from the CSV (under the same protocol; another protocol needs another --out).
Errors are one line on stderr, with exit status 2.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import platform
import statistics
import sys
import time

FORMAT = "nasplat-latency-sample"
VERSIONS = (1,)
COLUMNS = ("arch", "latency_ms", "median_ms", "runs")
# nasplat.cost.latency.Protocol's defaults, for a manifest that does not name them
DEFAULTS = {"threads": 1, "warmup": 10, "rounds": 10, "seconds": 0.05, "gap": 0.25}
# ONNX element types of model inputs -> numpy dtype names
DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
          "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(uint8)": "uint8", "tensor(bool)": "bool"}


class SampleError(Exception):
    """A problem the user must fix (missing or damaged files, bad settings): printed as one line, exit 2."""


def main(argv=None) -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(
        prog="measure_latency.py",
        description="Time the ONNX models of a nasplat latency sample on this device (numpy + onnxruntime).")
    parser.add_argument("--manifest", default=os.path.join(here, "manifest.json"),
                        help="the sample's manifest (default: manifest.json next to this script)")
    parser.add_argument("--out", default=None,
                        help="CSV to write or resume (default: latency.csv next to the manifest)")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: the sample's)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed runs per model before timing")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per model; the figure is the fastest run")
    parser.add_argument("--seconds", type=float, default=None, help="timed run time per round (at least one run)")
    parser.add_argument("--gap", type=float, default=None, help="seconds of sleep between rounds")
    args = parser.parse_args(argv)
    try:
        return measure(args)
    except SampleError as exc:
        print(f"measure_latency.py: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("measure_latency.py: interrupted; what was measured is in the CSV, run again to resume",
              file=sys.stderr)
        return 130


def measure(args: argparse.Namespace) -> int:
    manifest_path = os.path.abspath(args.manifest)
    manifest = read_manifest(manifest_path)
    folder = os.path.dirname(manifest_path)
    out = os.path.abspath(args.out) if args.out else os.path.join(folder, "latency.csv")
    sidecar = os.path.splitext(out)[0] + ".json"
    if sidecar == manifest_path:
        raise SampleError(f"--out {out} would write its protocol over the manifest {manifest_path}; "
                          f"choose another name")
    protocol = settings(manifest, args)

    try:
        import numpy as np
        import onnxruntime
    except ImportError as exc:
        raise SampleError(f"this script needs numpy and onnxruntime ({exc}); install them with "
                          f"`pip install numpy onnxruntime`") from None

    models = manifest["models"]
    done = read_done(out, sidecar, protocol, {m["arch"] for m in models})
    pending = [m for m in models if m["arch"] not in done]
    for model in pending:  # every file is checked before the first timing, so a bad copy fails at once
        check_file(folder, model, manifest_path)

    device = describe_device(onnxruntime.__version__, np.__version__, protocol["threads"])
    write_json(sidecar, {"manifest": manifest_path, "manifest_sha256": sha256(manifest_path),
                         "space": manifest.get("space"), "protocol": protocol, "device": device,
                         "timer": "time.perf_counter, each run timed on its own"})
    total = len(models)
    if done:
        print(f"{len(done)} of {total} models already in {out}; measuring the other {len(pending)}", file=sys.stderr)
    write_header = not os.path.exists(out)
    started = time.perf_counter()
    with open(out, "a", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream, lineterminator="\n")
        if write_header:
            writer.writerow(COLUMNS)
            stream.flush()
        for count, model in enumerate(pending, start=1):
            ms, median, runs = time_model(np, onnxruntime, os.path.join(folder, model["file"]), model, protocol)
            writer.writerow((model["arch"], f"{ms:.6g}", f"{median:.6g}", runs))
            stream.flush()
            os.fsync(stream.fileno())
            elapsed = time.perf_counter() - started
            eta = elapsed / count * (len(pending) - count)
            print(f"[{len(done) + count}/{total}] {model['file']}: {ms:.3f} ms (median {median:.3f}, {runs} runs)"
                  f"  ETA {duration(eta)}", file=sys.stderr, flush=True)
    print(f"wrote {total} latencies to {out} (protocol in {sidecar})", file=sys.stderr)
    return 0


def read_manifest(path: str) -> dict:
    if not os.path.isfile(path):
        raise SampleError(f"manifest {path} not found; run this script inside the sample folder that nasplat "
                          f"wrote, or pass --manifest")
    try:
        with open(path, encoding="utf-8") as stream:
            data = json.load(stream)
    except (ValueError, UnicodeDecodeError) as exc:
        raise SampleError(f"manifest {path} is not valid JSON ({exc}); copy it again") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise SampleError(f"{path} is not a nasplat latency sample manifest")
    if data.get("version") not in VERSIONS:
        raise SampleError(f"{path} is a sample manifest of version {data.get('version')!r}; this script reads "
                          f"version {', '.join(map(str, VERSIONS))}: use the measure_latency.py written beside it")
    models = data.get("models")
    if not isinstance(models, list) or not all(
            isinstance(m, dict) and all(k in m for k in ("file", "arch", "sha256", "input_shape")) for m in models):
        raise SampleError(f"{path} has no valid list of models (each with file, arch, sha256 and input_shape)")
    if not data.get("complete", False):
        raise SampleError(f"{path} lists an unfinished sample ({len(models)} models so far); finish it with "
                          f"`nasplat latency sample` on the machine that wrote it, then copy it again")
    return data


def settings(manifest: dict, args: argparse.Namespace) -> dict:
    """The protocol: the manifest's, with what the command line sets."""
    given = manifest.get("protocol") or {}
    protocol = {"runtime": "onnxruntime", "device": "cpu"}
    for name, default in DEFAULTS.items():
        value = getattr(args, name)
        protocol[name] = value if value is not None else type(default)(given.get(name, default))
    protocol["batch"] = given.get("batch")
    if protocol["threads"] < 1 or protocol["rounds"] < 1:
        raise SampleError(f"--threads and --rounds must be at least 1, got {protocol['threads']} and "
                          f"{protocol['rounds']}")
    if protocol["warmup"] < 0 or not protocol["seconds"] > 0 or protocol["gap"] < 0:
        raise SampleError(f"--warmup and --gap must be >= 0 and --seconds > 0, got {protocol['warmup']}, "
                          f"{protocol['gap']} and {protocol['seconds']}")
    return protocol


def read_done(out: str, sidecar: str, protocol: dict, archs: set) -> dict:
    """The rows an earlier run of this sample wrote to `out`, keyed by arch; rewrites the CSV without a row
    cut short by a kill. Refuses a CSV of other architectures or of another protocol."""
    if not os.path.exists(out):
        return {}
    with open(out, encoding="utf-8", newline="") as stream:
        text = stream.read()
    if not text.endswith("\n"):  # the last line was cut short while being written
        text = text[:text.rfind("\n") + 1]
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        os.remove(out)
        return {}
    if tuple(rows[0][:len(COLUMNS)]) != COLUMNS:
        raise SampleError(f"{out} exists but is not a latency CSV of this script (header {','.join(rows[0])!r}); "
                          f"move it away or pass another --out")
    if os.path.exists(sidecar):
        try:
            with open(sidecar, encoding="utf-8") as stream:
                before = json.load(stream).get("protocol", {})
        except (ValueError, OSError, AttributeError):
            before = {}
        differs = sorted(k for k in ("threads", "warmup", "rounds", "seconds", "gap") if before.get(k) != protocol[k])
        if before and differs:
            then = ", ".join(f"{k}={before.get(k)}" for k in differs)
            now = ", ".join(f"{k}={protocol[k]}" for k in differs)
            raise SampleError(f"{out} was measured with {then}, not {now}: resume it with the same settings, or "
                              f"pass another --out")
    done, strangers = {}, []
    for row in rows[1:]:
        if len(row) != len(COLUMNS):
            continue  # a damaged row: its model is measured again
        try:
            ms, runs = float(row[1]), int(row[3])
            float(row[2])
        except ValueError:
            continue
        if row[0] not in archs:
            strangers.append(row[0])
        elif ms > 0 and runs > 0 and row[0] not in done:
            done[row[0]] = row
    if strangers:
        raise SampleError(f"{out} holds {len(strangers)} row(s) of architectures that the manifest does not list "
                          f"(another sample's CSV?); pass another --out")
    tmp = out + ".tmp"
    with open(tmp, "w", encoding="utf-8", newline="") as stream:
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows(done.values())
    os.replace(tmp, out)
    return done


def check_file(folder: str, model: dict, manifest_path: str) -> None:
    path = os.path.join(folder, model["file"])
    if not os.path.isfile(path):
        raise SampleError(f"{model['file']}, listed in {os.path.basename(manifest_path)}, is missing from {folder}; "
                          f"copy the whole sample folder")
    if sha256(path) != model["sha256"]:
        raise SampleError(f"{model['file']} does not match its sha256 in {os.path.basename(manifest_path)} "
                          f"(damaged, partly copied, or from another sample); copy it again")


def time_model(np, onnxruntime, path: str, model: dict, protocol: dict):
    """(fastest run ms, median run ms, timed runs) of one model under the protocol."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = protocol["threads"]
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for files it cannot load
        raise SampleError(f"onnxruntime {onnxruntime.__version__} cannot load {model['file']} "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})") from None
    rng = np.random.default_rng(0)
    feed = {}
    for index, node in enumerate(session.get_inputs()):
        shape = [int(n) for n in model["input_shape"]] if index == 0 else [
            n if isinstance(n, int) else 1 for n in node.shape]
        dtype = DTYPES.get(node.type, "float32")
        feed[node.name] = rng.standard_normal(shape).astype(dtype)

    def run():
        session.run(None, feed)

    for _ in range(protocol["warmup"]):
        run()
    fastest, times = [], []
    for index in range(protocol["rounds"]):
        if index and protocol["gap"]:
            time.sleep(protocol["gap"])
        round_times = []
        start = time.perf_counter()
        while True:
            before = time.perf_counter()
            run()
            after = time.perf_counter()
            round_times.append(after - before)
            if after - start >= protocol["seconds"]:
                break
        fastest.append(min(round_times))
        times += round_times
    return min(fastest) * 1e3, statistics.median(times) * 1e3, len(times)


def describe_device(ort_version: str, numpy_version: str, threads: int) -> dict:
    """nasplat's fingerprint fields (nasplat.cost.latency.fingerprint) as far as this device can tell."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as stream:
            for line in stream:
                if line.startswith(("model name", "Hardware", "Model")):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": cpu, "cpus": os.cpu_count(), "machine": platform.machine(), "gpu": None, "torch": None,
            "onnxruntime": ort_version, "numpy": numpy_version, "python": platform.python_version(),
            "system": platform.platform(), "device": "cpu", "runtime": "onnxruntime", "threads": threads}


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json(path: str, data: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as stream:
        json.dump(data, stream, indent=2, sort_keys=True)
        stream.write("\n")
    os.replace(tmp, path)


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"


if __name__ == "__main__":
    sys.exit(main())
