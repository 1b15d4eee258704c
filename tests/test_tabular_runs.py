"""Searches answered from a table through the runner: what strategies are told, simulated time, the budget."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from nasplat import api
from nasplat.registry import TASKS, register_strategy
from nasplat.run import RunDir, read_journal
from nasplat.runner import local
from nasplat.runner.budget import SimulatedClock
from nasplat.cli import main
from nasplat.search_spaces.nasbench201 import NasBench201Space
from nasplat.strategy import Result, Strategy, Trial

CELLS = [
    "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_1x1~1|nor_conv_3x3~2|",
    "|avg_pool_3x3~0|+|skip_connect~0|none~1|+|none~0|none~1|skip_connect~2|",
    "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|",
    "|avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|nor_conv_1x1~0|skip_connect~1|skip_connect~2|",
]
TOLD: list[tuple[Trial, Result]] = []  # what the scripted strategy was told, across a search


@register_strategy("scripted_cells")
class Scripted(Strategy):
    """Asks the cell strings of `script` in turn, then its last one forever; records what it is told."""

    def __init__(self, space: NasBench201Space, *, script: Sequence[str] = (), **kwargs: Any):
        super().__init__(space, **kwargs)
        self.script = list(script)

    def ask(self) -> Trial:
        cell = self.script[min(self.next_id, len(self.script) - 1)]
        return self._trial(self.space.searched(self.space.parse(cell)))

    def tell(self, trial: Trial, result: Result) -> None:
        TOLD.append((trial, result))


def _search(tmp_path: Path, script: Sequence[str], **options: Any) -> api.SearchOutcome:
    TOLD.clear()
    return api.search("nasbench201", strategy="scripted_cells", out=tmp_path, strategy_options={"script": script},
                      **options)


def _results(run: RunDir) -> list[dict[str, Any]]:
    return [e for e in read_journal(run.journal_path) if e["event"] == "result"]


def _charge(cell: str) -> float:
    return TASKS.create("nasbench201").charge(cell, epochs=12)


def test_strategies_are_told_the_signal_only_and_the_journal_keeps_the_rest(tmp_path):
    outcome = _search(tmp_path, CELLS, trials=4)
    task = TASKS.create("nasbench201")
    assert [t.arch for t, _ in TOLD] == [NasBench201Space().parse(c) for c in CELLS]
    for (_, told), cell in zip(TOLD, CELLS):
        assert dict(told.metrics) == {"accuracy": task.query(cell).signal}
        assert not told.held_out
    for result, cell in zip(_results(outcome.run), CELLS):
        assert result["metrics"] == {"accuracy": task.query(cell).signal}
        assert result["held_out"] == {**task.query(cell).reported, "charged_seconds": _charge(cell)}
    assert not list(outcome.run.best.glob("*.safetensors"))  # a tabular best is arch.json alone
    assert (outcome.run.best / "arch.json").exists()


def test_the_budget_charges_each_new_query_and_refuses_the_crossing_one(tmp_path):
    charges = [_charge(c) for c in CELLS]
    budget = sum(charges[:3]) + charges[3] / 2  # room for three queries, not for the fourth
    outcome = _search(tmp_path, [CELLS[0], CELLS[1], CELLS[0], CELLS[2], CELLS[1], CELLS[3]], budget=budget)
    results = _results(outcome.run)
    assert outcome.reason == "budget"
    assert [r["held_out"]["charged_seconds"] for r in results] == [charges[0], charges[1], 0.0, charges[2], 0.0]
    end = read_journal(outcome.run.journal_path)[-1]
    assert end["simulated_seconds"] == pytest.approx(sum(charges[:3]))
    assert end["refused"] == {"trial": 5, "charge": charges[3]}
    assert 5 not in {r["trial"] for r in results} and len(TOLD) == 5  # the crossing query was never made
    with pytest.raises(ValueError, match="has finished"):
        api.resume(outcome.run.path)


def test_a_strategy_that_only_repeats_itself_is_stopped(tmp_path, monkeypatch):
    monkeypatch.setattr(local, "MAX_FREE_IN_A_ROW", 20)
    outcome = _search(tmp_path, CELLS[:1], budget="12000s")
    results = _results(outcome.run)
    assert outcome.reason == "repeats" and len(results) == 21
    assert [r["held_out"]["charged_seconds"] for r in results[1:]] == [0.0] * 20


def test_the_clock_is_rebuilt_from_the_journal(tmp_path):
    outcome = _search(tmp_path, [CELLS[0], CELLS[1], CELLS[1]], trials=3)
    space, task = NasBench201Space(), TASKS.create("nasbench201")
    clock = SimulatedClock(task, space, epochs=12, budget=None, finished=outcome.run.results().values())
    assert clock.spent == pytest.approx(_charge(CELLS[0]) + _charge(CELLS[1]))
    assert clock.charge(space.parse(CELLS[1])) == 0.0 and clock.charge(space.parse(CELLS[2])) == _charge(CELLS[2])
    assert clock.affords(1e9)


def test_a_budget_needs_a_tabular_task(tmp_path):
    with pytest.raises(ValueError, match="needs a task answered from a table"):
        api.search("toy", strategy="random", budget="100s", out=tmp_path)
    assert not list(tmp_path.iterdir())  # refused before anything was written


@pytest.mark.parametrize("strategy", ["random", "evolution", "local", "bayesian"])
def test_every_strategy_searches_the_table_within_the_budget(tmp_path, strategy):
    outcome = api.search("nasbench201", strategy=strategy, budget="3000s", out=tmp_path, seed=1)
    results = _results(outcome.run)
    spent = sum(r["held_out"]["charged_seconds"] for r in results)
    assert outcome.reason == "budget" and 10 <= len(results) and spent <= 3000
    assert all(r["status"] == "ok" for r in results)


def test_report_of_a_tabular_run(tmp_path):
    outcome = _search(tmp_path, CELLS, trials=4)
    summary = (outcome.run.report / "summary.md").read_text()
    assert CELLS[0] in summary and "valid_acc_200ep" not in summary  # the summary ranks by what was searched
    assert isinstance(outcome.best, tuple) and outcome.best[0].id == 0
    # what the summary says to run next works on a run that trained nothing
    (suggested,) = [line.split("#")[0].split() for line in summary.splitlines() if "nasplat export" in line]
    assert "retrain" not in summary and "--target" in suggested
    out = tmp_path / "model"
    assert main([*suggested[1:-1], str(out)]) == 0 and (out / "model.onnx").exists()


def test_constraints_are_measured_before_the_lookup(tmp_path):
    outcome = api.search("nasbench201", strategy="scripted_cells", out=tmp_path, params="0.5M", trials=2,
                         strategy_options={"script": CELLS})
    first, second = _results(outcome.run)[:2]
    assert first["status"] == "infeasible" and first["held_out"] == {"charged_seconds": 0.0}
    assert second["status"] == "ok" and second["metrics"]["params"] < 0.5e6
