"""ABanditNAS's cell space: one-input cells, Gabor and denoising ops, cell types over the layers, supernet, export."""
from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from nasplat.arch import Arch
from nasplat.binary import BinaryConv2d
from nasplat.cost import count_costs, measure
from nasplat.export import export_bundle
from nasplat.oneshot.cells import cell_graph, validate_cell
from nasplat.oneshot.mixed_edges import SourceState
from nasplat.registry import SPACES
from nasplat.search_spaces.abandit_cells import (
    OPS, DenoisingBlock, DotProductFilter, GaborFilter, cell_plan, make_op,
)
from nasplat.tasks.image_task import reinitialise

TINY = {"channels": 4, "layers": 3}


@pytest.fixture(scope="module")
def space():
    return SPACES.create("abandit-cells", **TINY)


def _arch(space, seed: int) -> Arch:
    return space.complete(space.sample(random.Random(seed)))


def test_cells_have_one_input_ten_edges_and_nine_ops_without_none(space):
    assert len(OPS) == 9 and "none" not in OPS and {"gabor_3x3", "denoise_3x3"} <= set(OPS)
    lay = space.layout
    assert (lay.inputs, lay.nodes, lay.keep, lay.edges) == (1, 4, 1, 10)
    net = space.supernet(partial_channels=1)
    assert all(len(cell.edges) == 10 and len(cell.edges[0].ops) == 9 for cell in net.cells)
    assert {t: tuple(a.shape) for t, a in net.alphas.items()} == {t: (10, 9) for t in ("normal", "reduce1", "reduce2")}
    arch = _arch(space, 0)
    graph = cell_graph(lay, arch["normal"])
    validate_cell(graph)
    assert graph.in_degree("c_{k-1}") == 0 and all(graph.in_degree(str(j)) == 1 for j in range(4))
    assert graph.number_of_edges() == 4 + 4  # one kept edge per node, four into the concatenation


def test_cell_types_are_laid_over_the_layers():
    assert cell_plan(10, 6) == [("normal1", False), ("normal1", False), ("normal2", False), ("reduce1", True),
                                ("normal2", False), ("normal3", False), ("reduce2", True), ("normal3", False),
                                ("normal4", False), ("normal4", False)]  # the paper's n_repeat = (10-2)//(6-2) = 2
    assert [t for t, _ in cell_plan(5, 2)] == ["normal", "reduce", "normal", "reduce", "normal"]
    assert SPACES.create("abandit-cells").layout.groups == ("normal", "reduce1", "reduce2")
    with pytest.raises(ValueError, match="cell_types"):
        SPACES.create("abandit-cells", layers=4, cell_types=5)


def test_gabor_kernel_follows_the_formula_and_counts_its_macs():
    torch.manual_seed(0)
    gabor = GaborFilter(5)
    assert torch.all(gabor.gamma == 0) and torch.all((gabor.lam >= 0) & (gabor.lam <= 1))
    assert gabor.psi.abs().max() < 0.2  # 0.02 N(0, 1)
    kernel = gabor.kernel()
    assert kernel.shape == (5, 1, 3, 3)
    with torch.no_grad():
        gabor.theta[1], gabor.sigma[1], gabor.lam[1], gabor.psi[1], gabor.gamma[1] = 0.3, -0.2, 0.4, 0.1, 0.5
    c = 1
    theta = 2 * math.pi / (1 + math.exp(-0.3))
    sx = 0.1 + 0.4 / (1 + math.exp(0.2))
    sy = sx / 1.25
    lam = 0.001 + 0.999 / (1 + math.exp(-0.4))
    x, y = 1.0, -1.0  # column 2, row 0
    rx, ry = x * math.cos(theta) + y * math.sin(theta), -x * math.sin(theta) + y * math.cos(theta)
    expected = math.exp(-0.5 * (rx ** 2 / sx ** 2 + ry ** 2 / sy ** 2)) * math.cos(2 * math.pi * rx / lam + 0.1)
    assert gabor.kernel()[c, 0, 0, 2].item() == pytest.approx(expected, rel=1e-5)
    inputs = torch.randn(2, 3, 6, 6)  # the same kernel over every input channel
    full = nn.functional.conv2d(inputs, gabor.kernel().expand(5, 3, 3, 3), padding=1)
    assert torch.allclose(gabor(inputs), full, atol=1e-5)
    assert count_costs(make_op("gabor_3x3", 8, 1), (1, 8, 6, 6))["macs"] == 8 * 9 * 36
    assert count_costs(make_op("denoise_3x3", 8, 1), (1, 8, 6, 6))["macs"] == 2 * 8 * 8 * 36  # (X X^T) X


def test_dot_product_filter_is_the_non_local_mean_either_way_round():
    for shape in ((2, 3, 4, 4), (2, 20, 2, 2)):  # C < HW and C >= HW take the two products
        x = torch.randn(shape)
        n, c, h, w = shape
        flat = x.reshape(n, c, h * w)
        naive = torch.einsum("nci,ncj,ndj->ndi", flat, flat, flat) / (c * h * w)
        assert torch.allclose(DotProductFilter()(x), naive.reshape(shape), atol=1e-5)


@pytest.mark.parametrize("op", ["gabor_3x3", "denoise_3x3"])
def test_denoising_blocks_start_and_restart_as_the_identity(op):
    block = make_op(op, 6, 1)
    x = torch.randn(2, 6, 8, 8)
    for mode in (True, False):
        assert torch.equal(block.train(mode)(x), x)
    for p in block.parameters():
        nn.init.normal_(p)
    reinitialise(block)  # the task's re-initialisation before training must keep the identity
    assert torch.equal(block(x), x)
    assert torch.allclose(make_op(op, 6, 2)(x), nn.functional.avg_pool2d(x, 2))
    assert isinstance(block[1], DenoisingBlock)


@pytest.mark.parametrize("stride", [1, 2])
def test_supernet_edges_compute_the_standalone_ops(space, stride):
    """A path through an edge is its op: the supernet's cores and shared preps equal `make_op` with the same
    weights (affine batch norm at its initial 1, 0 is the supernet's non-affine one)."""
    torch.manual_seed(0)
    net = space.supernet(partial_channels=1)
    cell = next(c for c in net.cells if c.reduction == (stride == 2))
    edge = cell.edges[0]
    x = torch.randn(2, edge.part, 8, 8)
    for k, op in enumerate(OPS):
        standalone = make_op(op, edge.part, stride)
        standalone[1].load_state_dict(edge.ops[k].state_dict(), strict=False)
        source = SourceState(x, part=edge.part, stride=stride, mode="none")
        assert torch.allclose(edge(source, None, [k]), standalone(x), atol=1e-5), op


def test_mixed_forward_with_one_hot_weights_equals_the_path(space):
    torch.manual_seed(0)
    net = space.supernet(partial_channels=2, edge_normalization=False).eval()
    rng = random.Random(4)
    path = {t: tuple(rng.randrange(len(OPS)) for _ in range(10)) for t in net.alphas}
    with torch.no_grad():
        for t, ops in path.items():
            net.alphas[t].fill_(-1e4)
            net.alphas[t][torch.arange(10), torch.tensor(ops)] = 0.0
        x = torch.randn(2, 3, 16, 16)
        assert torch.allclose(net(x), net(x, path=path), atol=1e-5)
    with pytest.raises(ValueError, match="lacks cell type"):
        net(x, path={"normal": path["normal"]})
    assert not any(isinstance(m, BinaryConv2d) and m.binary for m in net.modules())  # full precision


def test_arch_round_trips_and_rebuilds_the_same_network(space):
    arch = _arch(space, 1)
    again = Arch.from_json(arch.to_json())
    assert again == arch and space.describe(again).startswith("Genotype(normal=[")
    assert space.searched(again) == {t: arch[t] for t in ("normal", "reduce1", "reduce2")}
    torch.manual_seed(0)
    a, b = space.build(arch).eval(), space.build(again).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(a(x), b(x))
    sides = []
    for cell in a.cells:
        cell.register_forward_hook(lambda m, i, o: sides.append(o.shape[-1]))
    a(x)
    assert sides == [32, 16, 8]


@pytest.mark.parametrize("literal, message", [
    ((("conv_3x3", 0),) * 3, r"3 \(op, input\) pairs"),
    ((("none", 0),) + (("conv_3x3", 0),) * 3, "unknown op 'none'"),
    ((("dil_conv_3x3", 0),) + (("conv_3x3", 0),) * 3, "unknown op"),
    ((("conv_3x3", 1),) + (("conv_3x3", 0),) * 3, "reads input 1"),
    ((("conv_3x3", 0), ("conv_3x3", 2), ("conv_3x3", 0), ("conv_3x3", 0)), "reads input 2"),
])
def test_malformed_genotypes_are_rejected(space, literal, message):
    with pytest.raises(ValueError, match=message):
        space.arch({"normal": literal, "reduce1": (("conv_3x3", 0),) * 4, "reduce2": (("conv_3x3", 0),) * 4})


def test_graph_validation_rejects_cycles_and_stranded_nodes(space):
    looped = cell_graph(space.layout, (("conv_3x3", 2), ("conv_3x3", 1), ("conv_3x3", 0), ("conv_3x3", 0)))
    with pytest.raises(ValueError, match="cycle"):  # node 0 reads node 1, which reads node 0
        validate_cell(looped)
    stranded = cell_graph(space.layout, (("conv_3x3", 0),) * 4)
    stranded.remove_edge("3", "c_{k}")
    with pytest.raises(ValueError, match="do not reach the output"):
        validate_cell(stranded)


def test_derivation_keeps_one_edge_per_node_and_caps_skips_in_normal_cells(space):
    skip, conv = OPS.index("skip_connect"), OPS.index("conv_3x3")
    w = torch.full((10, len(OPS)), 0.01)
    w[[0, 1, 3, 6], skip] = torch.tensor([0.9, 0.8, 0.7, 0.6])  # node j's strongest edge: a skip each
    w[[2, 4, 8], conv] = 0.3
    weights = {t: w for t in ("normal", "reduce1", "reduce2")}
    genotypes, info = space.derive(weights, max_skip=None)
    assert genotypes["normal"] == (("skip_connect", 0), ("skip_connect", 0), ("skip_connect", 0),
                                   ("skip_connect", 0)) and not info
    capped, info = space.derive(weights, max_skip=2)
    assert sum(op == "skip_connect" for op, _ in capped["normal"]) == 2 and info["skips_replaced"] == 2
    assert capped["reduce1"] == genotypes["reduce1"]  # reduction cells are not capped
    assert all(len(g) == 4 for g in capped.values())


def test_cost_split_adds_up_and_the_supernet_expects_a_cost_within_the_space(space):
    costs = space.op_costs()
    rng = random.Random(5)
    for _ in range(3):
        arch = space.complete(space.sample(rng))
        assert costs.of(arch) == pytest.approx(measure(space, arch)["macs"], rel=1e-9)
    expected = float(space.supernet().expected_cost())
    assert measure(space, space.smallest())["macs"] < expected < costs.of(space.complete(
        {t: (("conv_5x5", 0),) * 4 for t in space.layout.groups}))


def test_derived_network_exports_to_torchscript_and_onnx(space, tmp_path):
    arch = _arch(space, 6)
    model = space.build(arch).eval()
    paths = export_bundle(model, arch, space, out=tmp_path, costs=measure(space, arch), input_shape=(1, 3, 32, 32),
                          num_classes=10, trained=False)
    verified = json.loads(paths["json"].read_text())["verified"]
    assert verified["torchscript_max_abs_diff"] <= 1e-4 and verified["onnx_max_abs_diff"] <= 1e-4


@pytest.mark.slow
def test_pc_darts_searches_the_space_end_to_end_from_the_cli(tmp_path):
    args = ["search", "abandit-cells", "--strategy", "pc-darts", "--epochs", "1", "--out", str(tmp_path),
            "--space-option", "channels=4", "--space-option", "layers=3", "--task-option", "limit_train=128",
            "--task-option", "limit_val=64", "--task-option", "batch_size=32"]
    for key, value in {"search_epochs": 2, "warmup_epochs": 1, "batch_size": 32, "eval_limit": 64}.items():
        args += ["--strategy-option", f"{key}={value}"]
    done = subprocess.run([sys.executable, "-m", "nasplat.cli", *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    run = next(Path(tmp_path).iterdir())
    manifest = json.loads((run / "best" / "arch.json").read_text())
    assert manifest["verified"]["onnx_max_abs_diff"] <= 1e-4
    assert sorted(p.name for p in (run / "report" / "cells").iterdir()) == ["normal.png", "reduce1.png", "reduce2.png"]
    arch = Arch.from_dict(manifest["arch"])
    assert all(len(arch[t]) == 4 for t in ("normal", "reduce1", "reduce2"))
