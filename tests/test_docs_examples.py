"""Commands the docs show that no other test runs through the CLI, each at a tiny size."""
from __future__ import annotations

import json
from pathlib import Path

from nasplat.cli import main
from nasplat.run import read_journal


def _only_run(out: Path) -> Path:
    (run,) = [p for p in out.iterdir() if p.is_dir()]
    return run


def test_nsga2_searches_an_accuracy_latency_front_on_a_device_table(tmp_path: Path) -> None:
    code = main(["search", "nasbench201", "--strategy", "bayesian", "--sampler", "nsga2",
                 "--objective", "accuracy,latency", "--device", "table:lat_raspi4", "--budget", "6000s",
                 "--seed", "1", "--out", str(tmp_path)])
    assert code == 0
    run = _only_run(tmp_path)
    assert json.loads((run / "config.json").read_text())["strategy_options"]["sampler"] == "nsga2"
    front = json.loads((run / "report" / "pareto" / "front.json").read_text())
    assert front["objectives"] == ["accuracy", "latency"]
    points = [(entry["accuracy"], entry["latency"]) for entry in front["front"]]
    assert len(points) >= 2
    for a in points:  # no point of the front is dominated by another
        assert not any(b != a and b[0] >= a[0] and b[1] <= a[1] for b in points)
    results = [e for e in read_journal(run / "journal.jsonl") if e.get("event") == "result"]
    assert all("latency" in e["metrics"] for e in results if e["status"] == "ok")


def test_a_multi_trial_strategy_searches_binary_cells(tmp_path: Path) -> None:
    code = main(["search", "binary-cells", "--strategy", "random", "--trials", "2", "--epochs", "1",
                 "--space-option", "channels=4", "--space-option", "layers=3",
                 "--task-option", "limit_train=128", "--task-option", "limit_val=64",
                 "--export", "none", "--seed", "0", "--out", str(tmp_path)])
    assert code == 0
    run = _only_run(tmp_path)
    results = [e for e in read_journal(run / "journal.jsonl") if e.get("event") == "result"]
    assert [e["status"] for e in results] == ["ok", "ok"]
    best = json.loads((run / "best" / "arch.json").read_text())
    assert best["arch"]["space"] == "binary-cells"
    assert best["describe"].startswith("Genotype(normal=[(")
