"""A trial that raises is recorded as failed with its traceback and the search goes on; trials that keep
raising the same exception stop it (exit 1), and a resume once the cause is fixed finishes it."""
import json

import pytest
from toy import ToyTask

from nasplat.cli import main
from nasplat.registry import register_task


@register_task("toy-broken")
class BrokenTask(ToyTask):
    """The toy task with a bug: trials whose number is in `FAILING` raise (all of them while it is None)."""

    FAILING: set[int] | None = None
    calls = 0

    def train_eval(self, model, *, input_size, epochs, seed, on_epoch=None):
        BrokenTask.calls += 1
        if BrokenTask.FAILING is None or BrokenTask.calls in BrokenTask.FAILING:
            raise RuntimeError("the task has a bug")
        return super().train_eval(model, input_size=input_size, epochs=epochs, seed=seed, on_epoch=on_epoch)


@pytest.fixture(autouse=True)
def fresh_task(monkeypatch):
    monkeypatch.setattr(BrokenTask, "FAILING", None)
    monkeypatch.setattr(BrokenTask, "calls", 0)


def search(tmp_path, *extra):
    return main(["search", "toy", "--task", "toy-broken", "--strategy", "random", "--trials", "6",
                 "--out", str(tmp_path), *extra])


def results(run):
    events = [json.loads(line) for line in (run / "journal.jsonl").read_text().splitlines()]
    return [e for e in events if e["event"] == "result"], [e for e in events if e["event"] == "end"]


def test_the_same_exception_three_times_in_a_row_stops_the_search(tmp_path, capsys):
    assert search(tmp_path) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    run = next(tmp_path.iterdir())
    traceback = run / "logs" / "traceback-trial-2.txt"
    assert err.startswith("nasplat: search stopped: 3 trials in a row (0, 1, 2) failed with RuntimeError: the task "
                          "has a bug") and str(traceback) in err and f"--resume {run}" in err, err
    assert "in train_eval" in traceback.read_text()
    told, ends = results(run)
    assert [r["status"] for r in told] == ["failed"] * 3
    assert all("Traceback (most recent call last)" in r["traceback"] and "the task has a bug" in r["traceback"]
               for r in told)
    assert ends[-1]["reason"] == "failures" and ends[-1]["failures"]["trials"] == [0, 1, 2]

    BrokenTask.FAILING = set()  # the bug fixed: a resume finishes the search
    assert main(["search", "--resume", str(run)]) == 0
    told, ends = results(run)
    assert [r["status"] for r in told] == ["failed"] * 3 + ["ok"] * 3 and ends[-1]["reason"] == "done"


def test_a_trial_that_fails_once_does_not_stop_the_search(tmp_path):
    BrokenTask.FAILING = {2}
    assert search(tmp_path) == 0
    told, ends = results(next(tmp_path.iterdir()))
    assert [r["status"] for r in told] == ["ok", "failed", "ok", "ok", "ok", "ok"]
    assert "RuntimeError: the task has a bug" in told[1]["traceback"] and ends[-1]["reason"] == "done"


def test_the_limit_is_an_option(tmp_path):
    BrokenTask.FAILING = {1, 2, 3}
    assert search(tmp_path / "four", "--max-repeated-failures", "4") == 0  # three in a row stay under four
    BrokenTask.FAILING, BrokenTask.calls = None, 0
    assert search(tmp_path / "never", "--max-repeated-failures", "0") == 0  # 0: never stop
    told, _ = results(next((tmp_path / "never").iterdir()))
    assert [r["status"] for r in told] == ["failed"] * 6
