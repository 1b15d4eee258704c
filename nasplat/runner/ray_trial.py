"""One trial as a Ray Tune function trainable: the worker's side of the Ray runner.

The trainable receives the search's fixed parts once (a job, which tune.with_parameters puts in Ray's
object store) and the trial in its config, runs `evaluate` as the local runner does, reports each epoch to
Tune (so that ASHA can stop it) and then the result. Reports carry JSON strings, which Tune passes on as
they are (it would flatten nested dicts), and the trained weights only where the trial may become the best.
A search answered from a table with nothing to measure first gets a `LookupJob` instead: the driver sends
each trial's table key, and the worker imports no more than Tune and the task need (no torch).
"""
from __future__ import annotations

import io
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..arch import Arch
from ..strategy import Result, Trial
from ..tasks.base import TabularTask, table_result

if TYPE_CHECKING:
    from torch import nn

    from ..constraints import Constraint
    from ..cost import CostModel
    from ..space import SearchSpace
    from ..tasks.base import Task

# keys of the reports, which Tune hands to the driver's searcher and callback
EPOCH = "nasplat_epoch"  # the epoch a report closes; ASHA's time attribute
METRICS = "nasplat_metrics"  # that epoch's metrics (JSON)
RESULT = "nasplat_result"  # the trial's Result (JSON); only the last report has it
WEIGHTS = "nasplat_weights"  # the trained state_dict (torch.save bytes) of a trial that may be the best
ROLL_CALL_SECONDS = 30.0  # the longest a worker's first result waits for another worker to start
ROLL_CALL = "nasplat-roll-call"  # Ray's key-value namespace where each worker of a search signs in
# how often a waiting worker counts the sign-ins: soon at first (two workers start within a second), then
# every half second (64 workers polling every 20 ms kept the GCS and the cores busy while the others started)
ROLL_CALL_FIRST_PAUSE = 0.01
ROLL_CALL_LAST_PAUSE = 0.5


@dataclass(frozen=True)
class TrialJob:
    """What every trial of one search shares. `key` is unique to the search: a worker keeps the job by it
    (`ShippedJob`)."""

    key: str
    space: SearchSpace
    task: Task | TabularTask
    constraints: Sequence[Constraint]
    epochs: int
    seed: int
    costs: CostModel
    metric: str  # the strategy's maximised metric: the one ASHA compares and the best is judged by
    threads: int  # torch threads per trial: the CPUs reserved for it
    workers: int  # trials at a time: the workers that sign in before the first results go back


@dataclass(frozen=True)
class LookupJob:
    """What the trials of a search answered from a table share where nothing is measured before the lookup
    (no constraint, no latency): the task alone. Each trial's config carries its table key, which the driver
    computes (`space.describe`), so that a worker loads neither the space, whose module may import torch to
    build networks, nor a cost model."""

    key: str  # unique to the search, as TrialJob's
    task: TabularTask
    workers: int


Job = TrialJob | LookupJob
_JOBS: dict[str, Job] = {}  # on a worker: the jobs of the searches it ran a trial of, by key
_SIGNED: set[str] = set()  # keys of the searches this worker has signed in for


class ShippedJob:
    """A job as tune.with_parameters hands it to the trainable: its key and the job, pickled once on the driver.

    Tune fetches and unpickles the parameters anew for every trial; this one unpickles to the job the worker
    kept from its first trial of the search, by key, and the job itself is unpickled once per worker. (At 64
    workers, unpickling NAS-Bench-201's table at every trial was 40% of a worker's time: 35 ms, against 3 ms
    to copy its pickle's bytes, and none to map them.) The kept job's caches (data loaded, images resized)
    serve all the worker's trials."""

    def __init__(self, job: Job):
        import numpy as np
        from ray import cloudpickle  # as Ray pickles: a task defined in the driver's script goes by value

        self.key = job.key
        # an array rather than bytes: Ray hands an array over without copying it (a pickle-5 buffer)
        self.payload = np.frombuffer(cloudpickle.dumps(job), dtype=np.uint8)

    def __reduce__(self) -> tuple[Any, tuple[str, Any]]:
        return _kept_job, (self.key, self.payload)


def _kept_job(key: str, payload: Any) -> Job:
    """The job of `key` this process kept, else the job in `payload`, kept from now on."""
    from ray import cloudpickle

    if key not in _JOBS:
        _JOBS[key] = cloudpickle.loads(payload)
    return _JOBS[key]


def search_job(key: str, *, space: SearchSpace, task: Task | TabularTask, constraints: Sequence[Constraint],
               epochs: int, seed: int, costs: CostModel, metric: str, threads: int, workers: int) -> Job:
    """The job of a search's trials: a LookupJob where each trial is a table lookup and nothing more."""
    from .trial import needs_costs

    if isinstance(task, TabularTask) and not needs_costs(constraints, costs):
        return LookupJob(key, task, workers)
    return TrialJob(key, space, task, tuple(constraints), epochs, seed, costs, metric, threads, workers)


def sign_in(job: Job) -> bool:
    """Signs this worker in for the search when it starts its first trial of it (True then). Signing in is a
    key in Ray's key-value store (the one Tune keeps its trainables in), so it holds across a cluster's nodes."""
    from ray import get_runtime_context
    from ray.experimental.internal_kv import _internal_kv_put

    if job.workers < 2 or job.key in _SIGNED:
        return False
    _SIGNED.add(job.key)
    _internal_kv_put(f"{job.key}:{get_runtime_context().get_worker_id()}", b"1", namespace=ROLL_CALL)
    return True


def wait_for_workers(job: Job) -> None:
    """Holds a worker's first result until all `job.workers` have started a trial, or until none has signed in
    for ROLL_CALL_SECONDS (workers that cannot start). Tune gives a finished trial's actor to the next pending
    trial, cancelling the start of that trial's own actor: trials that finish before the other workers are up
    would all run on the first ones, while Tune requests and cancels other actors at every trial (64 workers
    starting on 2 cores take two minutes; under a fixed 30 s hold, fewer than half of them ever ran a trial)."""
    from ray.experimental.internal_kv import _internal_kv_list

    signed, pause = 0, ROLL_CALL_FIRST_PAUSE
    deadline = time.monotonic() + ROLL_CALL_SECONDS
    while (count := len(_internal_kv_list(f"{job.key}:", namespace=ROLL_CALL))) < job.workers:
        if count > signed:
            signed, deadline = count, time.monotonic() + ROLL_CALL_SECONDS
        elif time.monotonic() >= deadline:
            return
        time.sleep(pause)
        pause = min(2 * pause, ROLL_CALL_LAST_PAUSE)


def forget_roll_call(key: str) -> None:
    """Deletes the search's sign-ins (on a cluster that outlives the search)."""
    from ray.experimental.internal_kv import _internal_kv_del

    _internal_kv_del(f"{key}:", del_by_prefix=True, namespace=ROLL_CALL)


def trial_config(trial: Trial, *, ship_above: float | None, key: str | None) -> dict[str, Any]:
    """A trial as Tune's config for it: the trainable ships the weights of an ok result scoring above
    `ship_above`, the best score when the trial was asked (None: always). A result at or below it cannot
    become the best, since the best only rises; the others cost one state_dict in the result. `key` is the
    table key of a LookupJob's trial (else None), which the worker answers without the Arch."""
    if key is not None:
        return {"trial": trial.id, "key": key}
    return {"trial": trial.id, "arch": trial.arch.to_json(), "ship_above": ship_above}


def run_trial(config: Mapping[str, Any], job: Job) -> None:
    """The function trainable. The last epoch's report goes with the result rather than before it: one
    round trip fewer, and a scheduler that stops trials at their last epoch cannot cut the result off."""
    from ray import tune

    first = sign_in(job)
    if isinstance(job, LookupJob):
        final = {RESULT: json.dumps(table_result(job.task, config["key"]).to_dict()), "done": True}
    else:
        final = _train(config, job)
    if first:
        wait_for_workers(job)
    tune.report(final)


def _train(config: Mapping[str, Any], job: TrialJob) -> dict[str, Any]:
    """Evaluates a TrialJob's trial, reporting each epoch but the last, and returns the final report."""
    import torch
    from ray import tune

    from .trial import evaluate

    torch.set_num_threads(job.threads)
    trial = Trial(int(config["trial"]), Arch.from_json(config["arch"]))
    last: dict[str, Any] = {}

    def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
        report = {EPOCH: epoch, METRICS: json.dumps(metrics), **({job.metric: metrics[job.metric]}
                                                                 if job.metric in metrics else {})}
        if epoch >= job.epochs:
            last.update(report)
        else:
            tune.report(report)

    outcome = evaluate(trial, space=job.space, task=job.task, constraints=job.constraints, epochs=job.epochs,
                       seed=job.seed, on_epoch=on_epoch, costs=job.costs)
    final = {**last, RESULT: json.dumps(outcome.result.to_dict()), "done": True}
    threshold = config.get("ship_above")
    result = outcome.result
    if outcome.model is not None and result.ok and (threshold is None or result.metrics[job.metric] > threshold):
        final[WEIGHTS] = _state_bytes(outcome.model)
    return final


def _state_bytes(model: nn.Module) -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buffer)
    return buffer.getvalue()


def load_model(space: SearchSpace, task: Task | TabularTask, arch: Arch, weights: bytes) -> nn.Module:
    """The trained model of a trial, rebuilt on the driver from the weights it shipped."""
    import torch

    model = space.build(arch, num_classes=task.num_classes)
    model.load_state_dict(torch.load(io.BytesIO(weights), weights_only=True))
    return model


def decode(result: Mapping[str, Any], *, epochs: int) -> Result | None:
    """The nasplat Result in a trial's last Tune result: its own, or, for a trial a scheduler stopped, the
    `stopped` Result with the metrics of the last epoch it reported. None when it reported nothing."""
    if RESULT in result:
        return Result.from_dict(json.loads(result[RESULT]))
    if EPOCH in result:
        epoch = int(result[EPOCH])
        return Result("stopped", {**json.loads(result[METRICS]), "epoch": epoch},
                      f"ASHA ended its training after epoch {epoch} of {epochs}")
    return None
