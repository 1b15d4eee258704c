"""Ray at scale: a node lost mid-search, the Ray instance a search started gone however its driver ends
(and a joined cluster never stopped), and docs/distributed.md's cluster recipe run as written.
"""
from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from ray_util import CLI, descendants, events, instance_processes, only_run, wait_for

ROOT = Path(__file__).resolve().parents[1]
# a strategy that raises at its third ask: an exception out of the driver, as a bug would raise one
BOOM = """
import sys

import toy  # noqa: F401  (PYTHONPATH holds tests/)
from nasplat.cli import main
from nasplat.registry import STRATEGIES, register_strategy


@register_strategy("boom")
class Boom(STRATEGIES.get("random")):
    def ask(self):
        if self.next_id >= 2:
            raise RuntimeError("boom")
        return super().ask()


sys.exit(main(sys.argv[1:]))
"""
# docs/distributed.md's commands, which the tests below run as written
LOCAL = "nasplat search nasbench201 --strategy random --trials 6 --workers 2"
RECIPE = """\
export RAY_AUTH_MODE=token
ray get-auth-token --generate
ray start --head --port 6379 --dashboard-host 127.0.0.1 --dashboard-port 8265 --num-cpus 1
ray start --address 127.0.0.1:6379 --num-cpus 1
ray start --address 127.0.0.1:6379 --num-cpus 1
nasplat search nasbench201 --strategy evolution --trials 6 --ray-address 127.0.0.1:6379
ray job submit --address http://127.0.0.1:8265 -- \\
    nasplat search nasbench201 --strategy random --trials 6 --ray-address auto --out "$PWD/runs"
nasplat show runs/nasbench201-random-*
nasplat export runs/nasbench201-random-* --target --out model
ray stop
"""


def _raylet(node) -> int:
    return node.all_processes["raylet"][0].process.pid


def test_a_node_lost_mid_search_has_its_trials_retried_and_the_joined_cluster_goes_on(tmp_path, monkeypatch):
    from ray.cluster_utils import Cluster

    monkeypatch.setenv("TOY_SLEEP", "1")  # the nodes' workers inherit it: 2 epochs of 1 s a trial
    # the head marks a node dead after 3 failed health checks 1 s apart, not Ray's 5 x 3 s: the retried
    # trials wait that long for their node's resources to be given up
    checks = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 1000, "health_check_failure_threshold": 3}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                            "_system_config": checks})
    try:
        workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
        proc = subprocess.Popen([*CLI, "search", "toy", "--strategy", "random", "--trials", "6", "--ray-address",
                                 cluster.address, "--max-retries", "2", "--seed", "1", "--out", str(tmp_path)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            def busy() -> list:
                return [n for n in workers if any("ImplicitFunc" in cmd for _, cmd in descendants(_raylet(n)))]

            # each node's first trial has reported its first epoch (so each worker has signed in for the
            # search: see ray_trial.wait_for_workers), and a worker node runs a trial
            wait_for(lambda: any(tmp_path.iterdir()) and len(events(only_run(tmp_path), "epoch")) >= 3 and busy(),
                     seconds=120, what="three trials into their first epoch")
            (victim, *_) = busy()
            cluster.remove_node(victim, allow_graceful=False)
            summary, err = proc.communicate(timeout=240)
        finally:
            proc.kill()
        assert proc.returncode == 0, err
        assert "trials: 6 ok, 0 infeasible, 0 failed (of 6 planned)" in summary
        run = only_run(tmp_path)
        assert events(run, "start")[0]["workers"] == 3
        results = events(run, "result")
        assert sorted(r["trial"] for r in results) == list(range(6))  # each once: none lost, none counted twice
        assert all(r["status"] == "ok" for r in results)
        retries = events(run, "retry")
        assert retries, "no trial was retried"
        for retry in retries:  # the journal says which trial and why
            assert retry["reason"].startswith(f"node {victim.node_id} died: "), retry
            assert retry["trial"] in {r["trial"] for r in results}
        assert events(run, "end")[-1]["reason"] == "done"
        survivor = next(n for n in workers if n is not victim)
        assert cluster.head_node.remaining_processes_alive() and survivor.remaining_processes_alive()
    finally:
        cluster.shutdown()


def _instance(driver: int) -> tuple[str, str] | None:
    """The token and the folder of the Ray instance that `driver` started, from its watcher's command line."""
    for _, cmd in descendants(driver):
        if "ray_watch.py" in cmd:
            return cmd.split()[-2], cmd.split()[-1]
    return None


def _venv_path() -> dict[str, str]:
    """The environment with this Python's scripts (nasplat, ray) first on PATH."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


@pytest.mark.parametrize("ending,code", [("exit", 0), ("ctrl-c", 130), ("exception", 1), ("kill -9", -9)])
def test_the_ray_instance_a_search_started_is_gone_when_its_driver_ends(tmp_path, ending, code):
    """`exit` runs the documented search on local workers; the others a toy search with sleeping trials, ended
    mid-trial (or by a strategy that raises at its third ask)."""
    assert f"\n{LOCAL}\n" in (ROOT / "docs" / "distributed.md").read_text()
    toy = ["search", "toy", "--trials", "3", "--workers", "1", "--seed", "1"]
    if ending == "exit":
        command = shlex.split(LOCAL)
    elif ending == "exception":
        (tmp_path / "boom.py").write_text(BOOM)
        command = [sys.executable, str(tmp_path / "boom.py"), *toy, "--strategy", "boom"]
    else:
        command = [*CLI, *toy, "--strategy", "random"]
    out = tmp_path / "runs"  # the default --out, under the working folder
    env = {**_venv_path(), "PYTHONPATH": str(Path(__file__).parent),  # toy.py, for boom.py and Ray's workers
           "TOY_SLEEP": "0.5" if ending in ("ctrl-c", "kill -9") else "0"}
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)  # its own process group, as a terminal's Ctrl-C signals
    try:
        wait_for(lambda: _instance(proc.pid), seconds=60, what="the watcher")
        token, folder = _instance(proc.pid)
        wait_for(lambda: len(instance_processes(token, folder)) >= 2, seconds=120, what="Ray's processes")
        if ending in ("ctrl-c", "kill -9"):
            wait_for(lambda: out.exists() and any(out.iterdir()) and events(only_run(out), "epoch"), seconds=120,
                     what="a trial's first epoch")
            if ending == "ctrl-c":
                os.killpg(proc.pid, signal.SIGINT)
            else:
                os.kill(proc.pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=180)
    finally:
        proc.kill()
    assert proc.returncode == code, err
    if ending == "exit":
        assert sorted(r["trial"] for r in events(only_run(out), "result")) == list(range(6))
    if ending == "kill -9":  # the watcher sees the driver's end and stops the instance on its own
        wait_for(lambda: not instance_processes(token, folder), seconds=30, what="the instance to stop")
    assert not instance_processes(token, folder)
    assert not Path(folder).exists()


def test_the_cluster_recipe_runs_as_written(tmp_path):
    """Three nodes on this machine, in a PID and network namespace of their own: `ray stop` then stops
    those alone, and the fixed ports clash with nothing. HOME is the test's folder, as on a machine where
    Ray never ran: the recipe makes its own token."""
    assert RECIPE in (ROOT / "docs" / "distributed.md").read_text()
    if subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "--net", "true"],
                      capture_output=True).returncode != 0:
        pytest.skip("unshare cannot make PID and network namespaces here (it needs root)")
    ray_tmp = tempfile.mkdtemp(prefix="nr", dir="/tmp")  # Ray's socket paths must stay short
    script = tmp_path / "recipe.sh"
    script.write_text(f"set -ex\nip link set lo up\ncd {tmp_path}\n{RECIPE}")
    try:
        done = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "--net", "bash", str(script)],
                              env={**_venv_path(), "RAY_TMPDIR": ray_tmp, "HOME": str(tmp_path)},  # a new token
                              capture_output=True, text=True, timeout=300)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "succeeded" in done.stdout + done.stderr  # ray job submit's last word on the job
    joined, submitted = (only_run(tmp_path / "runs", prefix=f"nasbench201-{name}-") for name in ("evolution", "random"))
    for run, address in ((joined, "127.0.0.1:6379"), (submitted, "auto")):
        start = events(run, "start")[0]
        assert start["ray_address"] == address and start["cluster_cpus"] == 3 and start["workers"] == 3
        assert sorted(r["trial"] for r in events(run, "result")) == list(range(6))
    assert f"# Run {submitted.name}" in done.stdout  # nasplat show printed the job's run
    assert {"arch.json", "model.onnx"} <= {p.name for p in (tmp_path / "model").iterdir()}
