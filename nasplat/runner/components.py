"""What every runner builds from a SearchConfig: the space, the task, the strategy; and the best bundle."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..registry import SPACES, STRATEGIES, TASKS

if TYPE_CHECKING:
    from rich.console import Console
    from torch import nn

    from ..run import RunDir, SearchConfig
    from ..space import SearchSpace
    from ..strategy import Result, Strategy, Trial
    from ..tasks.base import TabularTask, Task


@dataclass
class Components:
    space: SearchSpace
    task: Task | TabularTask
    strategy: Strategy
    epochs: int


def build_task(config: SearchConfig, space: SearchSpace) -> Task | TabularTask:
    name = config.task or space.default_task
    try:
        return TASKS.create(name, **config.task_options)
    except TypeError as exc:  # an option the task does not take
        raise ValueError(f"task {name!r} does not take the options {sorted(config.task_options)} ({exc})") from None


def build_components(config: SearchConfig, run: RunDir | None, *, space: SearchSpace | None = None,
                     task: Task | None = None) -> Components:
    """`space` and `task` may come prebuilt (the API builds them first to reject bad input early)."""
    space = space or SPACES.create(config.space, **config.space_options)
    task = task or build_task(config, space)
    strategy = STRATEGIES.create(config.strategy, space, seed=config.seed, constraints=config.constraints,
                                 initial=config.initial, workdir=run.path if run else None,
                                 **config.strategy_options)
    epochs = config.epochs if config.epochs is not None else task.default_epochs
    return Components(space, task, strategy, epochs)


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

    costs = {k: v for k, v in result.metrics.items() if k in ("macs", "params")}
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
                      formats=("json", "weights") if model is not None else ("json",), trained=model is not None)
    except Exception as exc:  # the search result is in the journal either way
        _export_failed(run, console, exc, trial=trial.id)


def finish_best(run: RunDir, *, console: Console) -> None:
    """Completes best/ with the verified TorchScript and ONNX exports of its trained model (a bundle without
    weights, from a tabular search, has no model to convert)."""
    from ..export import export_run, read_bundle

    if not (run.best / "arch.json").exists() or not read_bundle(run.best)["files"]:
        return
    try:
        export_run(run.best, out=run.best)
    except Exception as exc:
        _export_failed(run, console, exc)
