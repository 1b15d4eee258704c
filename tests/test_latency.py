"""Latency: the protocol, its devices and cache, the ray: device, and latency-constrained searches."""
from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import torch
from torch import nn

from nasplat.cli import main
from nasplat.constraints import Constraint
from nasplat.cost import CostModel, measure
from nasplat.cost import latency as lat
from nasplat.cost.latency import LatencyError, LatencyPlan, Protocol, measure_arch, measure_model
from nasplat.registry import SPACES
from nasplat.runner.trial import evaluate
from nasplat.strategy import Trial
from nasplat.tasks.base import Task

FAST = Protocol(warmup=1, rounds=3, seconds=0.01, gap=0.0)


@pytest.mark.parametrize("device, expected", [("cpu", (None, "cpu")), ("cuda:1", (None, "cuda:1")),
                                              ("ray:edge", ("edge", "cpu")), ("ray:edge:cuda", ("edge", "cuda"))])
def test_devices_parse(device, expected):
    assert lat.parse_device(device) == expected


@pytest.mark.parametrize("device", ["tpu", "cpu:0", "cuda:x", "ray:", "ray:edge:tpu"])
def test_unknown_devices_are_refused_with_the_accepted_forms(device):
    with pytest.raises(LatencyError, match="cpu, cuda, cuda:N or ray:<resource>|needs a resource name"):
        Protocol(device=device)


def test_bad_protocol_values_are_refused():
    with pytest.raises(LatencyError, match="runtime"):
        Protocol(runtime="tensorrt")
    with pytest.raises(LatencyError, match="batch"):
        Protocol(batch=0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(LatencyError, match="no CUDA GPU"):
        measure_model(nn.Linear(4, 4), (1, 4), protocol=Protocol(device="cuda"))


@pytest.mark.parametrize("runtime", ["torch", "onnxruntime"])
def test_a_figure_records_its_protocol_and_fingerprint(runtime):
    protocol = Protocol(runtime=runtime, batch=2, warmup=1, rounds=3, seconds=0.01, gap=0.01)
    figure = measure_model(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()), (1, 3, 16, 16), protocol=protocol)
    assert figure.ms > 0 and len(figure.rounds_ms) == 3 and figure.runs >= 3
    assert figure.ms == min(figure.rounds_ms)  # the fastest run of all rounds
    assert figure.median_ms >= min(figure.rounds_ms)
    assert figure.input_shape == (2, 3, 16, 16)  # the protocol's batch
    assert figure.fingerprint["runtime"] == runtime and figure.fingerprint["threads"] == 1
    assert figure.fingerprint["torch"] == torch.__version__
    assert (figure.fingerprint["onnxruntime"] is not None) == (runtime == "onnxruntime")
    assert lat.Latency.from_dict(json.loads(json.dumps(figure.to_dict()))) == figure


def test_a_much_larger_model_measures_slower():
    small = nn.Conv2d(3, 4, 3, padding=1)
    large = nn.Sequential(*[nn.Conv2d(64 if i else 3, 64, 3, padding=1) for i in range(4)])
    shape = (1, 3, 64, 64)  # about 200 times the MACs
    assert measure_model(large, shape, protocol=FAST).ms > 5 * measure_model(small, shape, protocol=FAST).ms


def test_measurements_are_cached_per_fingerprint_and_arch(monkeypatch):
    space = SPACES.create("toy")
    calls = []
    real = lat.measure_model
    monkeypatch.setattr(lat, "measure_model", lambda *a, **k: calls.append(1) or real(*a, **k))
    lat.clear_cache()
    a, b = space.arch({"width": 4, "scale": 0.5}), space.arch({"width": 8, "scale": 0.5})
    first = measure_arch(space, a, protocol=FAST)
    assert measure_arch(space, a, protocol=FAST) == first and len(calls) == 1
    measure_arch(space, b, protocol=FAST)
    measure_arch(space, a, protocol=Protocol(warmup=1, rounds=3, seconds=0.01, gap=0.0, threads=2))  # another protocol
    assert len(calls) == 3


class _Table:
    """A stand-in lookup table whose prediction is a fixed function of the architecture."""

    def __init__(self, predict):
        self._predict = predict

    def predict(self, space, arch):
        return self._predict(space, arch)


def test_tinynet_solves_its_width_for_a_latency_limit():
    space = SPACES.create("tinynet")
    # a deterministic stand-in for latency: 1 ms per 10M MACs
    costs = CostModel(latency=LatencyPlan(FAST, _Table(lambda sp, arch: measure(sp, arch)["macs"] / 1e7)))
    limit = Constraint("latency", 3.0)
    arch = space.complete({"r": 0.6, "d": 0.7}, constraints=[limit], costs=costs)
    assert costs(space, arch)["latency"] <= 3.0
    wider = space.arch({"r": 0.6, "d": 0.7, "w": round(arch["w"] + 0.05, 3)})
    assert costs(space, wider)["latency"] > 3.0  # the solve keeps w as large as the limit allows


class _Task(Task):
    num_classes = 10
    base_resolution = 16
    default_epochs = 1

    def __init__(self):
        self.trained = 0

    def train_eval(self, model, *, input_size, epochs, seed, on_epoch=None):
        self.trained += 1
        return {"accuracy": 50.0}


def _evaluate(prediction: float, limit_ms: float) -> tuple[object, _Task]:
    space, task = SPACES.create("toy"), _Task()
    costs = CostModel(latency=LatencyPlan(FAST, _Table(lambda sp, arch: prediction)))
    trial = Trial(0, space.arch({"width": 8, "scale": 1.0}))
    outcome = evaluate(trial, space=space, task=task, constraints=[Constraint("latency", limit_ms)], epochs=1,
                       seed=0, costs=costs)
    return outcome.result, task


def test_a_table_rejects_before_training_by_predicted_latency():
    result, task = _evaluate(prediction=50.0, limit_ms=10.0)
    assert result.status == "infeasible" and task.trained == 0
    assert result.metrics["latency_predicted"] == 50.0 and "latency" not in result.metrics
    assert "predicted latency 50ms > 10ms" in result.error


def test_the_measured_latency_has_the_last_word_after_training():
    lat.clear_cache()
    result, task = _evaluate(prediction=1e-6, limit_ms=1e-6)  # admitted by the table, too slow when measured
    assert task.trained == 1 and result.status == "infeasible"
    assert result.metrics["latency"] > 1e-6 and result.metrics["accuracy"] == 50.0
    assert "measured latency" in result.error and "predicted" in result.error
    result, _ = _evaluate(prediction=1e-6, limit_ms=1e6)
    assert result.ok and result.metrics["latency"] > 0 and result.metrics["latency_predicted"] == 1e-6


def _toy_search(tmp_path: Path, *extra: str) -> Path:
    code = main(["search", "toy", "--strategy", "random", "--trials", "6", "--seed", "3", "--out", str(tmp_path),
                 *extra])
    assert code == 0
    (run,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    return run


def _results(run: Path) -> list[dict]:
    events = [json.loads(line) for line in (run / "journal.jsonl").read_text().splitlines()]
    return [e for e in events if e.get("event") == "result"]


def test_latency_constrained_search_keeps_only_architectures_that_meet_the_limit(tmp_path, capsys):
    lat.clear_cache()
    space = SPACES.create("toy")
    protocol = Protocol()  # the search's default protocol: figures below come from the same cache
    figures = {w: measure_arch(space, space.arch({"width": w, "scale": 0.5}), protocol=protocol).ms
               for w in (4, 8, 16)}
    limit = sorted(figures.values())[1]
    run = _toy_search(tmp_path, "--latency", f"{limit}ms")
    results = _results(run)
    assert results and all("latency" in r["metrics"] for r in results)
    for r in results:
        assert (r["status"] == "ok") == (r["metrics"]["latency"] <= limit), r
    best = json.loads((run / "best" / "arch.json").read_text())
    assert best["costs"]["latency"] <= limit
    assert best["latency"]["latency_fingerprint"]["cpu"] and best["latency"]["latency_protocol"]["batch"] == 1
    start = next(json.loads(x) for x in (run / "journal.jsonl").read_text().splitlines() if '"start"' in x)
    assert start["latency_protocol"]["device"] == "cpu" and start["latency_fingerprint"]["threads"] == 1
    assert "latency" in capsys.readouterr().out


def test_multi_objective_search_writes_the_pareto_front(tmp_path):
    run = _toy_search(tmp_path, "--objective", "accuracy,latency")
    ok = [r for r in _results(run) if r["status"] == "ok"]
    front = json.loads((run / "report" / "pareto" / "front.json").read_text())
    assert front["objectives"] == ["accuracy", "latency"] and front["front"]
    on_front = {f["trial"] for f in front["front"]}

    def dominated(r):
        return any(o["metrics"]["accuracy"] >= r["metrics"]["accuracy"] and
                   o["metrics"]["latency"] <= r["metrics"]["latency"] and
                   (o["metrics"]["accuracy"], o["metrics"]["latency"]) !=
                   (r["metrics"]["accuracy"], r["metrics"]["latency"]) for o in ok)
    assert on_front == {r["trial"] for r in ok if not dominated(r)} - _later_duplicates(ok)
    for entry in front["front"]:
        bundle = json.loads((run / "report" / "pareto" / entry["bundle"] / "arch.json").read_text())
        assert bundle["costs"]["latency"] == entry["latency"]
    best = json.loads((run / "best" / "arch.json").read_text())
    assert best["metrics"]["accuracy"] == max(r["metrics"]["accuracy"] for r in ok)


def _later_duplicates(results: list[dict]) -> set[int]:
    seen, later = set(), set()
    for r in sorted(results, key=lambda r: r["trial"]):
        values = (r["metrics"]["accuracy"], r["metrics"]["latency"])
        if values in seen:
            later.add(r["trial"])
        seen.add(values)
    return later


@pytest.mark.parametrize("argv, message", [
    (["--strategy", "evolution", "--objective", "accuracy,latency"], "searches accuracy alone"),
    (["--objective", "latency,accuracy"], "give accuracy first"),
    (["--device", "cpu"], "nothing asks for latency"),
    (["--latency", "5ms", "--device", "tpu"], "unknown latency device 'tpu'"),
    (["--latency", "-1ms"], "must be positive"),
])
def test_bad_latency_input_is_one_line_and_exit_2(tmp_path, capsys, argv, message):
    code = main(["search", "toy", "--trials", "1", "--out", str(tmp_path), *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.fixture
def ray_node():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=1, resources={"edgebox": 1}, include_dashboard=False, log_to_driver=False,
             logging_level="ERROR")
    yield ray
    ray.shutdown()


def test_ray_device_measures_on_the_node_with_the_resource(ray_node):
    lat.clear_cache()
    space = SPACES.create("tinynet")
    arch = space.smallest()
    figure = measure_arch(space, arch, protocol=Protocol(device="ray:edgebox", warmup=1, rounds=3, seconds=0.02))
    assert figure.ms > 0 and figure.protocol.device == "ray:edgebox"
    assert figure.fingerprint["device"] == "cpu" and figure.fingerprint["torch"] == torch.__version__
    with pytest.raises(LatencyError, match="no node of the Ray cluster advertises the resource 'jetson'.*edgebox"):
        measure_arch(space, arch, protocol=Protocol(device="ray:jetson", warmup=1, rounds=1, seconds=0.01))


def test_the_plan_corrects_its_table_by_what_the_search_measured():
    space = SPACES.create("toy")
    arch = space.arch({"width": 4, "scale": 0.5})
    plan = LatencyPlan(FAST, _Table(lambda sp, a: 2.0))
    assert plan.estimate(space, arch) == 2.0
    plan.observe({"latency": 3.0, "latency_predicted": 2.0})
    plan.observe({"latency": 1.0})  # no prediction: nothing to learn
    assert plan.estimate(space, arch) == 3.0  # while few: the largest ratio
    for measured in (2.0, 2.2, 2.4):
        plan.observe({"latency": measured, "latency_predicted": 2.0})
    ratios = sorted([1.5, 1.0, 1.1, 1.2])
    assert plan.correction == pytest.approx(statistics.quantiles(ratios, n=4)[2])
    assert 1.2 < plan.correction < 1.5


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_training_on_cuda_without_a_gpu_is_one_line(tmp_path, capsys):
    code = main(["search", "tinynet", "--flops", "24M", "--train-device", "cuda", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--train-device cuda: this machine has no CUDA GPU" in err and len(err.splitlines()) == 1
    assert not any(tmp_path.iterdir())

