"""The CLI's verbs as functions: nasplat.search(...), nasplat.resume(...), nasplat.load(...), ..."""
from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from .constraints import FLAGS, METRICS, Constraint, format_metric
from .cost import CostModel, measure
from .errors import UserError
from .registry import STRATEGIES
from .run import CONVERTED, DEFAULT_REPEATED_FAILURES, RunDir, SearchConfig, default_trials
from .runner.budget import check_budget
from .runner.components import build_components, build_costs, build_task, check_options, create_space, \
    latency_limit
from .runner.local import SearchOutcome, run_search
from .space import SearchSpace
from .units import parse_time


def _check_budgets(space: SearchSpace, constraints: Sequence[Constraint], costs: CostModel) -> None:
    """A budget that not even the smallest architecture meets is an input error, not an empty search."""
    if not constraints:
        return
    smallest = space.smallest()
    found = costs(space, smallest)
    for c in constraints:
        if not c.holds(found):
            value = format_metric(c.metric, found[c.metric])
            raise UserError(f"{FLAGS[c.metric]} {format_metric(c.metric, c.limit)} is below the smallest "
                            f"{space.name} architecture ({space.describe(smallest).split(' | ')[0]}: "
                            f"{METRICS[c.metric]} {value}); give at least {value}")


def _check_one_shot(config: SearchConfig) -> None:
    if config.trials != 1:
        raise UserError(f"strategy {config.strategy!r} trains a supernet and derives one architecture: it evaluates "
                        f"exactly one trial (leave out --trials, or give --trials 1)")
    if config.runner != "local" or config.budget is not None:
        raise UserError(f"strategy {config.strategy!r} trains one supernet in one process: run it with the local "
                        f"runner and without a simulated --budget")


def start(config: SearchConfig, *, console: Console | None = None, sync: bool = True,
          report: bool = True) -> SearchOutcome:
    """Validates the configuration (before anything is written), creates runs/<id>/ and searches.

    `sync=False` and `report=False` suit searches that are cheap to redo, such as a benchmark's table
    lookups (see RunDir and run_search)."""
    space = create_space(config)
    strategy = check_options(STRATEGIES, config.strategy, config.strategy_options)
    strategy.takes(config.objectives)
    strategy.check_space(space)
    if strategy.one_shot:
        _check_one_shot(config)
    task = build_task(config, space)
    check_budget(config.budget, task)
    costs = build_costs(config, space)
    _check_budgets(space, config.constraints, costs)
    if config.runner == "ray":
        from .runner.ray import check_ray_options, run_search_ray
        from .runner.ray_cluster import ray_session

        check_ray_options(config, task)
        with ray_session(address=config.ray_address, workers=config.workers, cpus_per_trial=config.cpus_per_trial,
                         gpus_per_trial=config.gpus_per_trial, console=console or Console(stderr=True)) as session:
            run = RunDir.create(config, sync=sync)  # after Ray answered: a cluster that did not leaves nothing
            components = build_components(config, run, space=space, task=task, costs=costs)
            return run_search_ray(run, console=console, components=components, report=report, session=session)
    run = RunDir.create(config, sync=sync)
    components = build_components(config, run, space=space, task=task, costs=costs)
    return run_search(run, console=console, components=components, report=report)


def search(space: str, *, strategy: str = "bayesian", flops: str | float | None = None,
           params: str | float | None = None, latency: str | float | None = None,
           objectives: Sequence[str] = ("accuracy",), latency_protocol: dict[str, Any] | None = None,
           lut: str | Path | None = None, device_table: str | None = None, latency_table: str | Path | None = None,
           predictor: str | Path | None = None, trials: int | None = None, epochs: int | None = None,
           timeout: float | None = None, budget: str | float | None = None, seed: int = 0,
           out: str | Path = "runs", task: str | None = None, data: str | None = None,
           initial: Sequence[dict[str, Any]] = (), strategy_options: dict[str, Any] | None = None,
           space_options: dict[str, Any] | None = None, task_options: dict[str, Any] | None = None,
           runner: str = "local", workers: int | None = None, ray_address: str | None = None,
           scheduler: str | None = None, cpus_per_trial: float = 1.0, gpus_per_trial: float = 0.0,
           max_retries: int = 2, export: Sequence[str] = CONVERTED,
           max_repeated_failures: int = DEFAULT_REPEATED_FAILURES, console: Console | None = None) -> SearchOutcome:
    """Runs a search and returns its outcome; `nasplat search` with the same arguments does the same.

    `trials` defaults to 8, or, under a simulated `budget` ("12000s"), to as many as the budget allows.
    `latency` ("5ms") is measured as `latency_protocol` says (a nasplat.cost.latency.Protocol as a dict:
    device, runtime, batch, threads; CPU, torch, batch 1, one thread by default), or read: from the column
    `device_table` of `latency_table` (as `--device table:COLUMN`; "p25" is then the column's 25th
    percentile), or from a fitted `predictor` file (`nasplat latency fit`). `runner="ray"` runs
    `workers` trials at a time on Ray Tune (see nasplat.runner.ray), on a Ray instance started for the
    search or on the cluster at `ray_address`. `export` names best/'s conversions of the trained model
    ("torchscript", "onnx"; none: arch.json and the weights only). When `max_repeated_failures` trials in a
    row raise the same exception, the search stops and raises nasplat.runner.driver.RepeatedFailure (0: never).
    """
    constraints = [Constraint.parse(m, v) for m, v in (("macs", flops), ("params", params)) if v is not None]
    table = {"column": device_table, "path": str(latency_table) if latency_table else None} if device_table else None
    if latency is not None:
        constraints.append(latency_limit(latency, space=space, space_options=space_options, table=table, task=task,
                                         task_options=task_options))
    seconds = parse_time(budget, what="budget") if budget is not None else None
    trials = trials if trials is not None else default_trials(strategy, budget=seconds)
    config = SearchConfig(space=space, strategy=strategy, task=task, constraints=constraints, trials=trials,
                          epochs=epochs, timeout=timeout, budget=seconds, seed=seed, out=str(out),
                          initial=list(initial),
                          space_options=dict(space_options or {}), strategy_options=dict(strategy_options or {}),
                          task_options={**(task_options or {}), **({"data": data} if data else {})},
                          objectives=list(objectives), latency=latency_protocol, lut=str(lut) if lut else None,
                          device_table=table, predictor=str(predictor) if predictor else None,
                          runner=runner, workers=workers, ray_address=ray_address, scheduler=scheduler,
                          cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial, max_retries=max_retries,
                          export=list(export), max_repeated_failures=max_repeated_failures)
    return start(config, console=console)


def resume(run_dir: str | Path, *, console: Console | None = None) -> SearchOutcome:
    """Continues a killed or interrupted run on the runner it was started with: finished trials are kept,
    in-flight ones rerun with the same Arch."""
    run = RunDir.open(run_dir)
    if run.config().runner == "ray":
        from .runner.ray import run_search_ray

        return run_search_ray(run, resume=True, console=console)
    return run_search(run, resume=True, console=console)


@dataclass(frozen=True)
class DryRun:
    space_size: float
    parameters: dict[str, str]
    macs_range: tuple[float, float]
    params_range: tuple[float, float]
    feasible_share: float
    smallest: dict[str, float]
    seconds_per_trial: float | None  # None when the task cannot estimate its training time


def dry_run(config: SearchConfig, *, samples: int = 8) -> DryRun:
    """What a search would face, without training: space size, cost range of random samples, feasibility."""
    space = create_space(config)
    cost_model = build_costs(config, space)
    _check_budgets(space, config.constraints, cost_model)
    rng = random.Random(config.seed)
    archs = [space.complete(space.sample(rng), constraints=config.constraints, costs=cost_model)
             for _ in range(samples)]
    costs = [cost_model(space, arch) for arch in archs]
    feasible = [a for a, x in zip(archs, costs) if all(c.holds(x) for c in config.constraints)]
    task = build_task(config, space)
    seconds = None
    if hasattr(task, "estimate_seconds"):  # trained trials only: infeasible ones are rejected before training
        arch = feasible[0] if feasible else space.smallest()
        seconds = task.estimate_seconds(space.build(arch, num_classes=task.num_classes),
                                        input_size=task.input_size(space.proxy_scale(arch)),
                                        epochs=config.epochs or task.default_epochs)
    return DryRun(space.size(), {k: str(p) for k, p in space.parameters().items()},
                  (min(x["macs"] for x in costs), max(x["macs"] for x in costs)),
                  (min(x["params"] for x in costs), max(x["params"] for x in costs)),
                  len(feasible) / samples, measure(space, space.smallest()), seconds)
