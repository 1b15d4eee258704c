"""What every runner builds from a SearchConfig: the space, the task, the strategy; and the best bundle."""
from __future__ import annotations

import inspect
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..arch import Arch
from ..cost import CostModel
from ..cost.latency import LatencyPlan, Protocol, fingerprint
from ..errors import UserError
from ..registry import SPACES, STRATEGIES, TASKS, Registry
from ..tasks.base import TabularTask

COST_METRICS = ("macs", "params", "fp_macs", "bops", "size_bits", "latency", "latency_predicted")  # what a bundle's "costs" hold

if TYPE_CHECKING:
    from rich.console import Console
    from torch import nn

    from ..run import RunDir, SearchConfig
    from ..constraints import Constraint
    from ..cost.device_table import DeviceTable
    from ..space import SearchSpace
    from ..strategy import Result, Strategy, Trial
    from ..tasks.base import Task


@dataclass
class Components:
    space: SearchSpace
    task: Task | TabularTask
    strategy: Strategy
    epochs: int
    costs: CostModel


def build_costs(config: SearchConfig, space: SearchSpace) -> CostModel:
    """The search's cost model: fvcore MACs and params (left out for a task answered from a table where
    nothing asks for them), and latency where a constraint or an objective needs it: measured on the
    configured device (predicted by --lut before training, after a check that the table was made on this kind
    of device), or read from a device's table column or a fitted predictor."""
    counts = not _tabular(config, space) or bool({"macs", "params"} & ({c.metric for c in config.constraints}
                                                                       | set(config.objectives)))
    if config.device_table is not None:
        device = device_table(space, column=config.device_table["column"], path=config.device_table.get("path"),
                              task=config.task, task_options=config.task_options)
        device.check_space(space)
        return CostModel(latency=LatencyPlan(None, device), counts=counts)
    if config.predictor is not None:
        from ..cost.predictor import LatencyPredictor

        predictor = LatencyPredictor.load(config.predictor, space=space)
        return CostModel(latency=LatencyPlan(None, predictor), counts=counts)
    if config.latency is None:
        return CostModel(counts=counts)
    protocol = Protocol.from_dict(config.latency)
    table = None
    if config.lut:
        from ..cost.lut import LatencyTable

        table = LatencyTable.load(config.lut)
        table.check(protocol)
        table.check_space(space)
        table.calibration  # noqa: B018 - an unfinished build raises here, before the search starts
    elif not protocol.remote:
        fingerprint(protocol)  # fails now, with one line, for a device this machine lacks (cuda without a GPU)
    return CostModel(latency=LatencyPlan(protocol, table), counts=counts)


def _tabular(config: SearchConfig, space: SearchSpace) -> bool:
    return issubclass(TASKS.get(config.task or space.default_task), TabularTask)


def latency_limit(text: str | float, *, space: str, space_options: Mapping[str, Any] | None = None,
                  table: Mapping[str, Any] | None = None, task: str | None = None,
                  task_options: Mapping[str, Any] | None = None) -> Constraint:
    """A latency limit as given: time ("5ms"), or "pNN", the NN-th percentile of the device table's column
    (`table`: {"column", "path"}, as SearchConfig.device_table holds it)."""
    from ..constraints import Constraint
    from ..cost.device_table import parse_percentile

    q = parse_percentile(text) if isinstance(text, str) else None
    if q is None:
        return Constraint.parse("latency", text)
    if table is None:
        raise UserError(f"--latency {text} is a percentile of a device's latency table: give --device "
                        f"table:COLUMN too, or a limit in time units such as 5ms")
    found = device_table(create(SPACES, space, space_options or {}), column=table["column"], path=table.get("path"),
                         task=task, task_options=task_options)
    return Constraint("latency", found.percentile(q))


def device_table(space: SearchSpace, *, column: str, path: str | Path | None = None, task: str | None = None,
                 task_options: Mapping[str, Any] | None = None) -> DeviceTable:
    """The device of `--device table:COLUMN`: that column of `path` (--latency-table), by default of the table
    the search answers from where it has the column, else of the latency table the space ships."""
    from ..cost.device_table import DeviceTable, default_table

    if path is None:
        name = task or space.default_task
        searched = None
        if issubclass(TASKS.get(name), TabularTask):
            defaults = space.default_task_options if name == space.default_task else {}
            searched = getattr(create(TASKS, name, {**defaults, **(task_options or {})}), "table", None)
        path = default_table(space, searched.path if searched is not None else None, column=column)
    return DeviceTable.open(path, column)


COMMON_OPTIONS = frozenset({"seed", "constraints", "initial", "workdir", "objectives", "costs"})  # set by the runner


def check_options(registry: Registry[Any], name: str, options: Mapping[str, Any], *, fixed: Any = ()) -> type:
    """The plug-in class, after checking that it takes every one of the user's `options` (--space-option,
    --strategy-option, --task-option): one that it does not take is reported as one line naming those it does."""
    cls = registry.get(name)
    taken = _keywords(cls)
    unknown = sorted(set(options) - taken) if taken is not None else []
    if unknown:
        flag = {"search space": "--space-option", "strategy": "--strategy-option", "task": "--task-option"}
        raise UserError(f"{registry.kind} {name!r} takes no option {', '.join(map(repr, unknown))} "
                        f"({flag.get(registry.kind, 'option')}); it takes: "
                        f"{', '.join(sorted(taken - set(fixed) - COMMON_OPTIONS)) or 'none'}")
    return cls


def create(registry: Registry[Any], name: str, options: Mapping[str, Any], *args: Any, **fixed: Any) -> Any:
    """registry.create(name, *args, **fixed, **options), the options checked first (`check_options`)."""
    return check_options(registry, name, options, fixed=fixed)(*args, **fixed, **options)


def _keywords(cls: type) -> set[str] | None:
    """The keyword arguments a class's constructor chain accepts (None when it takes any)."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        names |= {p.name for p in params if p.kind == p.KEYWORD_ONLY}
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            return names
    return None


def user_options(cls: type) -> set[str]:
    """The options a user may set on a plug-in with --space/--strategy/--task-option."""
    return (_keywords(cls) or set()) - COMMON_OPTIONS


def create_space(config: SearchConfig) -> SearchSpace:
    return create(SPACES, config.space, config.space_options)


def build_task(config: SearchConfig, space: SearchSpace) -> Task | TabularTask:
    """The search's task; the space's own defaults for its default task (binary cells train at 32 px)."""
    name = config.task or space.default_task
    defaults = space.default_task_options if name == space.default_task else {}
    return create(TASKS, name, {**defaults, **config.task_options})


def build_components(config: SearchConfig, run: RunDir | None, *, space: SearchSpace | None = None,
                     task: Task | None = None, costs: CostModel | None = None) -> Components:
    """`space`, `task` and `costs` may come prebuilt (the API builds them first to reject bad input early)."""
    space = space or create_space(config)
    task = task or build_task(config, space)
    costs = costs or build_costs(config, space)
    strategy = create(STRATEGIES, config.strategy, config.strategy_options, space, seed=config.seed,
                      constraints=config.constraints, initial=config.initial, workdir=run.path if run else None,
                      objectives=config.objectives, costs=costs)
    epochs = config.epochs if config.epochs is not None else task.default_epochs
    return Components(space, task, strategy, epochs, costs)


def _export_failed(run: RunDir, console: Console, exc: Exception, **fields: Any) -> None:
    run.append({"event": "export_failed", **fields, "error": f"{type(exc).__name__}: {exc}"})
    console.print(f"[red]could not export to {run.best}: {exc}[/]")


def export_best(run: RunDir, comp: Components, trial: Trial, result: Result, model: nn.Module | None, *,
                console: Console) -> None:
    """Replaces best/ with the new best trial's architecture and trained weights (TorchScript and ONNX,
    which take seconds, are written once by finish_best); a failed export is reported, not fatal.

    A trial answered from a table has no model: its bundle is arch.json alone, at the target configuration
    (`nasplat.load(run, target=True)` builds the untrained network)."""
    from ..export import export_bundle

    costs = {k: v for k, v in result.metrics.items() if k in COST_METRICS}
    metrics: dict[str, Any] = {k: v for k, v in result.metrics.items() if k not in costs}
    if model is None:
        target = comp.space.target(trial.arch)
        shape, classes = target.input_shape, target.num_classes
    else:
        size = int(result.metrics["input_size"])
        shape, classes = (1, 3, size, size), comp.task.num_classes
    try:
        export_bundle(model, trial.arch, comp.space, out=run.best, costs=costs, input_shape=shape,
                      num_classes=classes, metrics={**metrics, **result.held_out, "trial": trial.id},
                      formats=("json", "weights") if model is not None else ("json",), trained=model is not None,
                      latency=latency_record(comp))
    except Exception as exc:  # the search result is in the journal either way
        _export_failed(run, console, exc, trial=trial.id)


def finish_best(run: RunDir, *, console: Console) -> None:
    """Completes best/ with the verified conversions of its trained model that the run's --export names
    (TorchScript and ONNX by default; a bundle without weights, from a tabular search, has no model to convert)."""
    from ..export import export_run, read_bundle

    formats = run.config().export
    if not formats or not (run.best / "arch.json").exists() or not read_bundle(run.best)["files"]:
        return
    try:
        export_run(run.best, out=run.best, formats=("json", "weights", *formats))
    except Exception as exc:
        _export_failed(run, console, exc)


def latency_record(comp: Components) -> dict[str, Any]:
    """How the run's latencies are known, for the journal's start event and the bundles: the protocol and
    the fingerprint of the machine that measures (for a ray: device, the resource names it), and the table
    or predictor that predicts or gives them."""
    plan = comp.costs.latency
    if plan is None:
        return {}
    record: dict[str, Any] = {}
    if plan.protocol is not None:
        record["latency_protocol"] = plan.protocol.to_dict()
        if not plan.protocol.remote:
            record["latency_fingerprint"] = fingerprint(plan.protocol)
    if plan.confirmed:
        lut = plan.predictor
        record["latency_table"] = {"path": str(lut.path), "machine": lut.describe_machine(),
                                   **{k: lut.calibration[k] for k in ("method", "scale", "offset_ms")}}
    elif plan.predictor is not None:
        record["latency_source"] = plan.predictor.describe()
    return record


def write_front(run: RunDir, comp: Components, *, console: Console) -> list[int]:
    """report/pareto/: one arch.json bundle (at the target configuration) per architecture on the front of
    the run's objectives, and front.json listing them; returns their trial ids."""
    from ..export import export_bundle
    from ..report import pareto_front, trial_results
    from ..files import write_atomic

    objectives = comp.strategy.objectives
    front = pareto_front(trial_results(run.events()), objectives=objectives)
    folder = run.path / "report" / "pareto"
    folder.mkdir(parents=True, exist_ok=True)
    listed = []
    for result in front:
        arch = Arch.from_dict(result["arch"])
        target = comp.space.target(arch)
        metrics = result["metrics"]
        try:
            export_bundle(None, arch, comp.space, out=folder / f"trial-{result['trial']}",
                          costs={k: v for k, v in metrics.items() if k in COST_METRICS},
                          input_shape=target.input_shape, num_classes=target.num_classes,
                          metrics={k: v for k, v in metrics.items() if k not in COST_METRICS},
                          formats=("json",), trained=False, latency=latency_record(comp))
        except Exception as exc:
            _export_failed(run, console, exc, trial=result["trial"])
        listed.append({"trial": result["trial"], "bundle": f"trial-{result['trial']}",
                       **{o: metrics[o] for o in objectives}})
    write_atomic(folder / "front.json", json.dumps({"objectives": list(objectives), "front": listed}, indent=1))
    return [r["trial"] for r in front]
