"""The TinyNet search end to end on a small slice of the default proxy: search, export, load, retrain."""
import json

import pytest
import torch

from nasplat import api
from nasplat.cli import main
from nasplat.export import load

SMALL = {"limit_train": 512, "limit_val": 256}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    outcome = api.search("tinynet", strategy="random", flops="24M", trials=2, epochs=1, seed=0, out=out,
                         task_options=SMALL)
    assert outcome.reason == "done"
    return outcome.run


def test_search_respects_the_budget_and_writes_the_bundle(run):
    results = [r for _, r in run.results().values()]
    assert len([r for r in results if r.status != "infeasible"]) == 2
    for r in results:
        if r.ok:
            assert 0.9 * 24e6 <= r.metrics["macs"] <= 24e6  # width solved just under the budget
    info = json.loads((run.best / "arch.json").read_text())
    assert info["target"]["num_classes"] == 1000
    side = int(224 * info["arch"]["params"]["r"])
    assert info["target"]["input_shape"] == [1, 3, side, side]
    assert info["verified"]["onnx_max_abs_diff"] <= 1e-4 and info["verified"]["torchscript_max_abs_diff"] <= 1e-4
    for name in ("weights.safetensors", "model.pt", "model.onnx"):
        assert (run.best / name).exists()


def test_load_trained_and_target(run):
    info = json.loads((run.best / "arch.json").read_text())
    model = load(run.best)
    shape = info["weights"]["input_shape"]
    assert model(torch.zeros(shape)).shape == (1, info["weights"]["num_classes"])
    target = load(run.best, target=True)
    assert target(torch.zeros(info["target"]["input_shape"])).shape == (1, 1000)


def test_export_target_and_retrain(run, tmp_path, capsys):
    assert main(["export", str(run.path), "--format", "json,onnx", "--target", "--out", str(tmp_path)]) == 0
    exported = json.loads((tmp_path / "arch.json").read_text())
    assert exported["weights"]["trained"] is False and exported["weights"]["num_classes"] == 1000
    assert (tmp_path / "model.onnx").exists() and not (tmp_path / "model.pt").exists()
    assert main(["retrain", str(run.path), "--epochs", "1"]) == 0
    events = [e for e in run.events() if e["event"] == "retrain"]
    assert events and 0 <= events[-1]["metrics"]["accuracy"] <= 100
    assert "Retrained for 1 epochs" in (run.report / "summary.md").read_text()
