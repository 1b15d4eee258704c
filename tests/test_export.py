"""The bundle: round trip, exports equal to PyTorch, damaged bundles, crash-safe writes."""
import json
import os
import shutil

import numpy as np
import onnxruntime
import pytest
import torch
from torch import nn

from nasplat import export
from nasplat.export import BundleError, export_bundle, export_run, load, read_bundle
from nasplat.registry import SPACES, register_space
from nasplat.space import Choice, IntRange, SearchSpace, Target

# TorchScript is deprecated in torch 2.13 but is one of the bundle's formats; loading it here is the point
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")

TARGET_CLASSES = 100


class TwoHeads(nn.Module):
    """Logits and a feature map, as detection and counting models return several outputs."""

    def __init__(self, body, head):
        super().__init__()
        self.body, self.head = body, head

    def forward(self, x):
        features = self.body(x)
        return self.head(features), features.mean(dim=1)


class ExportTestSpace(SearchSpace):
    """A small conv net: searched width and depth, batch norm so that buffers travel too.

    The option two_heads=True gives a model with a tuple of outputs (and tests that options travel)."""

    def parameters(self):
        return {"width": Choice((8, 16)), "depth": IntRange(1, 2)}

    def build(self, arch, *, num_classes=None):
        w = arch["width"]
        layers = [nn.Conv2d(3, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU()]
        for _ in range(arch["depth"]):
            layers += [nn.Conv2d(w, w, 3, padding=1, groups=2), nn.BatchNorm2d(w), nn.Hardswish()]
        head = [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(w, num_classes or TARGET_CLASSES)]
        if self.options.get("two_heads"):
            return TwoHeads(nn.Sequential(*layers), nn.Sequential(*head))
        return nn.Sequential(*layers, *head)

    def target(self, arch):
        return Target((1, 3, 24, 24), TARGET_CLASSES)


if "export_test" not in SPACES.names():
    register_space("export_test")(ExportTestSpace)

SHAPE = (1, 3, 16, 16)


def _trained_model(space, arch):
    """A model whose weights and batch-norm statistics differ from any fresh build's."""
    torch.manual_seed(1)
    model = space.build(arch, num_classes=10)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("running_var"):
                tensor.uniform_(0.5, 2.0)
            elif name.endswith("running_mean"):
                tensor.normal_(0, 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One full export into a run-shaped folder: run/best/ next to run/journal.jsonl."""
    run = tmp_path_factory.mktemp("run")
    (run / "journal.jsonl").write_text('{"event": "start", "time": 0}\n')
    space = ExportTestSpace()
    arch = space.arch({"width": 16, "depth": 2})
    model = _trained_model(space, arch)
    paths = export_bundle(model, arch, space, out=run / "best", costs={"macs": 1.5e6, "params": 3000},
                          input_shape=SHAPE, num_classes=10, metrics={"accuracy": 55.5, "trial": 4})
    return run, model, arch, paths


@pytest.fixture
def bundle_copy(exported, tmp_path):
    run = exported[0]
    return shutil.copytree(run / "best", tmp_path / "bundle")


def test_bundle_round_trip(exported):
    run, model, arch, paths = exported
    assert sorted(paths) == ["json", "onnx", "torchscript", "weights"]
    assert sorted(os.listdir(run / "best")) == ["arch.json", "model.onnx", "model.pt", "weights.safetensors"]
    x = torch.randn(3, *SHAPE[1:])
    for where in (run, run / "best", run / "best" / "arch.json", str(run)):
        loaded = load(where)
        assert not loaded.training
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=1e-6)
    info = read_bundle(run)
    assert info["arch"] == arch.to_dict() and info["describe"] == "depth=2 width=16"
    assert info["target"] == {"input_shape": [1, 3, 24, 24], "num_classes": TARGET_CLASSES}
    assert info["weights"] == {"input_shape": list(SHAPE), "num_classes": 10, "trained": True}
    assert info["costs"] == {"macs": 1.5e6, "params": 3000.0} and info["metrics"]["trial"] == 4


def test_load_target_is_untrained_at_target_configuration(exported):
    run = exported[0]
    model = load(run, target=True)
    assert not model.training
    assert model(torch.zeros(1, 3, 24, 24)).shape == (1, TARGET_CLASSES)


def test_exports_equal_pytorch(exported):
    run, model, _, paths = exported
    verified = read_bundle(run)["verified"]
    assert verified["onnx_max_abs_diff"] <= 1e-4 and verified["torchscript_max_abs_diff"] <= 1e-4
    assert verified["onnx_opset"] >= 17 and verified["input_shape"] == [2, *SHAPE[1:]]
    x = torch.randn(5, *SHAPE[1:])  # another batch size: the ONNX batch axis is dynamic
    with torch.no_grad():
        reference = model(x).numpy()
        scripted = torch.jit.load(str(paths["torchscript"]))(x).numpy()
    session = onnxruntime.InferenceSession(str(paths["onnx"]), providers=["CPUExecutionProvider"])
    onnx_out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert np.abs(scripted - reference).max() <= 1e-4
    assert np.abs(onnx_out - reference).max() <= 1e-4


def test_model_with_several_outputs_and_space_options(tmp_path):
    space = ExportTestSpace(two_heads=True)
    arch = space.arch({"width": 8, "depth": 1})
    model = _trained_model(space, arch)
    export_bundle(model, arch, space, out=tmp_path, costs={}, input_shape=SHAPE, num_classes=10,
                  formats=("weights", "onnx"))
    assert read_bundle(tmp_path)["space_options"] == {"two_heads": True}
    x = torch.randn(2, *SHAPE[1:])
    for loaded, original in zip(load(tmp_path)(x), model(x)):
        torch.testing.assert_close(loaded, original, rtol=0, atol=1e-6)
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["output0", "output1"]


def test_corrupted_arch_json(bundle_copy):
    arch_json = bundle_copy / "arch.json"
    arch_json.write_text(arch_json.read_text()[:60])
    with pytest.raises(BundleError, match=r"arch\.json is not valid JSON \(line \d+: "):
        load(bundle_copy)
    arch_json.write_text(json.dumps({"arch": {"space": "export_test", "params": {}}}))
    with pytest.raises(BundleError, match="field 'target' is missing"):
        read_bundle(bundle_copy)


def test_missing_or_damaged_weights(bundle_copy):
    weights = bundle_copy / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="weights.safetensors does not match the checksum"):
        load(bundle_copy)
    assert load(bundle_copy, target=True) is not None  # the untrained model needs no weights
    weights.unlink()
    with pytest.raises(BundleError, match="weights.safetensors is missing") as caught:
        load(bundle_copy)
    assert len(str(caught.value).splitlines()) == 1


def test_run_without_bundle(tmp_path):
    (tmp_path / "journal.jsonl").write_text("")
    with pytest.raises(BundleError, match="no finished trial"):
        load(tmp_path)
    with pytest.raises(BundleError, match="does not exist"):
        load(tmp_path / "nowhere")


def test_export_run_for_target_and_without_weights(exported, tmp_path):
    run = exported[0]
    paths = export_run(run, out=tmp_path / "target", formats=("json", "torchscript"), target=True)
    assert sorted(paths) == ["json", "torchscript"]
    info = read_bundle(tmp_path / "target")
    assert info["weights"] == {"input_shape": [1, 3, 24, 24], "num_classes": TARGET_CLASSES, "trained": False}
    assert torch.jit.load(str(paths["torchscript"]))(torch.zeros(2, 3, 24, 24)).shape == (2, TARGET_CLASSES)
    with pytest.raises(BundleError, match="exported without weights"):
        load(tmp_path / "target")


def test_arch_json_is_written_last_and_a_failed_export_keeps_the_old_bundle(tmp_path, monkeypatch):
    space = ExportTestSpace()
    arch = space.arch({"width": 8, "depth": 1})
    model = _trained_model(space, arch)
    renamed = []
    real_replace = os.replace
    monkeypatch.setattr(export.os, "replace", lambda src, dst: (renamed.append(os.path.basename(dst)),
                                                                real_replace(src, dst)))
    options = dict(costs={"macs": 1.0, "params": 1.0}, input_shape=SHAPE, num_classes=10,
                   formats=("json", "weights", "torchscript"))
    export_bundle(model, arch, space, out=tmp_path, **options)
    assert renamed == ["weights.safetensors", "model.pt", "arch.json"]
    before = {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)}

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(export, "_write_torchscript", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        export_bundle(_trained_model(space, space.arch({"width": 16, "depth": 1})), arch, space, out=tmp_path,
                      **options)
    assert {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)} == before  # no temp left
    load(tmp_path)


def test_an_export_that_disagrees_with_pytorch_is_refused(tmp_path, monkeypatch):
    space = ExportTestSpace()
    arch = space.arch({"width": 8, "depth": 1})
    monkeypatch.setattr(export, "allowed_difference", lambda reference: -1.0)  # every difference, even 0, is too large
    with pytest.raises(BundleError, match=r"model\.pt differs from PyTorch"):
        export_bundle(_trained_model(space, arch), arch, space, out=tmp_path, costs={}, input_shape=SHAPE,
                      num_classes=10, formats=("torchscript",))
    assert os.listdir(tmp_path) == []


def test_the_allowed_difference_scales_with_the_outputs():
    """float32 sums of large outputs differ by more than 1e-4; outputs near zero must be checked more finely."""
    assert export.allowed_difference([torch.tensor([0.5, -0.2])]) == pytest.approx(1e-4)
    assert export.allowed_difference([torch.tensor([3.0]), torch.tensor([-2e3])]) == pytest.approx(0.2)
    assert export.allowed_difference([torch.tensor([1e-13])]) == pytest.approx(1e-16)


def test_a_cell_of_large_untrained_outputs_exports_at_its_target(tmp_path):
    """An untrained NAS-Bench-201 cell of skip connections outputs ~1e3; its exports differ from PyTorch by more
    than 1e-4 in float32 and are still right."""
    from nasplat.search_spaces.nasbench201 import NasBench201Space

    space = NasBench201Space()
    arch = space.parse("|skip_connect~0|+|nor_conv_1x1~0|none~1|+|skip_connect~0|avg_pool_3x3~1|skip_connect~2|")
    torch.manual_seed(0)
    model = space.build(arch)
    export_bundle(model.eval(), arch, space, out=tmp_path, costs={}, input_shape=(1, 3, 32, 32), num_classes=10,
                  formats=("torchscript", "onnx"))
    verified = json.loads((tmp_path / "arch.json").read_text())["verified"]
    assert 1e-4 < verified["tolerance"] and verified["onnx_max_abs_diff"] <= verified["tolerance"]


def test_onnx_falls_back_to_the_torchscript_exporter(tmp_path, monkeypatch):
    real_export = torch.onnx.export

    def dynamo_fails(*args, dynamo=True, **kwargs):
        if dynamo:
            raise RuntimeError("cannot capture the graph\nmore detail")
        return real_export(*args, dynamo=False, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", dynamo_fails)
    space = ExportTestSpace()
    arch = space.arch({"width": 8, "depth": 1})
    export_bundle(_trained_model(space, arch), arch, space, out=tmp_path, costs={}, input_shape=SHAPE,
                  num_classes=10, formats=("onnx",))
    verified = read_bundle(tmp_path)["verified"]
    assert verified["onnx_exporter"] == "torchscript" and verified["onnx_dynamo_error"] == "cannot capture the graph"
    assert verified["onnx_max_abs_diff"] <= 1e-4
