"""The Ray runner: the same search as the local runner, with its trials run in parallel by Ray Tune.

A Searcher adapter asks and tells the strategy (`ray_searcher`); each trial is a function trainable that
calls `evaluate` and reports every epoch (`ray_trial`); `--scheduler asha` lets Tune's ASHA stop
unpromising trials at an epoch; a trial whose worker dies (or whose node is lost) is retried through Tune's
FailureConfig, and the journal's `retry` event says why (`ray_searcher.last_failure`). The driver
journals each result as it arrives and snapshots the strategy at every ask (`driver`), so the run directory
stays the single record: a driver killed with kill -9 resumes with `--resume` and neither loses nor repeats
a finished trial. Tune's own experiment folder is scratch (a temporary directory, removed at the end);
nasplat never restores from it (Tune's restore has lost searcher state before: ray#30861).

Settings for low overhead per trial: actors reused between trials, no auto-loggers, no progress output,
no checkpoints, one result report per epoch with the last one carrying the result, and each worker's first
result held until all the workers have started (`ray_trial.wait_for_workers`: otherwise short trials all
run on the first worker while Tune requests and cancels the others); bench/ray_dispatch.py measures them.
"""
from __future__ import annotations

import secrets
import shutil
import tempfile
from typing import TYPE_CHECKING

from rich.console import Console

from ..errors import UserError
from ..run import RunDir, SearchConfig
from ..tasks.base import TabularTask
from .components import Components, build_components
from .driver import Driver, SearchOutcome
from .ray_cluster import RaySession, environment, ray_session
from .ray_trial import EPOCH, LookupJob, ShippedJob, forget_roll_call, run_trial, search_job

if TYPE_CHECKING:
    from ..tasks.base import Task

# Tune reads these from the environment while it runs; set for the search only, then restored
TUNE_ENV = {
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",  # no CSV, JSON and TensorBoard files per result
    "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1",  # an infeasible trial reports no accuracy for ASHA
    "TUNE_DISABLE_SIGINT_HANDLER": "1",  # Ctrl-C raises KeyboardInterrupt, as in the local runner
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    "TUNE_GLOBAL_CHECKPOINT_S": "1000000000",  # Tune's experiment snapshots: nasplat resumes from its own
    "RAY_AIR_NEW_OUTPUT": "0",
}


def check_ray_options(config: SearchConfig, task: Task | TabularTask) -> None:
    """Input errors of a Ray search that need its task, found before anything is written."""
    if config.scheduler == "asha" and isinstance(task, TabularTask):
        raise UserError(f"--scheduler asha stops training at an epoch, and task {task.name!r} answers from a "
                         "table without training; leave --scheduler out")


def run_search_ray(run: RunDir, *, resume: bool = False, console: Console | None = None,
                   components: Components | None = None, report: bool = True,
                   session: RaySession | None = None) -> SearchOutcome:
    """Runs the search on Ray Tune, `session.workers` trials at a time. Without a `session` it connects
    (or starts Ray) as the run's config says, and disconnects at the end; api.start connects first, so that
    an unreachable cluster leaves no run folder behind."""
    console = console or Console(stderr=True)
    if session is None:
        config = run.config()
        with ray_session(address=config.ray_address, workers=config.workers, cpus_per_trial=config.cpus_per_trial,
                         gpus_per_trial=config.gpus_per_trial, console=console) as opened:
            return run_search_ray(run, resume=resume, console=console, components=components, report=report,
                                  session=opened)
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from .ray_searcher import StrategySearcher, TuneEvents

    config = run.config()
    comp = components or build_components(config, run)
    check_ray_options(config, comp.task)
    driver = Driver(run, resume=resume, console=console, components=comp, record=session.describe())
    job = search_job(secrets.token_hex(8), space=comp.space, task=comp.task, constraints=config.constraints,
                     epochs=comp.epochs, seed=config.seed, costs=comp.costs, metric=comp.strategy.metric,
                     threads=max(1, int(config.cpus_per_trial)),  # a worker no trial needs never signs in:
                     workers=min(session.workers, config.trials or session.workers))
    events = TuneEvents(driver)
    searcher = StrategySearcher(driver, events, lookups=isinstance(job, LookupJob))
    scheduler = ASHAScheduler(time_attr=EPOCH, metric=comp.strategy.metric, mode="max", max_t=comp.epochs) \
        if config.scheduler == "asha" else None
    trainable = tune.with_resources(tune.with_parameters(run_trial, job=ShippedJob(job)),
                                    {"cpu": config.cpus_per_trial, "gpu": config.gpus_per_trial})
    scratch = tempfile.mkdtemp(prefix="nasplat-tune-")
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=-1,
                                    max_concurrent_trials=session.workers, reuse_actors=True,
                                    trial_dirname_creator=lambda t: t.trial_id),
        run_config=tune.RunConfig(name="tune", storage_path=scratch, verbose=0, callbacks=[events],
                                  failure_config=tune.FailureConfig(max_failures=config.max_retries),
                                  checkpoint_config=tune.CheckpointConfig(checkpoint_at_end=False)))
    progress = driver.start_progress(total=config.trials, completed=driver.trained,
                                     suffix=f" (ray, {session.workers} workers)")
    reason = "done"
    try:
        with progress, environment({**TUNE_ENV, "TUNE_MAX_PENDING_TRIALS_PG": str(session.workers)}):
            tuner.fit()
        if searcher.crash is not None:
            raise searcher.crash
        reason = searcher.reason
    except KeyboardInterrupt:
        reason = driver.interrupted()
    finally:
        forget_roll_call(job.key)
        shutil.rmtree(scratch, ignore_errors=True)
    return driver.finish(reason, report=report)
