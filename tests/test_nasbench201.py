"""The NAS-Bench-201 space, its network and its table."""
from __future__ import annotations

import random

import pytest
import torch

from nasplat.cost import count_params
from nasplat.registry import SPACES, TASKS
from nasplat.search_spaces.nasbench201 import EDGES, OPS, NasBench201Space, edge_name
from nasplat.tasks.nasbench201 import SHIPPED_TABLE
from nasplat.tasks.tabular import TableTask, load_table

BEST_12EP = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_1x1~1|nor_conv_3x3~2|"
ALL_CONV3 = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|"
DISCONNECTED = "|nor_conv_3x3~0|+|none~0|skip_connect~1|+|none~0|none~1|none~2|"


@pytest.fixture(scope="module")
def space() -> NasBench201Space:
    return SPACES.create("nasbench201")


def test_every_cell_of_the_table_round_trips(space):
    table = load_table(SHIPPED_TABLE, key="arch")
    assert len(table) == 15625 == space.size()
    for cell in table.rows:
        arch = space.parse(cell)
        assert space.describe(arch) == cell
        assert set(arch) == {edge_name(i, j) for i, j in EDGES}


@pytest.mark.parametrize("text", ["", "|none~0|", "|none~1|+|none~0|none~1|+|none~0|none~1|none~2|",
                                  "none~0+|none~0|none~1|+|none~0|none~1|none~2|",
                                  "|conv~0|+|none~0|none~1|+|none~0|none~1|none~2|"])
def test_bad_cell_strings_are_refused(space, text):
    with pytest.raises(ValueError):
        space.parse(text)


def test_mutation_changes_exactly_one_edge(space):
    rng = random.Random(0)
    for _ in range(200):
        params = space.sample(rng)
        mutant = space.mutate(params, rng)
        assert sum(params[k] != mutant[k] for k in params) == 1


def test_neighbours_are_the_24_single_edge_changes(space):
    params = space.searched(space.parse(BEST_12EP))
    found = space.neighbours(params)
    assert len(found) == 24 == len({space.describe(space.arch(p)) for p in found})
    assert all(sum(params[k] != n[k] for k in params) == 1 for n in found)


def test_disconnected_cells_are_valid_but_marked(space):
    arch = space.parse(DISCONNECTED)
    space.validate(arch)
    assert not space.connected(arch) and space.connected(space.parse(BEST_12EP))
    assert sorted(space.graph(arch).edges(data="op")) == [(0, 1, "nor_conv_3x3"), (1, 2, "skip_connect")]
    out = space.build(arch).eval()(torch.randn(2, 3, 32, 32))
    assert torch.allclose(out[0], out[1])  # the output does not depend on the input


def test_the_network_runs_and_has_the_benchmark_size(space):
    model = space.build(space.parse(ALL_CONV3))
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert count_params(model) == 1_531_546  # the benchmark's largest cell: 1.53 MB of parameters
    assert 0.05e6 < count_params(space.build(space.smallest())) < 0.1e6
    rng = random.Random(1)
    sizes = [count_params(space.build(space.arch(space.sample(rng)))) for _ in range(5)]
    assert all(0.05e6 < n < 1.6e6 for n in sizes)
    assert space.target(space.smallest()).input_shape == (1, 3, 32, 32)


def test_table_answers_signal_report_and_charge(space):
    task = TASKS.create("nasbench201")
    answer = task.query(BEST_12EP)
    assert answer.signal == 84.892
    assert answer.reported == {"valid_acc_200ep": 91.496, "test_acc_200ep": 91.16}
    assert task.charge(BEST_12EP, epochs=12) == pytest.approx(12 * 14.0301 + 4.3949)
    assert task.default_epochs == 12 and set(OPS) == {"none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3",
                                                      "avg_pool_3x3"}
    with pytest.raises(KeyError, match="not in table"):
        task.query("|none~0|")


def test_table_options_are_checked(tmp_path):
    with pytest.raises(ValueError, match="signal 'nope' is not a column"):
        TASKS.create("nasbench201", signal="nope")
    with pytest.raises(ValueError, match="report column 'arch' is not a column"):
        TASKS.create("nasbench201", report="valid_acc_200ep,arch")
    with pytest.raises(ValueError, match="give one or two"):
        TASKS.create("nasbench201", time_columns="eval_seconds,eval_seconds,eval_seconds")
    with pytest.raises(ValueError, match="cannot be read"):
        TASKS.create("nasbench201", table=tmp_path / "missing.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("arch,valid_acc_12ep,t\n|x|,1,2\n|x|,3,4\n")
    with pytest.raises(ValueError, match="appears twice"):
        TableTask(table=bad, key="arch", signal="valid_acc_12ep", time_columns="t")
    bad.write_text("arch,valid_acc_12ep,t\n|x|,1,-2\n")
    with pytest.raises(ValueError, match="not a duration"):
        TableTask(table=bad, key="arch", signal="valid_acc_12ep", time_columns="t")
    bad.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ValueError, match="key column|not a readable CSV"):
        TableTask(table=bad, key="arch", signal="valid_acc_12ep", time_columns="t")
