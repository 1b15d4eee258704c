"""A device's latency table as the search's latency source, and strategies that check a free constraint before
they propose (`--device table:COLUMN`, `--latency pNN`, `nasplat bench nb201 --device`)."""
from __future__ import annotations

import csv
import json
import logging
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
import pytest

from nasplat import api
from nasplat.bench import front, hypervolume
from nasplat.cli import main
from nasplat.constraints import Constraint
from nasplat.cost.device_table import DeviceTable
from nasplat.registry import TASKS, register_strategy
from nasplat.run import RunDir, SearchConfig, read_journal
from nasplat.search_spaces.nasbench201 import SHIPPED_LATENCY, NasBench201Space
from nasplat.strategy import Result, Strategy, Trial
from nasplat.tasks.base import CHARGE

COLUMN = "lat_raspi4"
MULTI_TRIAL = ("random", "evolution", "local", "bayesian")


def run_cli(argv):
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


def _results(run: RunDir):
    return [e for e in read_journal(run.journal_path) if e["event"] == "result"]


def _device() -> DeviceTable:
    return DeviceTable.open(SHIPPED_LATENCY, COLUMN)


@pytest.mark.parametrize("strategy", MULTI_TRIAL)
def test_no_strategy_spends_a_query_on_an_infeasible_cell_and_the_best_meets_the_limit(tmp_path, strategy):
    device, space = _device(), NasBench201Space()
    limit = device.percentile(25)
    config = SearchConfig(space="nasbench201", strategy=strategy, trials=None, budget=4000.0, out=str(tmp_path),
                          constraints=[Constraint("latency", limit)], device_table={"column": COLUMN, "path": None})
    outcome = api.start(config, report=False)
    results = _results(outcome.run)
    assert len(results) > 10
    for event in results:  # every trial was feasible, and its latency is the device's own figure
        assert event["status"] == "ok", event
        arch = space.arch(event["arch"]["params"])
        assert event["metrics"]["latency"] == device.predict(space, arch) <= limit
        assert "macs" not in event["metrics"]  # nothing asked for MACs: no model was built to count them
    best = json.loads((outcome.run.best / "arch.json").read_text())
    assert best["costs"]["latency"] <= limit
    assert best["latency"]["latency_source"] == {"kind": "table", "column": COLUMN, "path": str(SHIPPED_LATENCY)}


def test_without_the_check_random_search_would_have_drawn_infeasible_cells(tmp_path):
    """The check is what keeps the trials above feasible: the same seed's plain samples break the limit."""
    import random

    device, space = _device(), NasBench201Space()
    rng, limit = random.Random(0), device.percentile(25)
    drawn = [space.arch(space.sample(rng)) for _ in range(40)]
    assert sum(device.predict(space, a) > limit for a in drawn) > 20


class InOrder(Strategy):
    """Asks its `cells` in turn, with no check of its own: what reaches the runner is the runner's to judge.
    Registered by the test that uses it, not at import: test_ray_runner runs every strategy registered when
    the test files are collected."""

    def __init__(self, space: NasBench201Space, *, cells: Sequence[str] = (), **kwargs: Any):
        super().__init__(space, **kwargs)
        self.cells = list(cells)

    def ask(self) -> Trial:
        return self._trial(self.space.searched(self.space.parse(self.cells[self.next_id % len(self.cells)])))

    def tell(self, trial: Trial, result: Result) -> None:
        pass


def test_an_infeasible_query_is_never_charged(tmp_path):
    """A cell over the limit is rejected before the table is queried: no simulated time, no signal."""
    register_strategy("asks_in_order")(InOrder)
    space = NasBench201Space()
    slow = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|"
    fast = "|skip_connect~0|+|skip_connect~0|none~1|+|skip_connect~0|none~1|none~2|"
    device = _device()
    limit = (device.predict(space, space.parse(slow)) + device.predict(space, space.parse(fast))) / 2
    config = SearchConfig(space="nasbench201", strategy="asks_in_order", trials=2, out=str(tmp_path),
                          constraints=[Constraint("latency", limit)], device_table={"column": COLUMN, "path": None},
                          strategy_options={"cells": [slow, fast]})
    outcome = api.start(config, report=False)
    first, second = _results(outcome.run)[:2]
    assert first["status"] == "infeasible" and "accuracy" not in first["metrics"]
    assert first["held_out"].get(CHARGE, 0) == 0
    assert second["status"] == "ok" and second["held_out"][CHARGE] == TASKS.create("nasbench201").charge(fast,
                                                                                                         epochs=12)


def test_bayesian_tells_optuna_what_it_rejected_without_making_it_a_trial(tmp_path):
    device = _device()
    config = SearchConfig(space="nasbench201", strategy="bayesian", trials=15, out=str(tmp_path),
                          constraints=[Constraint("latency", device.percentile(25))],
                          device_table={"column": COLUMN, "path": None})
    outcome = api.start(config, report=False)
    assert all(e["status"] == "ok" for e in _results(outcome.run))
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
        str(outcome.run.path / "optuna.journal")))
    trials = optuna.load_study(study_name="nasplat", storage=storage).get_trials(deepcopy=False)
    rejected = [t for t in trials if t.user_attrs["result"]["status"] == "infeasible"]
    assert rejected and len(trials) == 15 + len(rejected)
    assert all(max(t.constraints.values()) > 0 for t in rejected)


@pytest.mark.parametrize("strategy,options,what", [
    ("random", {}, "random samples"),
    ("bayesian", {"sampler": "random", "storage": "memory"}, "proposals"),  # the last proposal is not told twice
])
def test_a_limit_almost_nothing_meets_is_said_and_the_trial_recorded_infeasible(tmp_path, caplog, strategy, options,
                                                                                what):
    """Redraws are bounded: when they run out the strategy says so, and the runner records the last draw."""
    space = NasBench201Space()
    smallest = space.to_text(space.smallest())
    table = _write_table(tmp_path / "one.csv", [(space.to_text(a), 1.0 if space.to_text(a) == smallest else 10.0)
                                                for a in space.enumerate()])  # 1 feasible cell of 15,625
    config = SearchConfig(space="nasbench201", strategy=strategy, trials=1, out=str(tmp_path / "runs"),
                          constraints=[Constraint("latency", 2.0)], strategy_options=options,
                          device_table={"column": "lat_dev", "path": str(table)})
    with caplog.at_level(logging.WARNING, logger="nasplat"):
        outcome = api.start(config, report=False)
    assert f"{strategy}: 1000 {what} in a row broke latency <= 2ms" in caplog.text
    infeasible = [e for e in _results(outcome.run) if e["status"] == "infeasible"]
    assert infeasible and all(e.get("held_out", {}).get(CHARGE, 0) == 0 for e in infeasible)


def test_percentile_limit_and_the_device_recorded_through_the_cli(tmp_path, capsys):
    assert run_cli(["search", "nasbench201", "--strategy", "local", "--budget", "3000s", "--device",
                    f"table:{COLUMN}", "--latency", "p50", "--out", str(tmp_path)]) == 0
    run = RunDir.open(next(tmp_path.iterdir()))
    limit = run.config().constraints[0].limit
    assert limit == pytest.approx(_device().percentile(50))
    assert all(e["metrics"]["latency"] <= limit for e in _results(run) if e["status"] == "ok")


def test_multi_objective_search_reads_latency_from_the_table(tmp_path):
    config = SearchConfig(space="nasbench201", strategy="random", trials=12, out=str(tmp_path),
                          objectives=["accuracy", "latency"], device_table={"column": COLUMN, "path": None})
    outcome = api.start(config)
    front_file = json.loads((outcome.run.report / "pareto" / "front.json").read_text())
    assert front_file and all("latency" in e["metrics"] for e in _results(outcome.run))


def _write_table(path: Path, rows, header=("arch", "lat_dev")) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.mark.parametrize("case,needles", [
    ("unknown column", ["no column 'lat_nowhere'", "lat_pixel3"]),
    ("missing architecture", ["has no row for the nasbench201 architecture", "50 rows for 15625"]),
    ("non-numeric", ["is not a number in the row of"]),
    ("percentile without table", ["percentile of a device's latency table", "--device table:COLUMN"]),
    ("table without device", ["--latency-table is read by --device table:COLUMN"]),
    ("bad percentile", ["pNN with 0 < NN < 100"]),
    ("table with a protocol", ["takes no --runtime"]),
])
def test_bad_table_input_is_one_line_and_exit_2(tmp_path, capsys, case, needles):
    space = NasBench201Space()
    cells = [space.to_text(a) for a in list(space.enumerate())[:50]]
    argv = {"unknown column": ["--device", "table:lat_nowhere", "--latency", "5ms"],
            "missing architecture": ["--device", "table:lat_dev", "--latency", "5ms", "--latency-table",
                                     str(_write_table(tmp_path / "few.csv", [(c, 1.0) for c in cells]))],
            "non-numeric": ["--device", "table:lat_dev", "--latency", "5ms", "--latency-table",
                            str(_write_table(tmp_path / "bad.csv", [(cells[0], "fast"), *((c, 1) for c in cells[1:])]))],
            "percentile without table": ["--latency", "p25"],
            "table without device": ["--latency", "5ms", "--latency-table", str(SHIPPED_LATENCY)],
            "bad percentile": ["--device", f"table:{COLUMN}", "--latency", "p100"],
            "table with a protocol": ["--device", f"table:{COLUMN}", "--latency", "5ms", "--runtime", "onnxruntime"],
            }[case]
    assert run_cli(["search", "nasbench201", "--trials", "2", "--out", str(tmp_path / "runs"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("nasplat: error:"), err
    for needle in needles:
        assert needle in err, err
    assert not (tmp_path / "runs").exists()


def test_hypervolume_of_a_staircase():
    points = [(80.0, 5.0), (70.0, 2.0), (60.0, 3.0), (85.0, 9.0)]  # (60, 3) is dominated by (70, 2)
    assert front(points) == [(70.0, 2.0), (80.0, 5.0), (85.0, 9.0)]
    # up to a signal floor of 50 and a latency ceiling of 10: 20x8 + 10x5 + 5x1
    assert hypervolume(points, reference=(50.0, 10.0)) == pytest.approx(160 + 50 + 5)
    assert hypervolume([(40.0, 1.0)], reference=(50.0, 10.0)) == 0.0


def test_bench_under_a_device_limit_and_on_its_front(tmp_path):
    results = tmp_path / "RESULTS.md"
    common = ["bench", "nb201", "--seeds", "2", "--budget", "2000s", "--device", f"table:{COLUMN}",
              "--results", str(results)]
    assert run_cli([*common, "--strategies", "random,local", "--latency", "p25", "--out", str(tmp_path / "a")]) == 0
    device, space = _device(), NasBench201Space()
    limit = device.percentile(25)
    for seed in range(2):
        record = json.loads((tmp_path / "a" / "local" / f"seed-{seed:03d}.json").read_text())
        assert device.predict(space, space.parse(record["returned"]["arch"])) <= limit
    text = results.read_text()
    assert f"## NAS-Bench-201 strategies on {COLUMN}, latency <= p25" in text
    assert "best-valid_acc_12ep feasible cell" in text and "nasplat bench nb201" in text
    assert run_cli([*common, "--strategies", "random", "--objective", "accuracy,latency",
                    "--out", str(tmp_path / "b")]) == 0
    text = results.read_text()
    section = text[text.index(f"on {COLUMN}: accuracy and latency"):]
    row = next(line for line in section.splitlines() if line.startswith("| random"))
    share = float(row.split("|")[6].split("±")[0])
    assert 0.5 < share <= 1.0


def test_fit_a_predictor_then_search_and_validate_with_it_through_the_cli(tmp_path, capsys):
    """A new device measured on 20 cells: `latency fit`, then a search whose latency source is the predictor
    (every figure is the predictor's, none over the limit, best/ names it), then `latency validate`."""
    import random

    space = NasBench201Space()
    gold = DeviceTable.open(SHIPPED_LATENCY, "lat_gold_6226")
    rng = random.Random(1)
    cells = [space.arch(space.sample(rng)) for _ in range(40)]

    def device(arch):  # a device 1.7x slower than the Xeon with a fixed overhead: not a column of the table
        return 1.7 * gold.predict(space, arch) + 0.8
    for name, chosen in (("fit.csv", cells[:20]), ("more.csv", cells[20:])):
        _write_table(tmp_path / name, [(space.to_text(a), device(a)) for a in chosen], header=("arch", "latency_ms"))
    predictor = tmp_path / "board.json"
    assert run_cli(["latency", "fit", "nasbench201", "--measured", str(tmp_path / "fit.csv"), "--out",
                    str(predictor)]) == 0
    assert run_cli(["latency", "validate", "nasbench201", "--predictor", str(predictor), "--measured",
                    str(tmp_path / "more.csv")]) == 0
    within = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("within"))
    assert int(within.split("(")[1].split(" of")[0]) >= 16  # at least 16 of the 20 held-out cells within 10%
    limit = statistics.median(device(a) for a in cells)
    assert run_cli(["search", "nasbench201", "--strategy", "evolution", "--budget", "3000s", "--predictor",
                    str(predictor), "--latency", f"{limit}ms", "--out", str(tmp_path / "runs")]) == 0
    run = RunDir.open(next((tmp_path / "runs").iterdir()))
    from nasplat.cost.predictor import LatencyPredictor

    loaded = LatencyPredictor.load(predictor)
    for event in _results(run):
        assert event["status"] == "ok"
        assert event["metrics"]["latency"] == pytest.approx(loaded.predict(space, space.arch(event["arch"]["params"])))
        assert event["metrics"]["latency"] <= limit
    best = json.loads((run.best / "arch.json").read_text())
    assert best["latency"]["latency_source"]["kind"] == "predictor"
    assert best["latency"]["latency_source"]["path"] == str(predictor)
