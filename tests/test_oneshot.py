"""One-shot strategies end to end on binary cells (tiny settings): search, derive, export, retrain, resume."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nasplat import api
from nasplat.arch import Arch
from nasplat.cost import measure
from nasplat.export import read_bundle
from nasplat.registry import SPACES
from nasplat.retrain import retrain
from nasplat.run import read_journal

CLI = [sys.executable, "-m", "nasplat.cli"]
SPACE = {"channels": 4, "layers": 3, "binarize": "both"}
TASK = {"limit_train": 128, "limit_val": 64, "batch_size": 32}
OPTIONS = {
    "darts": {"search_epochs": 2, "warmup_epochs": 1, "batch_size": 32, "eval_limit": 64},
    "pc-darts": {"search_epochs": 2, "warmup_epochs": 1, "batch_size": 32, "eval_limit": 64},
    # beta 0.5: the indicator then weighs the Child's accuracy as much as the Parent's, so the end-to-end test
    # checks both (at the default beta = 1 it is the Parent's alone)
    "cp-nas": {"warmup_steps": 2, "train_steps": 1, "batch_size": 32, "eval_limit": 32, "beta": 0.5},
}


def _search(tmp_path: Path, strategy: str, *, seed: int = 0, options: dict | None = None, flops: str | None = None):
    return api.search("binary-cells", strategy=strategy, out=tmp_path, seed=seed, epochs=1, flops=flops,
                      space_options=SPACE, task_options=TASK, strategy_options={**OPTIONS[strategy], **(options or {})})


def _events(run_path: Path, kind: str) -> list[dict]:
    return [e for e in read_journal(Path(run_path) / "journal.jsonl") if e["event"] == kind]


def _cli_args(strategy: str, out: Path, seed: int = 0) -> list[str]:
    args = ["search", "binary-cells", "--strategy", strategy, "--epochs", "1", "--out", str(out), "--seed", str(seed),
            "--flops", "100M"]
    for flag, options in (("--space-option", SPACE), ("--task-option", TASK), ("--strategy-option", OPTIONS[strategy])):
        for key, value in options.items():
            args += [flag, f"{key}={json.dumps(value) if not isinstance(value, str) else value}"]
    return args


_CLEAN: dict[str, Path] = {}


def _clean_run(strategy: str, tmp_path_factory) -> Path:
    """One uninterrupted search per strategy (seed 0, --flops 100M), shared by the tests that read it."""
    if strategy not in _CLEAN:
        out = tmp_path_factory.mktemp(f"clean-{strategy}")
        done = subprocess.run([*CLI, *_cli_args(strategy, out)], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        _CLEAN[strategy] = next(out.iterdir())
    return _CLEAN[strategy]


# DARTS end to end (and PC-DARTS killed mid-search and resumed) at a tiny full-precision size: test_oneshot_e2e.py
@pytest.mark.parametrize("strategy", ["pc-darts", "cp-nas"])
def test_search_derives_and_exports(tmp_path_factory, strategy):
    run_path = _clean_run(strategy, tmp_path_factory)
    derived = _events(run_path, "derived")
    assert len(derived) == 1 and _events(run_path, "end")[-1]["reason"] == "done"
    steps = _events(run_path, "supernet")
    expected_steps = 2 if strategy != "cp-nas" else 1 + sum(range(2, 9))  # warm-up + 35 sampled paths (K=8, T=1)
    assert [e["step"] for e in steps] == list(range(1, expected_steps + 1))
    if strategy == "cp-nas":
        sampled = [e for e in steps if "indicator" in e]
        assert all(0 <= e["child_accuracy"] <= 100 and 0 <= e["parent_accuracy"] <= 100 for e in sampled)
        assert all(e["indicator"] == pytest.approx(0.5 * (e["parent_accuracy"] - e["child_accuracy"])
                                                   + e["child_accuracy"]) for e in sampled)  # z = b(A_P - A_C) + A_C
        assert any(e["child_accuracy"] != e["parent_accuracy"] for e in sampled)  # the Child is its own network
        abandoned = [a for e in sampled for a in e.get("abandoned", [])]
        assert len(abandoned) == 7 * 28  # one op per edge per round, 7 rounds, 28 edges
    else:
        assert all(0 <= e["val_accuracy"] <= 100 and e["expected_macs"] > 0 for e in steps)
    arch = Arch.from_dict(derived[0]["arch"])
    results = _events(run_path, "result")
    assert len(results) == 1 and results[0]["status"] == "ok" and results[0]["arch"] == arch.to_dict()
    best = run_path / "best"
    bundle = read_bundle(best)
    assert bundle["arch"] == arch.to_dict()
    assert {"model.onnx", "model.pt"} <= set(os.listdir(best))  # binarized ops exported and verified
    costs = measure(SPACES.create("binary-cells", **SPACE), arch)
    assert bundle["costs"]["bops"] == costs["bops"] > 0 and costs["macs"] <= 100e6
    assert (run_path / "report" / "cells" / "normal.png").exists()
    assert "## Supernet" in (run_path / "report" / "summary.md").read_text()


@pytest.mark.slow
def test_the_derived_network_retrains(tmp_path_factory):
    result = retrain(_clean_run("pc-darts", tmp_path_factory), epochs=1)
    assert 0 <= result["accuracy"] <= 100


@pytest.mark.slow
def test_second_order_darts_searches(tmp_path):
    outcome = _search(tmp_path, "darts", seed=3, options={"order": 2})
    assert _events(outcome.run.path, "supernet")[-1]["arch_val_loss"] is not None


@pytest.mark.slow
def test_a_tight_budget_is_met_by_the_derived_genotype(tmp_path):
    space = SPACES.create("binary-cells", **SPACE)
    smallest = measure(space, space.smallest())["macs"]
    limit = smallest * 1.05
    outcome = _search(tmp_path, "pc-darts", flops=str(int(limit)))
    arch = Arch.from_dict(_events(outcome.run.path, "derived")[0]["arch"])
    assert measure(space, arch)["macs"] <= limit
    assert _events(outcome.run.path, "result")[0]["status"] == "ok"


@pytest.mark.parametrize("strategy", ["cp-nas"])
def test_kill_9_mid_search_resumes_to_the_same_genotype(tmp_path, tmp_path_factory, strategy):
    """Killed after its first checkpoint, resumed: the journal and the genotype are those of an unbroken run
    with the same seed (which also shows that a seed fixes the search)."""
    proc = subprocess.Popen([*CLI, *_cli_args(strategy, tmp_path), "--export", "none"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    run_path = None
    while time.time() < deadline and proc.poll() is None:
        runs = list(tmp_path.iterdir())
        if runs and len(_events(runs[0], "supernet")) >= 2:
            run_path = runs[0]
            break
        time.sleep(0.02)
    assert run_path is not None, "the search never checkpointed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not _events(run_path, "derived")
    done = subprocess.run([*CLI, "search", "--resume", str(run_path)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    clean_path = _clean_run(strategy, tmp_path_factory)
    resumed_steps = _events(run_path, "supernet")
    strip = lambda events: [{k: v for k, v in e.items() if k != "time"} for e in events]  # noqa: E731
    assert strip(resumed_steps) == strip(_events(clean_path, "supernet"))  # none lost, none twice, same values
    assert _events(run_path, "derived")[0]["arch"] == _events(clean_path, "derived")[0]["arch"]


@pytest.mark.parametrize("args, message", [
    (["search", "tinynet", "--strategy", "darts"], "space 'tinynet' has no supernet()"),
    (["search", "binary-cells", "--strategy", "pc-darts", "--trials", "3"], "exactly one trial"),
    (["search", "binary-cells", "--strategy", "darts", "--runner", "ray"], "local runner"),
    (["search", "binary-cells", "--strategy", "darts", "--strategy-option", "nope=1"], "takes no option 'nope'"),
    (["search", "binary-cells", "--strategy", "cp-nas", "--space-option", "binarize=none"], "binarized Child"),
    (["search", "abandit-cells", "--strategy", "cp-nas"], "has no binarization: search binary-cells"),
    (["search", "binary-cells", "--space-option", "binarize=half"], "unknown binarization 'half'"),
    (["search", "binary-cells", "--strategy", "pc-darts", "--flops", "1k"], "is below the smallest"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    done = subprocess.run([*CLI, *args, "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr
    assert not list(tmp_path.iterdir())  # nothing written
