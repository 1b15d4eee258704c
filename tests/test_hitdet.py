"""The hitdet space and strategy (Hit-Detector's searched backbone, neck and head): ops, the detector's levels,
costs at the target against fvcore, the supernet's weights, group norms, derivation under a MAC limit, and
screening, joint and backbone-only searches from the CLI with their exports and retraining."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nasplat.arch import Arch
from nasplat.cost import count_costs
from nasplat.registry import SPACES
from nasplat.search_spaces.hitdet import COMPONENT_OPS, COMPONENTS, OPS, MixedOp, component_of, make_op

TINY = {"stem": 8, "stages": "8:1,16:1,24:1,32:1", "neck": 16, "head_layers": 1, "resolution": 256}


@pytest.fixture(scope="module")
def space():
    return SPACES.create("hitdet", **TINY)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("c_in, c_out, stride", [(8, 8, 1), (8, 16, 2), (16, 8, 1)])
def test_every_op_maps_shapes_and_adds_the_identity_only_where_shapes_match(op, c_in, c_out, stride):
    module = make_op(op, c_in, c_out, stride).eval()
    x = torch.randn(2, c_in, 16, 16)
    with torch.no_grad():
        out = module(x)
    assert out.shape == (2, c_out, 16 // stride, 16 // stride)
    if op == "skip" and (c_in, c_out, stride) == (8, 8, 1):
        assert torch.equal(out, x)
    residual = getattr(module, "residual", None)
    if residual is not None:
        assert residual == ((c_in, c_out, stride) == (8, 8, 1) and op.startswith(("ir_", "sd_")))


def test_detector_outputs_three_levels_of_class_box_and_centerness_channels(space):
    arch = space.arch(space.fpn())
    model = space.build(arch, num_classes=7).eval()
    with torch.no_grad():
        levels = model(torch.randn(2, 3, 128, 128))
    assert [tuple(t.shape) for t in levels] == [(2, 12, 16, 16), (2, 12, 8, 8), (2, 12, 4, 4)]
    # class logits start at the 1% prior, so that background does not swamp the first steps
    assert torch.sigmoid(levels[0][:, :7]).mean().item() == pytest.approx(0.01, rel=0.3)


def test_slots_cover_backbone_neck_and_head_with_the_paper_vocabulary(space):
    slots = space.plan.slots
    assert [s for s in slots if s[0] == "b"] == ["b0", "b1", "b2", "b3"]
    assert [s for s in slots if s[0] == "n"] == [f"n{i}" for i in range(6)]
    assert [s for s in slots if s[0] == "h"] == ["h0"]
    assert set(space.parameters()) == set(slots)
    assert {s: p.values for s, p in space.parameters().items()} == {s: COMPONENT_OPS[component_of(s)] for s in slots}
    assert "skip" in COMPONENT_OPS["backbone"] and "skip" not in COMPONENT_OPS["neck"] + COMPONENT_OPS["head"]
    assert [slots[f"b{i}"].stride for i in range(4)] == [2, 2, 2, 2]
    assert slots["h0"].sides == (32, 16, 8)  # the head runs on P3..P5 of a 256 target


def test_costs_are_fvcore_macs_of_the_whole_detector_at_the_target(space):
    rng = random.Random(0)
    archs = [space.arch(space.fpn()), space.smallest()] + [space.arch(space.sample(rng)) for _ in range(4)]
    for arch in archs:
        whole = count_costs(space.build(arch), (1, 3, 256, 256))["macs"]
        assert space.cost(arch) == pytest.approx(whole, rel=1e-9)
    assert space.cost(space.smallest()) < min(space.cost(a) for a in archs[2:])


def test_default_space_spans_the_documented_2g_budget():
    space = SPACES.create("hitdet")
    assert space.target(space.smallest()).input_shape == (1, 3, 512, 512)
    assert space.cost(space.smallest()) < 0.5e9 < 2e9 < space.cost(space.arch({s: "ir_k7_e6" for s in space.plan.slots}))


def test_supernet_with_one_hot_weights_equals_the_standalone_network(space):
    torch.manual_seed(0)
    net = space.supernet().eval()
    arch = space.arch(space.sample(random.Random(3)))
    chosen = space.searched(arch)
    with torch.no_grad():
        for slot, alpha in net.alphas().items():
            alpha.fill_(-1e4)[net.candidates[slot].index(chosen[slot])] = 0.0
    standalone = space.build(arch).eval()
    for slot, module in net.slot.items():  # copy the chosen op's weights into the standalone network
        op = module.ops[module.candidates.index(chosen[slot])] if isinstance(module, MixedOp) else module
        standalone.slot[slot].load_state_dict(op.state_dict())
    standalone.stem.load_state_dict(net.stem.state_dict())
    standalone.predictor.load_state_dict(net.predictor.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(net(x), standalone(x)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert net.derive()[0] == chosen


def test_candidates_fix_unsearched_components_at_the_fpn_baseline(space):
    candidates = space.candidates({"backbone": ("ir_k3_e3", "ir_k5_e6")})
    net = space.supernet(candidates=candidates)
    assert set(net.searched_slots) == {"b0", "b1", "b2", "b3"}
    assert candidates["n0"] == ("conv_1x1",) and candidates["n3"] == ("conv_3x3",) and candidates["h0"] == ("conv_3x3",)
    fixed = space.cost(space.arch({**space.fpn(), **{f"b{i}": "ir_k3_e3" for i in range(4)}}))
    with torch.no_grad():
        for alpha in net.arch_parameters():
            alpha.copy_(torch.tensor([50.0, -50.0]))
        assert float(net.expected_cost()) == pytest.approx(fixed, rel=1e-6)
    with pytest.raises(ValueError, match="unknown hitdet component 'tail'"):
        space.candidates({"tail": OPS})
    with pytest.raises(ValueError, match="ir_k9_e6"):
        space.candidates({"neck": ("ir_k9_e6",)})


def test_group_norms_measure_how_much_each_op_is_used_across_a_component(space):
    net = space.supernet(candidates=space.candidates({"neck": ("conv_1x1", "sd_k3_d1", "sd_k5_d3")}))
    with torch.no_grad():
        for alpha in net.arch_parameters():
            alpha.copy_(torch.tensor([0.0, 10.0, 0.0]))  # every neck slot prefers sd_k3_d1
    norms = net.group_norms("neck")
    assert set(norms) == {"conv_1x1", "sd_k3_d1", "sd_k5_d3"} and net.group_norms("head") == {}
    assert float(norms["sd_k3_d1"]) == pytest.approx(6 ** 0.5, rel=1e-3)  # weight ~1 on each of 6 slots
    assert float(norms["conv_1x1"]) < 0.01
    # the penalty is differentiable in the alphas (the screening's architecture step descends it)
    sum(norms.values()).backward()
    assert all(a.grad is not None for a in net.arch_parameters())


def test_derive_cheapens_the_argmax_until_it_fits_the_limit(space):
    net = space.supernet(candidates=space.candidates({c: ("conv_3x3", "ir_k7_e6", "sd_k3_d1") for c in COMPONENTS}))
    with torch.no_grad():
        for alpha in net.arch_parameters():
            alpha.copy_(torch.tensor([1.0, 3.0, 0.0]))
    greedy, info = net.derive()
    assert set(greedy.values()) == {"ir_k7_e6"} and info == {}
    limit = 0.6 * space.cost(space.arch(greedy))
    fitted, info = net.derive(limit=limit)
    assert space.cost(space.arch(fitted)) <= limit and info["cheapened"] >= 1
    # just over the limit, one swap, and it is the one that loses the least weight: to conv_3x3 (e^1), not
    # to sd_k3_d1 (e^0), in a slot where conv_3x3 is cheaper than ir_k7_e6
    one, info = net.derive(limit=space.cost(space.arch(greedy)) - 1)
    changed = {s: op for s, op in one.items() if op != greedy[s]}
    assert info == {"cheapened": 1} and list(changed.values()) == ["conv_3x3"]
    # any other constraint (a measured latency) as a predicate on the choice: cheapened until it holds
    calls = []
    fitted, info = net.derive(fits=lambda chosen: calls.append(1) or list(chosen.values()).count("ir_k7_e6") <= 2)
    assert list(fitted.values()).count("ir_k7_e6") == 2 and info["cheapened"] == len(calls) - 1


def test_bad_options_are_one_clear_line():
    with pytest.raises(ValueError, match="channels:blocks"):
        SPACES.create("hitdet", stages="24-2")
    with pytest.raises(ValueError, match="at least 3"):
        SPACES.create("hitdet", stages="24:2,32:2")
    with pytest.raises(ValueError, match="multiple of 32"):
        SPACES.create("hitdet", resolution=500)


# -- the hitdet strategy: screening, then the joint search, from the CLI ---------------------------------------

LIMIT = 0.9  # of the FPN baseline's MACs in the TINY space: the budget binds


def _search(tmp_path, *options: str, export: str = "none") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nasplat.cli", *_search_args(tmp_path, *options, export=export)],
                          capture_output=True, text=True, timeout=900)


def _search_args(tmp_path, *options: str, export: str = "none") -> list[str]:
    space = SPACES.create("hitdet", **TINY)
    args = ["search", "hitdet", "--strategy", "hitdet", "--epochs", "1", "--out", str(tmp_path), "--export", export,
            "--flops", str(int(LIMIT * space.cost(space.arch(space.fpn()))))]
    for key, value in TINY.items():
        args += ["--space-option", f"{key}={value}"]
    for key, value in {"base_resolution": 32, "limit_train": 32, "limit_val": 16, "batch_size": 16}.items():
        args += ["--task-option", f"{key}={value}"]
    for key, value in {"screen_epochs": 1, "search_epochs": 1, "keep_backbone": 3, "keep_neck": 2, "keep_head": 2,
                       "batch_size": 16, "eval_limit": 16}.items():
        args += ["--strategy-option", f"{key}={value}"]
    for option in options:
        args += ["--strategy-option", option]
    return args


def _journal(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "journal.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def joint_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("joint")
    done = _search(folder, export="torchscript,onnx")
    assert done.returncode == 0, done.stderr[-3000:]
    return next(folder.iterdir())


def test_search_screens_each_component_then_searches_the_kept_ops_jointly(joint_run, space):
    events = _journal(joint_run)
    screened = [e for e in events if e["event"] == "supernet" and "screened" in e]
    assert [e["screened"] for e in screened] == list(COMPONENTS)
    kept = {e["screened"]: e["kept"] for e in screened}
    assert [len(kept[c]) for c in COMPONENTS] == [3, 2, 2]
    for e in screened:  # the kept ops are those of largest group norm, and there is a norm for every op
        norms = e["group_norms"]
        assert set(norms) == set(COMPONENT_OPS[e["screened"]]) and min(norms[op] for op in kept[e["screened"]]) >= max(
            v for op, v in norms.items() if op not in kept[e["screened"]])
    stages = [e["stage"] for e in events if e["event"] == "supernet" and "epoch" in e]
    assert stages == ["screen backbone", "screen neck", "screen head", "joint"]
    manifest = json.loads((joint_run / "best" / "arch.json").read_text())
    arch = Arch.from_dict(manifest["arch"])
    chosen = space.searched(arch)
    costs = space.op_costs  # the joint search kept to the sub-spaces, widened by a component's cheapest op at most
    cheapest = {c: min(COMPONENT_OPS[c], key=lambda op: sum(costs[s][op] for s in space.plan.component(c)))
                for c in COMPONENTS}
    assert all(chosen[s] in (*kept[component_of(s)], cheapest[component_of(s)]) for s in chosen)
    assert manifest["costs"]["macs"] <= LIMIT * space.cost(space.arch(space.fpn()))
    assert manifest["costs"]["macs"] == pytest.approx(space.cost(arch))
    assert manifest["target"]["input_shape"] == [1, 3, 256, 256] and "map" in manifest["metrics"]


def test_searched_detector_exports_torchscript_with_nms_and_onnx_of_the_network(joint_run):
    manifest = json.loads((joint_run / "best" / "arch.json").read_text())
    verified = manifest["verified"]
    assert verified["torchscript_postprocessed"] and verified["torchscript_max_abs_diff"] <= 1e-4
    assert verified["onnx_max_abs_diff"] <= 1e-4
    scripted = torch.jit.load(str(joint_run / "best" / "model.pt"))
    boxes, scores, labels = scripted(torch.randn(1, 3, 32, 32))
    assert boxes.shape == (1, 100, 4) and scores.shape == labels.shape == (1, 100)
    import onnxruntime

    session = onnxruntime.InferenceSession(str(joint_run / "best" / "model.onnx"), providers=["CPUExecutionProvider"])
    levels = session.run(None, {"input": torch.randn(1, 3, 32, 32).numpy()})
    assert [a.shape for a in levels] == [(1, 10, 4, 4), (1, 10, 2, 2), (1, 10, 1, 1)]


def test_searched_detector_retrains_from_the_cli(joint_run):
    done = subprocess.run([sys.executable, "-m", "nasplat.cli", "retrain", str(joint_run), "--epochs", "1"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    retrained = [e for e in _journal(joint_run) if e["event"] == "retrain"]
    assert retrained and "map50" in retrained[-1]["metrics"]


def test_backbone_only_search_keeps_the_fpn_neck_and_head(tmp_path, space):
    done = _search(tmp_path, "components=backbone")
    assert done.returncode == 0, done.stderr[-3000:]
    run = next(tmp_path.iterdir())
    events = _journal(run)
    assert [e["screened"] for e in events if e["event"] == "supernet" and "screened" in e] == ["backbone"]
    chosen = space.searched(Arch.from_dict(json.loads((run / "best" / "arch.json").read_text())["arch"]))
    fpn = space.fpn()
    assert all(chosen[s] == fpn[s] for s in chosen if component_of(s) != "backbone")


@pytest.mark.parametrize("args, message", [
    (["search", "binary-cells", "--strategy", "hitdet"], "search hitdet with it"),
    (["search", "hitdet", "--strategy", "hitdet", "--strategy-option", "components=tail"], "components='tail'"),
    (["search", "hitdet", "--strategy", "hitdet", "--strategy-option", "keep_neck=0"], "keep_neck=0"),
    (["search", "hitdet", "--space-option", "stages=8:1"], "at least 3"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    done = subprocess.run([sys.executable, "-m", "nasplat.cli", *args, "--out", str(tmp_path)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr


def test_kill_9_mid_screening_resumes_to_the_same_search(tmp_path, tmp_path_factory):
    """Killed in the neck's screening, resumed: the journal's supernet steps and the derived detector are
    those of an unbroken run (no epoch lost or repeated, the backbone's screening not redone)."""
    longer = ("screen_epochs=2", "search_epochs=2")
    clean_folder = tmp_path_factory.mktemp("clean")
    assert _search(clean_folder, *longer).returncode == 0
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "nasplat.cli", *_search_args(killed, *longer)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, run = time.time() + 300, None
    while time.time() < deadline and proc.poll() is None:
        runs = list(killed.iterdir()) if killed.exists() else []
        steps = [e for e in _journal(runs[0]) if e["event"] == "supernet"] if runs and (
            runs[0] / "journal.jsonl").exists() else []
        if any(e.get("stage") == "screen neck" for e in steps):
            run = runs[0]
            break
        time.sleep(0.02)
    assert run is not None, "the search never reached the neck's screening"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = subprocess.run([sys.executable, "-m", "nasplat.cli", "search", "--resume", str(run)], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    strip = lambda events: [{k: v for k, v in e.items() if k != "time"} for e in events  # noqa: E731
                            if e["event"] in ("supernet", "derived")]
    assert strip(_journal(run)) == strip(_journal(next(clean_folder.iterdir())))
