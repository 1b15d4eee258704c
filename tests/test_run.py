"""The runner and the run directory on the toy space: journal, resume after kill -9, failed trials."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nasplat import api
from nasplat.run import RunDir, RunError, read_journal

CLI = [sys.executable, str(Path(__file__).with_name("run_cli.py"))]


def _results(run_path):
    return [e for e in read_journal(Path(run_path) / "journal.jsonl") if e["event"] == "result"]


def test_search_writes_run_directory(tmp_path):
    outcome = api.search("toy", strategy="random", trials=4, out=tmp_path, seed=3)
    run = outcome.run
    assert outcome.reason == "done" and outcome.finished == 4
    config = json.loads((run.path / "config.json").read_text())
    assert config["space"] == "toy" and config["trials"] == 4 and config["seed"] == 3
    results = _results(run.path)
    assert [r["trial"] for r in results] == [0, 1, 2, 3]
    assert all(r["status"] == "ok" and 0 <= r["metrics"]["accuracy"] <= 100 for r in results)
    best = max(results, key=lambda r: r["metrics"]["accuracy"])
    arch_json = json.loads((run.best / "arch.json").read_text())
    assert arch_json["arch"] == best["arch"]
    assert (run.report / "summary.md").exists() and (run.report / "pareto.png").exists()
    events = [e["event"] for e in run.events()]
    assert events[0] == "start" and events[-1] == "end" and events.count("epoch") == 4 * 2


def test_export_names_the_conversions_best_holds(tmp_path):
    run = api.search("toy", strategy="random", trials=2, out=tmp_path, export=["torchscript"]).run
    assert sorted(os.listdir(run.best)) == ["arch.json", "model.pt", "weights.safetensors"]
    assert run.config().export == ["torchscript"]  # a resumed or rerun search keeps it


def test_config_reruns_the_same_search(tmp_path):
    first = api.search("toy", strategy="random", trials=3, out=tmp_path / "a", seed=7).run
    second = api.start(first.config().__class__.from_dict({**first.config().to_dict(), "out": str(tmp_path / "b")}))
    assert [r["arch"] for r in _results(first.path)] == [r["arch"] for r in _results(second.run.path)]


def test_nan_trial_is_failed_and_search_goes_on(tmp_path, monkeypatch):
    monkeypatch.setenv("TOY_NAN_WIDTH", "8")
    outcome = api.search("toy", strategy="random", trials=8, out=tmp_path, seed=0)
    results = _results(outcome.run.path)
    failed = [r for r in results if r["status"] == "failed"]
    assert failed and all(r["arch"]["params"]["width"] == 8 for r in failed)
    assert all("finite" in r["error"] for r in failed)
    assert len(results) == 8 and any(r["status"] == "ok" for r in results)


def test_journal_tolerates_a_torn_last_line_only(tmp_path):
    path = tmp_path / "journal.jsonl"
    path.write_text('{"event": "start"}\n{"event": "ask", "tr')
    assert read_journal(path) == [{"event": "start"}]
    path.write_text('{"event": "start"}\n{"event": "ask", "tr\n{"event": "end"}\n')
    with pytest.raises(RunError, match="line 2 is not valid JSON"):
        read_journal(path)


def test_appending_after_a_kill_cuts_the_torn_line(tmp_path):
    run = api.search("toy", strategy="random", trials=1, out=tmp_path).run
    with open(run.journal_path, "ab") as fh:
        fh.write(b'{"event": "result", "tri')  # what a kill -9 mid-write leaves
    reopened = RunDir.open(run.path)
    reopened.append({"event": "note"})
    events = reopened.events()
    assert events[-1]["event"] == "note" and len(events) == len(run.events())


@pytest.mark.parametrize("strategy", ["random", "bayesian", "evolution", "local"])
def test_resume_after_kill_9_loses_nothing_and_repeats_nothing(tmp_path, strategy):
    env = {**os.environ, "TOY_SLEEP": "0.4"}
    proc = subprocess.Popen([*CLI, "search", "toy", "--strategy", strategy, "--trials", "6", "--out",
                             str(tmp_path), "--seed", "1"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    run_path = None
    while time.time() < deadline:
        runs = list(tmp_path.iterdir())
        if runs:
            run_path = runs[0]
            events = read_journal(run_path / "journal.jsonl")
            # kill in the middle of a trial: at least two finished and the latest event is an epoch
            if len(_results(run_path)) >= 2 and events[-1]["event"] == "epoch":
                break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = _results(run_path)
    asked = [e for e in read_journal(run_path / "journal.jsonl") if e["event"] == "ask"]
    in_flight = asked[-1]
    assert in_flight["trial"] not in {r["trial"] for r in before}

    done = subprocess.run([*CLI, "search", "--resume", str(run_path)], env={**os.environ, "TOY_SLEEP": "0"},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    after = _results(run_path)
    ids = [r["trial"] for r in after]
    assert sorted(ids) == list(range(6)) and len(set(ids)) == len(ids)  # none lost, none twice
    assert after[:len(before)] == before  # finished results untouched
    rerun = next(r for r in after if r["trial"] == in_flight["trial"])
    assert rerun["arch"] == in_flight["arch"]  # the in-flight trial reran with the same Arch
    # the resumed run makes the same decisions as an uninterrupted one with the same seed
    clean = subprocess.run([*CLI, "search", "toy", "--strategy", strategy, "--trials", "6", "--out",
                            str(tmp_path / "clean"), "--seed", "1"], capture_output=True, text=True, timeout=120)
    assert clean.returncode == 0, clean.stderr
    clean_run = next((tmp_path / "clean").iterdir())
    assert [r["arch"] for r in _results(clean_run)] == [r["arch"] for r in sorted(after, key=lambda r: r["trial"])]


def test_resume_refuses_a_finished_run(tmp_path):
    run = api.search("toy", strategy="random", trials=1, out=tmp_path).run
    with pytest.raises(RunError, match="has finished"):
        api.resume(run.path)
