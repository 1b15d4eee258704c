"""The Ray runner on a local Ray: every registered strategy unchanged, the local runner's trials at one
worker, a worker's kill -9 retried, a driver's kill -9 resumed, ASHA, a cluster of two nodes, bad input.
Node loss, the cleanup of Ray at the driver's end and `ray job submit` are in test_ray_faults.py.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time

import pytest
from ray_util import CLI, cli, descendants, events, only_run, wait_for

from nasplat.registry import STRATEGIES
from nasplat.run import SearchConfig, read_journal
from nasplat.runner.ray_cluster import RayUnavailable, fit_workers
from nasplat.runner.ray_trial import EPOCH, METRICS, RESULT, decode
from nasplat.strategy import Result

MULTI_TRIAL = [name for name in STRATEGIES.names() if not STRATEGIES.get(name).one_shot]  # one-shot: local only


@pytest.mark.parametrize("strategy", MULTI_TRIAL)
def test_every_registered_strategy_runs_on_ray_unchanged(tmp_path, strategy):
    done = cli(["search", "toy", "--strategy", strategy, "--trials", "5", "--workers", "2", "--seed", "2",
                "--out", str(tmp_path)])
    assert done.returncode == 0, done.stderr
    run = only_run(tmp_path)
    results = events(run, "result")
    assert sorted(r["trial"] for r in results) == list(range(5)) and all(r["status"] == "ok" for r in results)
    start, end = events(run, "start")[0], events(run, "end")[-1]
    assert start["runner"] == "ray" and start["workers"] == 2 and start["ray_address"] == "local"
    assert end["reason"] == "done" and len(events(run, "epoch")) == 5 * 2
    assert json.loads((run / "best" / "arch.json").read_text())["arch"] == \
        max(results, key=lambda r: r["metrics"]["accuracy"])["arch"]
    assert (run / "best" / "weights.safetensors").exists()  # the best trial's weights came back from its worker
    assert json.loads((run / "config.json").read_text())["runner"] == "ray"


@pytest.mark.parametrize("strategy", ["evolution", "bayesian"])
def test_one_worker_runs_the_trials_the_local_runner_runs(tmp_path, strategy):
    common = ["search", "toy", "--strategy", strategy, "--trials", "6", "--seed", "4"]
    one_thread = {"OMP_NUM_THREADS": "1"}  # as a Ray trial at one CPU: the same float sums, the same accuracies
    local = cli([*common, "--out", str(tmp_path / "local")], env=one_thread)
    on_ray = cli([*common, "--workers", "1", "--out", str(tmp_path / "ray")])
    assert local.returncode == 0 and on_ray.returncode == 0, local.stderr + on_ray.stderr
    a, b = (events(only_run(tmp_path / name), "result") for name in ("local", "ray"))
    assert [r["trial"] for r in b] == list(range(6))
    assert [r["arch"] for r in a] == [r["arch"] for r in b]
    assert [r["metrics"]["accuracy"] for r in a] == [r["metrics"]["accuracy"] for r in b]


def test_a_worker_killed_mid_trial_is_retried_and_every_trial_is_accounted_for(tmp_path):
    proc = subprocess.Popen([*CLI, "search", "toy", "--strategy", "random", "--trials", "6", "--workers", "2",
                             "--max-retries", "2", "--seed", "1", "--out", str(tmp_path)],
                            env={**os.environ, "TOY_SLEEP": "0.5"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: any(tmp_path.iterdir()) and events(only_run(tmp_path), "epoch"), seconds=90,
                 what="a trial's first epoch")
        workers = [pid for pid, cmd in descendants(proc.pid) if "ImplicitFunc" in cmd]
        assert workers, descendants(proc.pid)
        os.kill(workers[0], signal.SIGKILL)  # in its second epoch: each sleeps 0.5 s
        _, err = proc.communicate(timeout=180)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    run = only_run(tmp_path)
    results = events(run, "result")
    assert sorted(r["trial"] for r in results) == list(range(6))  # each once, none lost
    assert all(r["status"] == "ok" for r in results)
    (retry,) = events(run, "retry")
    assert retry["failures"] == 1 and retry["trial"] in {r["trial"] for r in results}
    assert retry["reason"] and not retry["reason"].startswith("node ")  # its worker died, its node lives
    assert events(run, "end")[-1]["reason"] == "done"


def test_a_killed_driver_resumes_without_losing_or_repeating_a_trial(tmp_path):
    proc = subprocess.Popen([*CLI, "search", "toy", "--strategy", "evolution", "--trials", "8", "--workers", "2",
                             "--seed", "3", "--out", str(tmp_path)], env={**os.environ, "TOY_SLEEP": "0.4"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def mid_trial() -> bool:
        if not any(tmp_path.iterdir()):
            return False
        journal = read_journal(only_run(tmp_path) / "journal.jsonl")
        return sum(e["event"] == "result" for e in journal) >= 2 and journal[-1]["event"] == "epoch"

    try:
        wait_for(mid_trial, seconds=90, what="two results and a trial in flight")
        os.kill(proc.pid, signal.SIGKILL)  # the local Ray it started is stopped by its watcher
        proc.wait()
    finally:
        proc.kill()
    run = only_run(tmp_path)
    before = events(run, "result")
    asked = events(run, "ask")
    in_flight = [a for a in asked if a["trial"] not in {r["trial"] for r in before}]
    assert in_flight

    done = cli(["search", "--resume", str(run)])
    assert done.returncode == 0, done.stderr
    after = events(run, "result")
    assert sorted(r["trial"] for r in after) == list(range(8))  # none lost, none twice
    assert after[:len(before)] == before  # the finished results untouched
    for trial in in_flight:  # each trial in flight reran with its Arch
        assert next(r for r in after if r["trial"] == trial["trial"])["arch"] == trial["arch"]
    starts = events(run, "start")
    assert starts[-1]["resumed"] and set(starts[-1]["pending"]) == {t["trial"] for t in in_flight}


def test_asha_stops_trials_early_and_the_journal_says_so(tmp_path):
    done = cli(["search", "toy", "--strategy", "evolution", "--trials", "10", "--epochs", "4", "--workers", "2",
                "--scheduler", "asha", "--seed", "5", "--out", str(tmp_path)])
    assert done.returncode == 0, done.stderr
    run = only_run(tmp_path)
    results = events(run, "result")
    assert sorted(r["trial"] for r in results) == list(range(10))
    stopped = [r for r in results if r["status"] == "stopped"]
    assert stopped and all(r["metrics"]["epoch"] < 4 and "ASHA" in r["error"] for r in stopped)
    assert all(r["status"] == "ok" for r in results if r not in stopped)
    for r in stopped:  # its epochs are journaled up to where it stopped
        assert max(e["epoch"] for e in events(run, "epoch") if e["trial"] == r["trial"]) == r["metrics"]["epoch"]
    assert "stopped early" in (run / "report" / "summary.md").read_text()


def test_joins_a_cluster_of_two_nodes(tmp_path):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        done = cli(["search", "toy", "--strategy", "random", "--trials", "4", "--ray-address", cluster.address,
                    "--seed", "1", "--out", str(tmp_path)])
        assert done.returncode == 0, done.stderr
        run = only_run(tmp_path)
        start = events(run, "start")[0]
        assert start["ray_address"] == cluster.address and start["cluster_cpus"] == 2 and start["workers"] == 2
        assert sorted(r["trial"] for r in events(run, "result")) == list(range(4))
    finally:
        cluster.shutdown()


def test_more_workers_than_cpus_warns_and_caps(tmp_path):
    done = cli(["search", "toy", "--strategy", "random", "--trials", "2", "--workers", "64", "--out", str(tmp_path)])
    assert done.returncode == 0, done.stderr
    cpus = os.cpu_count() or 1
    assert f"running {min(cpus, 64)} trials at a time" in " ".join(done.stderr.split())
    assert events(only_run(tmp_path), "start")[0]["workers"] == cpus


def test_an_unreachable_ray_address_is_one_line_and_exit_2_within_30s(tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.time()
    done = cli(["search", "toy", "--runner", "ray", "--ray-address", f"127.0.0.1:{port}",
                "--out", str(tmp_path / "runs")], timeout=60)
    assert time.time() - started < 30
    assert done.returncode == 2
    err = done.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith("nasplat: error:") and f"127.0.0.1:{port}" in err, err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("args,needle", [
    (["--runner", "local", "--workers", "2"], "--workers set(s) how trials run on Ray"),
    (["--workers", "0"], "--workers: must be at least 1"),
    (["--cpus-per-trial", "0"], "--cpus-per-trial: must be above 0"),
    (["--scheduler", "hyperband"], "invalid choice"),
    (["--ray-address", "nowhere"], "give auto, host:port"),
])
def test_bad_ray_options_are_one_line_and_exit_2(tmp_path, args, needle):
    done = cli(["search", "toy", *args, "--out", str(tmp_path / "runs")], timeout=60)
    assert done.returncode == 2, done.stderr
    err = done.stderr.strip()
    assert len(err.splitlines()) == 1 and needle in err, err
    assert not (tmp_path / "runs").exists()


def test_a_config_from_before_the_ray_runner_still_loads():
    config = SearchConfig.from_dict({"space": "toy", "strategy": "random", "trials": 3})
    assert config.runner == "local" and config.workers is None and config.max_retries == 2
    with pytest.raises(ValueError, match="local runner"):
        SearchConfig(space="toy", runner="ray", budget=100.0)


def test_fit_workers_caps_with_a_warning_and_refuses_what_cannot_run():
    from rich.console import Console

    console = Console(record=True, width=200)
    assert fit_workers(None, cpus=4, gpus=0, cpus_per_trial=1, gpus_per_trial=0, console=console) == 4
    assert fit_workers(8, cpus=4, gpus=0, cpus_per_trial=2, gpus_per_trial=0, console=console) == 2
    assert "running 2 trials at a time" in console.export_text()
    assert fit_workers(4, cpus=8, gpus=2, cpus_per_trial=1, gpus_per_trial=1, console=console) == 2
    with pytest.raises(RayUnavailable, match="needs 1 CPU and 1 GPU"):
        fit_workers(None, cpus=8, gpus=0, cpus_per_trial=1, gpus_per_trial=1, console=console)


def test_decode_tells_a_finished_trial_from_a_stopped_one():
    ok = Result("ok", {"accuracy": 50.0})
    assert decode({RESULT: json.dumps(ok.to_dict())}, epochs=4) == ok
    stopped = decode({EPOCH: 1, METRICS: json.dumps({"accuracy": 20.0})}, epochs=4)
    assert stopped.status == "stopped" and stopped.metrics == {"accuracy": 20.0, "epoch": 1}
    told = stopped.for_strategy()  # what a strategy sees: failed, with the reason
    assert told.status == "failed" and "stopped early" in told.error
    assert decode({}, epochs=4) is None
