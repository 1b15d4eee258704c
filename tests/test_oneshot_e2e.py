"""DARTS, PC-DARTS and a crowd-counting search at a tiny size, end to end through the CLI: each searched once
unbroken, and once killed with kill -9 mid-search (a real process, after a checkpoint with epochs still to go)
and resumed, which must give the journal and the genotype of the unbroken run.

Full precision, 4 channels, 3 layers, 64 training images and `--export none` keep each search to a few
seconds; binarized ops and their TorchScript and ONNX export are checked by test_oneshot.py."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nasplat.arch import Arch
from nasplat.cli import main
from nasplat.cost import measure
from nasplat.export import read_bundle
from nasplat.registry import SPACES
from nasplat.run import read_journal

RUN_CLI = [sys.executable, str(Path(__file__).resolve().parent / "run_cli.py")]

# search_epochs 3 with 1 of warm-up: killed after the second epoch (the first to move the architecture), the
# resumed search still trains one epoch from the restored weights, architecture and optimizers
BILEVEL = {"search_epochs": 3, "warmup_epochs": 1, "batch_size": 32, "eval_limit": 32}
SEARCHES = {
    "darts": ("binary-cells", "darts", {"channels": 4, "layers": 3, "binarize": "none"},
              {"limit_train": 64, "limit_val": 32, "batch_size": 32}, BILEVEL, "20M"),
    "pc-darts": ("binary-cells", "pc-darts", {"channels": 4, "layers": 3, "binarize": "none"},
                 {"limit_train": 64, "limit_val": 32, "batch_size": 32}, BILEVEL, "20M"),
    "crowd": ("crowd", "pc-darts", {"channels": 8, "depth": 2},
              {"limit_train": 32, "limit_val": 16, "batch_size": 16, "base_resolution": 32},
              {**BILEVEL, "batch_size": 16, "eval_limit": 16}, None),
}


def _argv(name: str, out: Path) -> list[str]:
    space, strategy, space_options, task_options, options, flops = SEARCHES[name]
    argv = ["search", space, "--strategy", strategy, "--epochs", "1", "--seed", "0", "--export", "none",
            "--out", str(out), *(["--flops", flops] if flops else [])]
    for flag, given in (("--space-option", space_options), ("--task-option", task_options),
                        ("--strategy-option", options)):
        argv += [item for key, value in given.items() for item in (flag, f"{key}={value}")]
    return argv


def _events(run: Path, kind: str) -> list[dict]:
    return [e for e in read_journal(run / "journal.jsonl") if e["event"] == kind]


def _timeless(events: list[dict]) -> list[dict]:
    return [{k: v for k, v in e.items() if k != "time"} for e in events]


_CLEAN: dict[str, Path] = {}


def _clean_run(name: str, tmp_path_factory) -> Path:
    """The unbroken search, in this process; shared by the tests of one search."""
    if name not in _CLEAN:
        out = tmp_path_factory.mktemp(f"clean-{name}")
        assert main(_argv(name, out)) == 0
        (_CLEAN[name],) = out.iterdir()
    return _CLEAN[name]


def _killed_run(name: str, out: Path, *, after_steps: int) -> Path:
    """The search in a process of its own, killed with SIGKILL once `after_steps` supernet checkpoints are
    journaled (none of the derivation yet)."""
    proc = subprocess.Popen([*RUN_CLI, *_argv(name, out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, run = time.time() + 300, None
    try:
        while time.time() < deadline and proc.poll() is None:
            runs = list(out.iterdir())
            if runs and len(_events(runs[0], "supernet")) >= after_steps:
                run = runs[0]
                break
            time.sleep(0.01)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert run is not None, f"the search never journaled {after_steps} checkpoints (exit code {proc.returncode})"
    return run


def _assert_resumes_like_the_unbroken_run(name: str, tmp_path: Path, tmp_path_factory) -> None:
    run = _killed_run(name, tmp_path, after_steps=2)
    steps = _events(run, "supernet")
    assert [e["step"] for e in steps] == [1, 2] and not _events(run, "derived")  # killed with an epoch to go
    assert main(["search", "--resume", str(run)]) == 0
    clean = _clean_run(name, tmp_path_factory)
    assert _timeless(_events(run, "supernet")) == _timeless(_events(clean, "supernet"))  # none lost or twice
    assert _events(run, "derived")[0]["arch"] == _events(clean, "derived")[0]["arch"]
    (resumed,), (unbroken,) = _events(run, "result"), _events(clean, "result")
    timed = ("seconds", "train_seconds")  # wall-clock figures; the rest is fixed by the seed
    assert resumed["status"] == unbroken["status"] == "ok"
    assert {k: v for k, v in resumed["metrics"].items() if k not in timed} == \
        {k: v for k, v in unbroken["metrics"].items() if k not in timed}
    assert [e["resumed"] for e in _events(run, "start")] == [False, True]


@pytest.mark.parametrize("strategy", ["darts", "pc-darts"])
def test_search_derives_trains_and_bundles_a_genotype_within_the_budget(tmp_path_factory, strategy):
    run = _clean_run(strategy, tmp_path_factory)
    assert _events(run, "end")[-1]["reason"] == "done"
    steps = _events(run, "supernet")
    assert [e["step"] for e in steps] == [1, 2, 3]
    assert all(0 <= e["val_accuracy"] <= 100 and e["expected_macs"] > 0 for e in steps)
    (derived,) = _events(run, "derived")
    arch = Arch.from_dict(derived["arch"])
    (result,) = _events(run, "result")
    assert result["status"] == "ok" and result["arch"] == arch.to_dict() and 0 <= result["metrics"]["accuracy"] <= 100
    space = SPACES.create("binary-cells", **SEARCHES[strategy][2])
    space.validate(arch)
    costs = measure(space, arch)
    assert costs["macs"] <= 20e6 and result["metrics"]["macs"] == costs["macs"]  # --flops 20M
    bundle = read_bundle(run / "best")
    assert bundle["arch"] == arch.to_dict() and bundle["costs"]["macs"] == costs["macs"]
    assert sorted(os.listdir(run / "best")) == ["arch.json", "weights.safetensors"]  # --export none
    assert sorted(p.name for p in (run / "report" / "cells").iterdir()) == ["normal.png", "reduce.png"]
    assert "## Supernet" in (run / "report" / "summary.md").read_text()


@pytest.mark.parametrize("name", ["darts", "pc-darts", "crowd"])
def test_kill_9_mid_search_resumes_to_the_journal_and_genotype_of_the_unbroken_run(tmp_path, tmp_path_factory,
                                                                                   name):
    _assert_resumes_like_the_unbroken_run(name, tmp_path, tmp_path_factory)

