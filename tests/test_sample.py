"""Latency samples: diverse architectures, ONNX files with a manifest, and the standalone timing script run as a
device without torch or nasplat would run it."""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from torch import nn

from nasplat.constraints import Constraint
from nasplat.cost import measure
from nasplat.cost.sample import MANIFEST, SCRIPT, choose, pool, write_sample
from nasplat.registry import SPACES, register_space
from nasplat.space import Choice, IntRange, SearchSpace, Target

# fvcore (MACs) scripts a function at import, which torch 2.13 deprecates; expected here
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

FAST = ["--warmup", "1", "--rounds", "2", "--seconds", "0.01", "--gap", "0"]


class Blind(nn.Module):
    def forward(self, x):
        return x * 0


class SampleTestSpace(SearchSpace):
    """Six small conv nets (2 widths x 3 depths): small enough to enumerate. The narrowest and shallowest
    ignores its input, as NAS-Bench-201's disconnected cells do."""

    def parameters(self):
        return {"width": Choice((4, 8)), "depth": IntRange(1, 3)}

    def build(self, arch, *, num_classes=None):
        w = arch["width"]
        layers = [Blind()] if (w, arch["depth"]) == (4, 1) else []
        layers += [nn.Conv2d(3, w, 3, padding=1), nn.ReLU()]
        for _ in range(arch["depth"]):
            layers += [nn.Conv2d(w, w, 3, padding=1), nn.ReLU()]
        return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(w, num_classes or 3))

    def target(self, arch):
        return Target((1, 3, 8, 8), 3)


if "sample_test" not in SPACES.names():
    register_space("sample_test")(SampleTestSpace)


@pytest.fixture(scope="module")
def device_env(tmp_path_factory):
    """The environment of a device that has Python, numpy and onnxruntime only: stub modules named torch,
    onnx and nasplat, first on the path, make importing any of them fail."""
    stubs = tmp_path_factory.mktemp("stubs")
    for name in ("torch", "onnx", "fvcore"):
        (stubs / f"{name}.py").write_text(f"raise ImportError('{name} is not installed on the device')\n")
    (stubs / "nasplat").mkdir()
    (stubs / "nasplat" / "__init__.py").write_text("raise ImportError('nasplat is not installed on the device')\n")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(stubs), "OMP_NUM_THREADS": "1",
           "PYTHONDONTWRITEBYTECODE": "1"}
    for name in ("torch", "nasplat", "onnx"):  # the stubs do shadow the installed packages
        probe = subprocess.run([sys.executable, "-c", f"import {name}"], env=env, cwd=stubs, capture_output=True,
                               text=True)
        assert probe.returncode != 0 and "not installed on the device" in probe.stderr
    return env


def run_script(folder: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    """`python measure_latency.py ARGS` in the sample folder, as the user runs it on the device."""
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=folder, env=env, capture_output=True, text=True,
                          timeout=120)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as stream:
        return list(csv.DictReader(stream))


@pytest.fixture(scope="module")
def nb201():
    return SPACES.create("nasbench201")


@pytest.fixture(scope="module")
def nb201_sample(tmp_path_factory, nb201):
    out = tmp_path_factory.mktemp("nb201") / "sample"
    lines: list[str] = []
    manifest = write_sample(nb201, 4, out=out, candidates=16, seed=0, progress=lines.append)
    assert manifest == out / MANIFEST
    assert any("exported" in line for line in lines)
    return out


@pytest.fixture
def copy_of(nb201_sample, tmp_path):
    """A fresh copy of the nasbench201 sample, as if copied to a device."""
    target = tmp_path / "device"
    shutil.copytree(nb201_sample, target)
    return target


def test_nasbench201_round_trip_on_a_device_without_torch(nb201, nb201_sample, device_env, copy_of):
    manifest = json.loads((copy_of / MANIFEST).read_text())
    assert manifest["complete"] and manifest["space"] == {"name": "nasbench201", "options": {"num_classes": 10}}
    assert manifest["protocol"]["runtime"] == "onnxruntime" and manifest["protocol"]["threads"] == 1
    assert [m["file"] for m in manifest["models"]] == [f"models/00{i}.onnx" for i in range(4)]
    assert all(m["input_shape"] == [1, 3, 32, 32] and m["macs"] > 0 and m["params"] > 0 for m in manifest["models"])
    assert (copy_of / "README.txt").read_text().count("nasplat latency fit nasbench201 --measured latency.csv")

    done = run_script(copy_of, device_env, *FAST)
    assert done.returncode == 0, done.stderr
    assert "[4/4]" in done.stderr and "ETA" in done.stderr
    rows = read_csv(copy_of / "latency.csv")
    assert list(rows[0]) == ["arch", "latency_ms", "median_ms", "runs"]
    assert [r["arch"] for r in rows] == [m["arch"] for m in manifest["models"]]
    for row in rows:
        assert 0 < float(row["latency_ms"]) <= float(row["median_ms"]) and int(row["runs"]) >= 2
    assert [nb201.parse(r["arch"]) for r in rows] == choose(nb201, 4, candidates=16, seed=0)
    recorded = json.loads((copy_of / "latency.json").read_text())
    assert recorded["protocol"] == {"runtime": "onnxruntime", "device": "cpu", "batch": 1,
                                    "threads": 1, "warmup": 1, "rounds": 2, "seconds": 0.01, "gap": 0.0}
    assert recorded["device"]["onnxruntime"] and recorded["device"]["torch"] is None


def test_tinynet_round_trip_under_a_budget(tmp_path, device_env):
    space = SPACES.create("tinynet")
    budget = (Constraint.parse("macs", "24M"),)
    manifest = json.loads(write_sample(space, 2, out=tmp_path, candidates=4, seed=1, constraints=budget).read_text())
    archs = [space.parse(m["arch"]) for m in manifest["models"]]
    assert len(set(archs)) == 2 and all(m["macs"] <= 24e6 for m in manifest["models"])
    assert all(m["input_shape"] == [1, 3, int(224 * a["r"]), int(224 * a["r"])]
               for m, a in zip(manifest["models"], archs))
    assert manifest["sample"]["constraints"] == [{"metric": "macs", "limit": 24e6}]

    done = run_script(tmp_path, device_env, *FAST)
    assert done.returncode == 0, done.stderr
    rows = read_csv(tmp_path / "latency.csv")
    assert [space.parse(r["arch"]) for r in rows] == archs  # TinyNet's arch text is JSON: commas quoted
    assert all(float(r["latency_ms"]) > 0 for r in rows)


def test_chosen_architectures_span_the_pool_and_are_deterministic(nb201):
    candidates = pool(nb201, 16, seed=0)
    chosen = choose(nb201, 4, candidates=16, seed=0)
    assert len(set(candidates)) == 16 and len(set(chosen)) == 4 and set(chosen) <= set(candidates)
    macs = {a: measure(nb201, a)["macs"] for a in candidates}
    assert chosen[0] == min(candidates, key=macs.get)  # the cheapest and the most expensive first
    assert chosen[1] == max(candidates, key=macs.get)
    assert choose(nb201, 4, candidates=16, seed=0) == chosen
    assert choose(nb201, 4, candidates=16, seed=1) != chosen
    # farthest-point: no two picks closer (ops differing) than the two closest of the pool's first four draws
    def differing(a, b):
        return sum(a[k] != b[k] for k in a)
    spread = min(differing(a, b) for i, a in enumerate(chosen) for b in chosen[i + 1:])
    random_spread = min(differing(a, b) for i, a in enumerate(candidates[:4]) for b in candidates[i + 1:4])
    assert spread >= random_spread


def test_disconnected_nasbench201_cells_are_never_chosen(nb201):
    from nasplat.cost.sample import _ignores_input

    assert _ignores_input(nb201, nb201.smallest()) and not nb201.connected(nb201.smallest())
    cell = nb201.parse("|skip_connect~0|+|none~0|none~1|+|none~0|none~1|avg_pool_3x3~2|")
    assert not nb201.connected(cell) and _ignores_input(nb201, cell)
    assert not _ignores_input(nb201, nb201.parse("|skip_connect~0|+|none~0|none~1|+|none~0|avg_pool_3x3~1|none~2|"))


def test_a_small_space_is_enumerated_and_constraints_filter_it():
    space = SPACES.create("sample_test")
    everything = set(space.enumerate())
    blind = space.arch({"width": 4, "depth": 1})
    assert set(pool(space, 50)) == everything and len(everything) == 6
    lines: list[str] = []
    assert set(choose(space, 5, progress=lines.append)) == everything - {blind}  # the cheapest, but constant
    assert "left out 1 architecture(s) whose output does not depend on the input" in lines
    with pytest.raises(ValueError, match="only 5 distinct sample_test architectures were found, besides 1 whose output does not depend"):
        choose(space, 6)
    limit = sorted(measure(space, a)["macs"] for a in everything)[3]
    under = choose(space, 3, constraints=(Constraint("macs", limit),))
    assert all(measure(space, a)["macs"] <= limit for a in under) and len(set(under)) == 3
    with pytest.raises(ValueError, match="accepted: onnxruntime"):
        write_sample(space, 2, out=Path("unused"), runtime="tflite")


def test_a_second_write_exports_only_what_is_missing(nb201, nb201_sample, tmp_path):
    out = tmp_path / "again"
    shutil.copytree(nb201_sample, out)
    models = sorted((out / "models").iterdir())
    before = {p.name: p.stat().st_mtime_ns for p in models}
    manifest = (out / MANIFEST).read_text()
    lines: list[str] = []
    write_sample(nb201, 4, out=out, candidates=16, seed=0, progress=lines.append)
    assert {p.name: p.stat().st_mtime_ns for p in models} == before
    assert sum("kept" in line for line in lines) == 4 and not any("exported" in line for line in lines)
    assert json.loads((out / MANIFEST).read_text()) == json.loads(manifest)

    (out / "models" / "002.onnx").write_bytes(b"damaged")
    lines.clear()
    write_sample(nb201, 4, out=out, candidates=16, seed=0, progress=lines.append)
    assert [line.split()[1] for line in lines if "exported" in line] == ["models/002.onnx"]
    assert {p.name: p.stat().st_mtime_ns for p in models if p.name != "002.onnx"} == \
        {k: v for k, v in before.items() if k != "002.onnx"}
    assert json.loads((out / MANIFEST).read_text()) == json.loads(manifest)  # the same sha256 again


def test_a_damaged_or_missing_file_is_one_line_and_exit_2(copy_of, device_env):
    model = copy_of / "models" / "001.onnx"
    model.write_bytes(model.read_bytes() + b"\0")
    done = run_script(copy_of, device_env, *FAST)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "models/001.onnx does not match its sha256" in done.stderr
    assert not (copy_of / "latency.csv").exists()  # every file is checked before the first timing

    model.unlink()
    done = run_script(copy_of, device_env, *FAST)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "models/001.onnx" in done.stderr
    assert "is missing" in done.stderr

    data = json.loads((copy_of / MANIFEST).read_text())
    (copy_of / MANIFEST).write_text(json.dumps({**data, "complete": False}))
    done = run_script(copy_of, device_env, *FAST)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "unfinished sample" in done.stderr

    done = run_script(copy_of, device_env, "--manifest", "elsewhere.json", *FAST)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "elsewhere.json not found" in done.stderr


def test_a_stopped_run_is_resumed_without_duplicates(copy_of, device_env):
    manifest = json.loads((copy_of / MANIFEST).read_text())
    first, second = manifest["models"][0]["arch"], manifest["models"][1]["arch"]
    # one row measured, then killed while writing the next one
    (copy_of / "latency.csv").write_text(f"arch,latency_ms,median_ms,runs\n{first},123.5,130,7\n{second},0.4")
    done = run_script(copy_of, device_env, *FAST)
    assert done.returncode == 0, done.stderr
    assert "1 of 4 models already in" in done.stderr
    rows = read_csv(copy_of / "latency.csv")
    assert sorted(r["arch"] for r in rows) == sorted(m["arch"] for m in manifest["models"])
    assert rows[0] == {"arch": first, "latency_ms": "123.5", "median_ms": "130", "runs": "7"}  # not measured again

    again = run_script(copy_of, device_env, *FAST)  # nothing left to measure
    assert again.returncode == 0 and read_csv(copy_of / "latency.csv") == rows
    other = run_script(copy_of, device_env, "--warmup", "1", "--rounds", "3", "--seconds", "0.01", "--gap", "0")
    assert other.returncode == 2 and "rounds=2, not rounds=3" in other.stderr


def test_a_smaller_sample_in_the_same_folder_keeps_its_models_and_drops_the_rest(nb201, nb201_sample, tmp_path):
    out = tmp_path / "smaller"
    shutil.copytree(nb201_sample, out)
    lines: list[str] = []
    # farthest-point picks from the same pool are in the same order, so 2 picks are the first 2 of 4
    manifest = json.loads(write_sample(nb201, 2, out=out, candidates=16, seed=0, progress=lines.append).read_text())
    assert sum("kept" in line for line in lines) == 2 and not any("exported" in line for line in lines)
    assert sorted(p.name for p in (out / "models").iterdir()) == ["000.onnx", "001.onnx"]
    assert [m["file"] for m in manifest["models"]] == ["models/000.onnx", "models/001.onnx"]
