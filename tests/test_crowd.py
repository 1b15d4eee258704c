"""The crowd space (AMSNet-like encoder-decoder cells with multi-path links): density maps at the output stride,
the supernet's architecture weights, derivation, costs at 3 x 512 x 512, export, and searches from the CLI."""
from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nasplat.arch import Arch
from nasplat.cost import measure
from nasplat.export import export_bundle
from nasplat.oneshot.contract import PathSupernet, missing
from nasplat.registry import SPACES
from nasplat.retrain import retrain
from nasplat.search_spaces.crowd import CELL_TYPES, OPS, PRIOR_DENSITY, Link, SuperCell
from nasplat.tasks.image_task import reinitialise

TINY = {"channels": 8, "depth": 3}  # decoder cells at strides 8 and 4: two links of three candidates each


@pytest.fixture(scope="module")
def space():
    return SPACES.create("crowd", **TINY)


def _arch(space, seed: int) -> Arch:
    return space.complete(space.sample(random.Random(seed)))


def _largest(space) -> Arch:
    """Per edge the op of most MACs (on every cell edge it is conv_5x5), per link the candidate of most."""
    costs = space.op_costs()
    k = OPS.index("conv_5x5")
    assert all(int(costs.cells.per_op[t].argmax(1).unique()) == k for t in CELL_TYPES)
    cell = tuple(("conv_5x5", s) for _ in range(3) for s in range(2))
    links = {t: (("conv_5x5", int(costs.links.per_op[t][:, k].argmax())),) for t in space.plan.links}
    return space.arch({"encoder": cell, "decoder": cell, **links})


@pytest.mark.parametrize("stride", [1, 2, 4, 8])
def test_output_is_a_nonnegative_density_map_at_the_output_stride(stride):
    space = SPACES.create("crowd", channels=8, depth=3, output_stride=stride)
    model = space.build(_arch(space, stride)).eval()
    assert len(model.decoder) == 3 + 1 - int(math.log2(stride))  # upsampling from stride 16 to the output's
    sides = []
    for cell in model.decoder:
        cell.register_forward_hook(lambda m, i, o: sides.append(o.shape[-1]))
    with torch.no_grad():
        for n in (64, 96, 100):  # 100: odd sides on the way down (50, 25, 13, 7)
            out = model(torch.randn(2, 3, n, n))
            assert out.shape == (2, 1, math.ceil(n / stride), math.ceil(n / stride)), n
            assert out.min() >= 0 and torch.isfinite(out).all()
        assert sides[:len(model.decoder)] == [64 // s for s in space.plan.decoder_strides]
        model.head.conv.bias.fill_(-50.0)  # pre-activations far below zero: a linear head would go negative
        assert model(torch.randn(1, 3, 64, 64)).min() >= 0


def test_head_starts_at_the_prior_density_even_after_reinitialise(space):
    model = space.build(_arch(space, 0))
    for p in model.head.parameters():
        torch.nn.init.normal_(p)
    reinitialise(model)  # what the task does before training
    assert torch.nn.functional.softplus(model.head.conv.bias).item() == pytest.approx(PRIOR_DENSITY)


def test_supernet_weighs_every_edge_and_every_link_candidate(space):
    torch.manual_seed(0)
    net = space.supernet()
    assert {t: tuple(a.shape) for t, a in net.alphas.items()} == {
        "encoder": (9, 9), "decoder": (9, 9), "link1": (3, 9), "link2": (3, 9)}
    assert all(len(c.edges) == 9 for c in net.modules() if isinstance(c, SuperCell) and c.layout.nodes == 3)
    assert [len(link.projections) for link in net.links] == [3, 3]
    assert missing(net, PathSupernet) == []  # what the bandits sample paths of
    arch, weights = net.arch_parameters(), net.weight_parameters()
    assert len(arch) == 8  # alphas and betas of the two cell types and the two links
    assert {id(p) for p in arch}.isdisjoint(id(p) for p in weights)
    assert len(arch) + len(weights) == len(list(net.parameters()))
    out = net(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 1, 16, 16) and out.min() >= 0
    out.mean().backward()
    for p in arch:  # every edge (a row of alphas, an entry of betas) and every link candidate takes part
        assert p.grad is not None and bool((p.grad.reshape(len(p), -1) != 0).any(1).all()), p.shape


def test_mixed_forward_with_one_hot_weights_equals_the_path(space):
    torch.manual_seed(0)
    net = space.supernet(partial_channels=2, edge_normalization=False).eval()
    rng = random.Random(3)
    path = {t: tuple(rng.randrange(len(OPS)) for _ in range(len(a))) for t, a in net.alphas.items()}
    with torch.no_grad():
        for t, ops in path.items():
            net.alphas[t].fill_(-1e4)
            net.alphas[t][torch.arange(len(ops)), torch.tensor(ops)] = 0.0
        x = torch.randn(2, 3, 32, 32)
        assert torch.allclose(net(x), net(x, path=path), atol=1e-5)
    with pytest.raises(ValueError, match="lacks cell type"):
        net(x, path={t: p for t, p in path.items() if t != "link2"})


def test_links_are_derived_by_argmax_over_their_candidates(space):
    net = space.supernet()  # PC-DARTS: a softmax weight per candidate (betas)
    conv = OPS.index("conv_3x3")
    with torch.no_grad():
        for a in net.alphas.values():
            a.zero_()
        net.alphas["link1"][2, conv] = 3.0  # the deepest encoder output's conv_3x3 outweighs everything
        net.link_arch.betas["link2"].copy_(torch.tensor([0.0, 2.0, 0.0]))  # equal ops: the candidate weight decides
    genotypes, _ = net.derive()
    assert genotypes["link1"] == (("conv_3x3", 2),)
    assert genotypes["link2"][0][1] == 1
    model = space.build(space.arch(genotypes))
    assert [link.source for link in model.links if isinstance(link, Link)] == [2, 1]


def test_derived_network_is_valid_and_costs_what_cost_measure_says(space):
    costs = space.op_costs()
    low, high = measure(space, space.smallest())["macs"], measure(space, _largest(space))["macs"]
    torch.manual_seed(1)
    net = space.supernet()
    with torch.no_grad():
        for a in net.arch_parameters():
            a.normal_()
    arch = space.complete(net.derive()[0])
    space.validate(arch)
    macs = measure(space, arch)["macs"]
    assert costs.of(arch) == pytest.approx(macs, rel=1e-9) and low <= macs <= high
    with torch.no_grad():
        assert low < float(net.expected_cost()) < high
    limit = (low + macs) / 2
    cheap, info = net.derive(limit=limit)
    assert measure(space, space.complete(cheap))["macs"] <= limit and info["ops_cheapened_for_budget"] > 0


def test_5g_lies_inside_the_default_space_at_512(capsys):
    """The default space (C=24, depth 3, output stride 4) at 3 x 512 x 512: about 0.33G to 7.9G MACs."""
    space = SPACES.create("crowd")
    costs = space.op_costs()
    archs = [space.smallest(), _arch(space, 0), _arch(space, 1), _largest(space)]
    macs = [measure(space, a)["macs"] for a in archs]
    assert [costs.of(a) for a in archs] == pytest.approx(macs, rel=1e-9)  # the split into ops adds up
    assert macs[0] == min(macs) and macs[-1] == max(macs)
    assert macs[0] < 1e9 and macs[0] < 5e9 < macs[-1]
    assert space.target(archs[0]).input_shape == (1, 3, 512, 512)
    with capsys.disabled():
        print(f"\ncrowd at 512x512: smallest {macs[0] / 1e9:.3f}G, largest {macs[-1] / 1e9:.3f}G MACs")


def test_arch_round_trips_and_malformed_ones_are_rejected(space):
    arch = _arch(space, 2)
    again = Arch.from_json(arch.to_json())
    assert again == arch and space.searched(again) == {t: arch[t] for t in space.groups}
    torch.manual_seed(0)
    a, b = space.build(arch).eval(), space.build(again).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(a(x), b(x))
    text = space.describe(arch)
    assert text.startswith("Genotype(encoder=[") and "links: dec1(s8) <- enc" in text and "dec2(s4)" in text
    params = space.searched(arch)
    with pytest.raises(ValueError, match="reads input 3"):  # there are three encoder outputs, 0..2
        space.arch({**params, "link1": (("skip_connect", 3),)})
    with pytest.raises(ValueError, match=r"2 \(op, input\) pairs"):
        space.arch({**params, "link2": (("skip_connect", 0), ("conv_3x3", 1))})
    with pytest.raises(ValueError, match="unknown op 'none'"):
        space.arch({**params, "link2": (("none", 0),)})
    shallow = SPACES.create("crowd", channels=8, depth=2)
    with pytest.raises(ValueError, match="depth"):
        space.build(_arch(shallow, 0))
    with pytest.raises(ValueError, match="output_stride"):
        SPACES.create("crowd", depth=2, output_stride=8)


def test_network_exports_to_torchscript_and_onnx(tmp_path):
    space = SPACES.create("crowd", channels=8, depth=2)
    arch = _arch(space, 4)
    paths = export_bundle(space.build(arch).eval(), arch, space, out=tmp_path, costs=measure(space, arch),
                          input_shape=(1, 3, 64, 64), num_classes=1, trained=False)
    verified = json.loads(paths["json"].read_text())["verified"]
    assert verified["torchscript_max_abs_diff"] <= 1e-4 and verified["onnx_max_abs_diff"] <= 1e-4


@pytest.mark.parametrize("strategy, options", [
    ("pc-darts", {"search_epochs": 2, "warmup_epochs": 1}),
    ("bnas", {"warmup_epochs": 1, "train_steps": 1}),
])
def test_search_derives_an_architecture_from_the_cli(tmp_path, strategy, options):
    args = ["search", "crowd", "--strategy", strategy, "--epochs", "1", "--out", str(tmp_path), "--export", "none",
            "--space-option", "channels=8", "--space-option", "depth=2"]
    for key, value in {"limit_train": 32, "limit_val": 16, "batch_size": 16, "base_resolution": 32}.items():
        args += ["--task-option", f"{key}={value}"]
    for key, value in {"batch_size": 16, "eval_limit": 16, **options}.items():
        args += ["--strategy-option", f"{key}={value}"]
    done = subprocess.run([sys.executable, "-m", "nasplat.cli", *args], capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    run = next(Path(tmp_path).iterdir())
    manifest = json.loads((run / "best" / "arch.json").read_text())
    arch = Arch.from_dict(manifest["arch"])
    space = SPACES.create("crowd", channels=8, depth=2)
    space.validate(arch)
    assert len(arch["encoder"]) == len(arch["decoder"]) == 6 and len(arch["link1"]) == 1
    assert manifest["target"]["input_shape"] == [1, 3, 512, 512]
    assert manifest["costs"]["macs"] == pytest.approx(measure(space, arch)["macs"])
    assert "mae" in manifest["metrics"] and manifest["metrics"]["accuracy"] > 0
    events = [json.loads(line) for line in (run / "journal.jsonl").read_text().splitlines()]
    if strategy == "bnas":  # the link's candidates were sampled and abandoned like any edge's ops
        abandoned = [h for e in events for h in e.get("abandoned", ())]
        assert {h["group"] for h in abandoned} == {"encoder", "decoder", "link1"}
    else:
        assert sorted(p.name for p in (run / "report" / "cells").iterdir()) == ["decoder.png", "encoder.png"]
        result = retrain(run, epochs=1)  # the derived network trains from scratch on the counting task
        assert {"mae", "mse"} <= set(result) and (run / "retrained" / "arch.json").exists()
