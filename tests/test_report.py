"""The report of a run, drawn from a synthetic run directory; the tolerant journal reader."""
import json

import pytest

from nasplat.registry import SPACES, register_space
from nasplat.run import RunError as JournalError
from nasplat.run import read_journal
from nasplat.report import (best_result, pareto_front, summary_text, trial_results,
                            write_report)
from nasplat.space import Choice, SearchSpace, Target


class ReportTestSpace(SearchSpace):
    """Only what the report asks of a space: a readable form and a target."""

    def parameters(self):
        return {"width": Choice((8, 16, 24, 32))}

    def build(self, arch, *, num_classes=None):
        raise NotImplementedError("the report never builds a model")

    def target(self, arch):
        return Target((1, 3, 40, 40), 1000)

    def describe(self, arch):
        return f"net_w{arch['width']}"


if "report_test" not in SPACES.names():
    register_space("report_test")(ReportTestSpace)

CONFIG = {"space": "report_test", "space_options": {}, "strategy": "random", "strategy_options": {},
          "task": "classification", "task_options": {"data": "synthetic"},
          "constraints": [{"metric": "macs", "limit": 24e6}], "trials": 7, "epochs": 3, "seed": 0}


def _arch(width):
    return {"space": "report_test", "params": {"width": width}}


def _ok(trial, width, accuracy, macs):
    return {"event": "result", "trial": trial, "arch": _arch(width), "status": "ok",
            "metrics": {"accuracy": accuracy, "macs": macs, "params": macs / 10, "input_size": 30}, "time": trial}


def _write_run(path, events, *, tail=""):
    path.mkdir()
    (path / "config.json").write_text(json.dumps(CONFIG))
    (path / "journal.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events) + tail)
    return path


EVENTS = [
    {"event": "start", "time": 0},
    {"event": "ask", "trial": 0, "arch": _arch(8), "time": 1},
    {"event": "epoch", "trial": 0, "epoch": 1, "metrics": {"loss": 1.0}},
    _ok(0, 8, 40.0, 5e6),
    _ok(1, 16, 61.5, 12e6),
    {"event": "result", "trial": 2, "arch": _arch(32), "status": "infeasible",
     "metrics": {"macs": 40e6, "params": 4e6}, "error": "MACs 40M > 24M", "time": 3},
    _ok(3, 24, 58.0, 20e6),  # dominated by trial 1
    {"event": "result", "trial": 4, "arch": _arch(16), "status": "failed", "metrics": {}, "error": "NaN", "time": 5},
    _ok(5, 24, 70.25, 22e6),
    _ok(1, 16, 62.0, 12e6),  # trial 1 again (a resumed run reran it): the later result counts
    {"event": "end", "reason": "done", "time": 60},
    {"event": "retrain", "epochs": 30, "metrics": {"accuracy": 77.5}, "time": 90},
]


def test_results_front_and_best():
    results = trial_results(EVENTS)
    assert [r["trial"] for r in results] == [0, 1, 2, 3, 4, 5]
    assert results[1]["metrics"]["accuracy"] == 62.0
    assert [r["trial"] for r in pareto_front(results)] == [0, 1, 5]
    assert best_result(results)["trial"] == 5
    assert best_result([r for r in results if r["status"] != "ok"]) is None


def test_report_of_a_run(tmp_path):
    run = _write_run(tmp_path / "run-a", EVENTS)
    (run / "best").mkdir(exist_ok=True)
    (run / "best" / "weights.safetensors").touch()  # a trained run: its summary offers export and retrain
    folder = write_report(run)
    assert folder == run / "report"
    for name in ("pareto.png", "progress.png"):
        assert (folder / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (folder / "summary.md").read_text()
    assert summary.startswith(summary_text(run))
    assert "# Run run-a" in summary and "MACs <= 24M" in summary
    assert "3 ok" not in summary and "4 ok, 1 infeasible, 1 failed (of 7 planned)" in summary
    assert "## Best architecture: trial 5" in summary and "`net_w24`" in summary
    assert "70.25%" in summary and "22M" in summary and "1x3x40x40" in summary
    assert f"nasplat export {run} --format json,torchscript,onnx --out DIR" in summary
    assert f"nasplat retrain {run} --epochs N" in summary
    assert "Retrained for 30 epochs: 77.50%" in summary
    top = [line for line in summary.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [line.split("|")[2].strip() for line in top] == ["5", "1", "3", "0"]
    assert sorted(p.name for p in folder.iterdir()) == ["pareto.png", "progress.png", "summary.md"]


def test_summary_describes_the_exported_bundle(tmp_path):
    run = _write_run(tmp_path / "run-b", EVENTS)
    (run / "best").mkdir()
    (run / "best" / "arch.json").write_text(json.dumps({
        "arch": _arch(24), "describe": "from-the-bundle", "metrics": {"trial": 5},
        "target": {"input_shape": [1, 3, 56, 56], "num_classes": 1000}}))
    text = summary_text(run)
    assert "`from-the-bundle`" in text and "1x3x56x56" in text


def test_report_of_a_run_without_ok_trials(tmp_path):
    events = [EVENTS[0], EVENTS[5], EVENTS[7]]
    run = _write_run(tmp_path / "run-c", events)
    folder = write_report(run)
    assert (folder / "pareto.png").exists() and (folder / "progress.png").exists()
    text = summary_text(run)
    assert "0 ok, 1 infeasible, 1 failed" in text and "No trial finished ok" in text
    assert "no end recorded" in text
    empty = _write_run(tmp_path / "run-d", [EVENTS[0]])
    assert (write_report(empty) / "pareto.png").exists()


def test_journal_with_a_cut_off_last_line_is_read(tmp_path):
    run = _write_run(tmp_path / "run-e", EVENTS[:4], tail='{"event": "result", "trial": 1, "ar')
    assert read_journal(run / 'journal.jsonl') == EVENTS[:4]
    complete = "".join(json.dumps(e) + "\n" for e in EVENTS[:4]).encode()
    (run / "journal.jsonl").write_bytes(complete + b'{"event": "epoch", "note": "\xe2\x82')
    assert read_journal(run / 'journal.jsonl') == EVENTS[:4]  # cut inside a UTF-8 character, too


def test_journal_with_a_corrupt_middle_line_raises(tmp_path):
    lines = [json.dumps(e) for e in EVENTS[:4]]
    lines[2] = lines[2][:25]
    run = _write_run(tmp_path / "run-f", [])
    (run / "journal.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(JournalError, match=r"journal\.jsonl line 3 is not valid JSON"):
        read_journal(run / 'journal.jsonl')
    (run / "journal.jsonl").write_text('{"event": "start"}\n[1, 2]\n{"event": "end"}\n')
    with pytest.raises(JournalError, match="line 2 is not a journal event"):
        read_journal(run / 'journal.jsonl')
