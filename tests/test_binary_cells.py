"""The binarized DARTS cell space: binarization, genotypes, networks, supernet, derivation, costs."""
from __future__ import annotations

import random
from collections import Counter

import pytest
import torch
from torch import nn

from nasplat.arch import Arch
from nasplat.binary import BinaryConv2d, sign_activation, xnor_weight
from nasplat.cost import count_costs, measure
from nasplat.registry import SPACES
from nasplat.search_spaces.binary_cells import (
    OPS, SKIP, CellParam, cell_graph, check_genotype, derive_genotype, validate_cell,
)

TINY = {"channels": 4, "layers": 3}


@pytest.fixture(scope="module")
def space():
    return SPACES.create("binary-cells", **TINY, binarize="both")


def test_xnor_weight_value_and_bnas_gradient():
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    g = torch.randn_like(w)
    binary = xnor_weight(w)
    alpha = w.detach().abs().mean()
    assert torch.allclose(binary, alpha * torch.where(w >= 0, 1.0, -1.0))
    binary.backward(g)
    assert torch.allclose(w.grad, g * (1 / w.numel() + alpha * (w.detach().abs() <= 1)))


def test_sign_activation_is_binary_with_bireal_gradient():
    x = torch.tensor([-2.0, -0.5, 0.0, 0.5, 2.0], requires_grad=True)
    y = sign_activation(x)
    assert y.tolist() == [-1, -1, 1, 1, 1]
    y.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 2.0, 1.0, 0.0]  # 2 - 2|x| inside [-1, 1]


def test_bops_count_binarized_macs_and_flops_divide_them_by_64():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), BinaryConv2d(8, 16, 3, padding=1, mode="weights"))
    costs = count_costs(model, (1, 3, 8, 8))
    assert costs["fp_macs"] == 3 * 8 * 9 * 64
    assert costs["bops"] == 8 * 16 * 9 * 64
    assert costs["macs"] == costs["fp_macs"] + costs["bops"] / 64
    assert costs["size_bits"] == 32 * (3 * 8 * 9 + 8) + 8 * 16 * 9 + 32  # 1 bit per binary weight + its scale
    assert "bops" not in count_costs(nn.Conv2d(3, 8, 3), (1, 3, 8, 8))


@pytest.mark.parametrize("literal, message", [
    ((("sep_conv_3x3", 0),) * 7, r"7 \(op, input\) pairs"),
    ((("conv_7x7", 0), ("skip_connect", 1)) + (("max_pool_3x3", 0), ("max_pool_3x3", 1)) * 3, "unknown op"),
    ((("none", 0), ("skip_connect", 1)) + (("max_pool_3x3", 0), ("max_pool_3x3", 1)) * 3, "unknown op 'none'"),
    ((("skip_connect", 0), ("skip_connect", 2)) + (("max_pool_3x3", 0), ("max_pool_3x3", 1)) * 3, "reads input 2"),
    ((("skip_connect", 1), ("skip_connect", 1)) + (("max_pool_3x3", 0), ("max_pool_3x3", 1)) * 3, "twice"),
])
def test_malformed_genotypes_are_rejected(literal, message):
    with pytest.raises(ValueError, match=message):
        check_genotype(literal)


def test_cell_param_samples_and_mutations_are_valid_and_mutations_change_one_thing():
    param, rng = CellParam(), random.Random(0)
    for _ in range(50):
        genotype = param.sample(rng)
        assert param.contains(genotype)
        child = param.mutate(genotype, rng)
        assert param.contains(child) and child != genotype
        assert sum((Counter(child) - Counter(genotype)).values()) == 1
    assert all(param.contains(n) for n in param.neighbours(genotype))


def test_arch_round_trips_and_rebuilds_the_same_network(space):
    arch = space.complete(space.sample(random.Random(1)))
    again = Arch.from_json(arch.to_json())
    assert again == arch and space.describe(again).startswith("Genotype(normal=[")
    torch.manual_seed(0)
    a = space.build(arch).eval()
    b = space.build(again).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(a(x), b(x))


def test_cells_are_dags_and_reduction_cells_halve_the_resolution(space):
    arch = space.complete(space.sample(random.Random(2)))
    graph = cell_graph(arch["normal"])
    validate_cell(graph)
    assert graph.number_of_edges() == 8 + 4
    net = space.build(arch)
    sides = []
    net.cells[0].register_forward_hook(lambda m, i, o: sides.append(o.shape[-1]))
    net.cells[1].register_forward_hook(lambda m, i, o: sides.append(o.shape[-1]))
    net.cells[2].register_forward_hook(lambda m, i, o: sides.append(o.shape[-1]))
    net(torch.randn(1, 3, 32, 32))
    assert sides == [32, 16, 8]  # layers 1 and 2 of 3 reduce


def test_no_relu_feeds_a_sign_in_mode_both():
    arch_space = SPACES.create("binary-cells", **TINY, binarize="both")
    net = arch_space.build(arch_space.complete(arch_space.sample(random.Random(3))))
    assert not any(isinstance(m, nn.ReLU) for m in net.modules())
    weights_only = SPACES.create("binary-cells", **TINY, binarize="weights")
    net = weights_only.build(weights_only.complete(weights_only.sample(random.Random(3))))
    assert any(isinstance(m, nn.ReLU) for m in net.modules())
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert not isinstance(convs[0], BinaryConv2d) or not convs[0].binary  # the stem stays full precision


def test_mixed_forward_with_one_hot_weights_equals_the_path(space):
    torch.manual_seed(0)
    net = space.supernet(partial_channels=2, edge_normalization=False).eval()
    rng = random.Random(4)
    path = {t: tuple(rng.randrange(1, len(OPS)) for _ in range(14)) for t in ("normal", "reduce")}
    with torch.no_grad():
        for t, ops in path.items():
            net.alphas[t].fill_(-1e4)
            net.alphas[t][torch.arange(14), torch.tensor(ops)] = 0.0
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(net(x), net(x, path=path), atol=1e-5)


def test_masked_ops_are_never_run_and_weigh_nothing(space):
    net = space.supernet(partial_channels=1)
    mask = torch.ones(14, len(OPS), dtype=torch.bool)
    mask[:, OPS.index("sep_conv_5x5")] = False
    net.set_mask("normal", mask)
    calls = []
    for cell in net.cells:
        if not cell.reduction:
            for edge in cell.edges:
                edge.ops[OPS.index("sep_conv_5x5")].register_forward_hook(lambda *a: calls.append(1))
    net(torch.randn(2, 3, 32, 32)).sum().backward()
    assert not calls
    assert torch.all(net.op_weights()["normal"][:, OPS.index("sep_conv_5x5")] == 0)
    assert net.alphas["normal"].grad is not None and net.betas["normal"].grad is not None


def _weights(best: dict[int, tuple[int, float]]) -> torch.Tensor:
    w = torch.full((14, len(OPS)), 0.01)
    for edge, (op, value) in best.items():
        w[edge, op] = value
    return w


def test_derivation_keeps_the_two_strongest_edges_and_caps_skips():
    sep3, dil5 = OPS.index("sep_conv_3x3"), OPS.index("dil_conv_5x5")
    # node 0: edges 0, 1; node 1: edges 2, 3, 4; node 2: 5..8; node 3: 9..13
    strong = {0: (SKIP, 0.9), 1: (SKIP, 0.8), 3: (SKIP, 0.7), 4: (sep3, 0.6), 6: (SKIP, 0.5), 8: (dil5, 0.4),
              12: (SKIP, 0.95), 13: (sep3, 0.3)}
    w = _weights(strong)
    w[3, dil5] = 0.2  # the weak skip on edge 3 has a second choice
    uncapped, info = derive_genotype({"normal": w, "reduce": w}, max_skip=None)
    assert uncapped["normal"] == (("skip_connect", 0), ("skip_connect", 1), ("skip_connect", 1), ("sep_conv_3x3", 2),
                                  ("skip_connect", 1), ("dil_conv_5x5", 3), ("skip_connect", 3),
                                  ("sep_conv_3x3", 4)) and not info
    capped, info = derive_genotype({"normal": w, "reduce": w}, max_skip=2)
    assert sum(op == "skip_connect" for op, _ in capped["normal"]) == 2 and info["skips_replaced"] == 3
    assert capped["reduce"] == uncapped["reduce"]  # the cap is on the normal cell
    assert ("dil_conv_5x5", 1) in capped["normal"]  # edge 3's skip became its next op


def test_cost_split_adds_up_to_the_measured_network(space):
    costs = space.op_costs()
    rng = random.Random(5)
    for _ in range(4):
        arch = space.complete(space.sample(rng))
        assert costs.of(arch) == pytest.approx(measure(space, arch)["macs"], rel=1e-9)


def test_budget_repair_cheapens_ops_until_the_genotype_fits(space):
    heavy = OPS.index("sep_conv_5x5")
    w = torch.full((14, len(OPS)), 0.01)
    w[:, heavy] = 1.0
    genotypes, _ = space.derive({"normal": w, "reduce": w})
    full = space.op_costs().of(genotypes)
    limit = (full + measure(space, space.smallest())["macs"]) / 2
    fitted, info = space.derive({"normal": w, "reduce": w}, limit=limit)
    assert space.op_costs().of(fitted) <= limit < full and info["ops_cheapened_for_budget"] > 0
