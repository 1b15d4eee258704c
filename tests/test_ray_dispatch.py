"""The Ray runner's trials answered from a table: a LookupJob, whose workers import no torch and answer as the
local runner does; and which searches get one."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from nasplat.constraints import Constraint
from nasplat.cost import CostModel
from nasplat.registry import SPACES, TASKS
from nasplat.runner.ray_trial import LookupJob, TrialJob, search_job, trial_config
from nasplat.strategy import Trial

# a driver script, as users run one: its task, defined in __main__, reaches the workers by value
SEARCH = textwrap.dedent('''
    import json, sys
    import torch  # noqa: F401 - in the driver, so that the probe is seen to tell the processes apart
    from rich.console import Console
    from nasplat import api
    from nasplat.registry import TASKS, register_task
    from nasplat.run import SearchConfig, read_journal
    from nasplat.tasks.base import Answer

    class Probed(TASKS.get("nasbench201")):
        """NAS-Bench-201's table; each answer also reports whether its process has imported torch."""

        def query(self, key):
            answer = super().query(key)
            return Answer(answer.signal, {**answer.reported, "torch_imported": float("torch" in sys.modules)})

    register_task("probed")(Probed)
    found = {}
    for runner, extra in (("local", {}), ("ray", {"runner": "ray", "workers": 2})):
        config = SearchConfig(space="nasbench201", task="probed", strategy="random", trials=6, seed=3,
                              out=sys.argv[1] + "/" + runner, **extra)
        outcome = api.start(config, console=Console(quiet=True), report=False)
        found[runner] = [e for e in read_journal(outcome.run.path / "journal.jsonl") if e["event"] == "result"]
    print(json.dumps(found))
''')


def test_a_table_backed_ray_trial_imports_no_torch_and_answers_as_the_local_runner(tmp_path: Path) -> None:
    script = tmp_path / "search.py"
    script.write_text(SEARCH)
    done = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    local, on_ray = ({r["trial"]: r for r in found[runner]} for runner in ("local", "ray"))
    assert sorted(on_ray) == list(range(6))
    assert all(r["held_out"]["torch_imported"] == 0.0 for r in on_ray.values())
    assert all(r["held_out"]["torch_imported"] == 1.0 for r in local.values())
    for trial, result in local.items():  # random search, one seed: the same trials, wherever they ran
        theirs = on_ray[trial]
        assert (theirs["arch"], theirs["status"], theirs["metrics"]) == \
            (result["arch"], result["status"], result["metrics"])


def test_a_lookup_job_where_the_table_answers_alone() -> None:
    space, table = SPACES.get("nasbench201")(), TASKS.get("nasbench201")()
    common = {"space": space, "epochs": 12, "seed": 0, "metric": "accuracy", "threads": 1, "workers": 2}
    job = search_job("k", task=table, constraints=[], costs=CostModel(counts=False), **common)
    assert isinstance(job, LookupJob) and job.task is table
    # a constraint needs the costs first, and a trained task the space: the whole job
    assert isinstance(search_job("k", task=table, constraints=[Constraint("params", 1e6)], costs=CostModel(),
                                 **common), TrialJob)
    assert isinstance(search_job("k", task=TASKS.get("classification")(), constraints=[], costs=CostModel(),
                                 **common), TrialJob)
    trial = Trial(7, space.smallest())
    assert trial_config(trial, ship_above=None, key=space.describe(trial.arch)) == \
        {"trial": 7, "key": space.describe(trial.arch)}
    assert trial_config(trial, ship_above=1.0, key=None) == \
        {"trial": 7, "arch": trial.arch.to_json(), "ship_above": 1.0}
