"""Trains a run's best architecture from scratch and records the result in the run."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .arch import Arch
from .errors import UserError
from .export import export_bundle, read_bundle
from .registry import SPACES
from .run import RunDir
from .runner.components import build_task
from .tasks.base import TabularTask

if TYPE_CHECKING:
    from pathlib import Path

    from rich.console import Console


def retrain(run_dir: str | Path, *, epochs: int, data: str | None = None, seed: int = 0,
            console: Console | None = None) -> dict[str, Any]:
    """Fresh weights, `epochs` epochs on the run's task (or `data`); writes <run>/retrained/ and a journal event."""
    run = RunDir.open(run_dir)
    config = run.config()
    info = read_bundle(run.best)
    arch = Arch.from_dict(info["arch"])
    space = SPACES.create(config.space, **config.space_options)
    if data:
        config.task_options = {**config.task_options, "data": data}
    task = build_task(config, space)
    if isinstance(task, TabularTask):
        raise UserError(f"run {run.path} was answered from a table (task {task.name!r}), which trains nothing; "
                        f"`nasplat export {run.path} --target --out DIR` gives its untrained network")
    model = space.build(arch, num_classes=task.num_classes)
    size = task.input_size(space.proxy_scale(arch))

    def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
        run.append({"event": "retrain_epoch", "epoch": epoch, "metrics": metrics})
        if console:
            console.print(f"retrain epoch {epoch}/{epochs}: " + "  ".join(f"{k} {v:.4g}" for k, v in metrics.items()))

    metrics = task.train_eval(model, input_size=size, epochs=epochs, seed=seed, on_epoch=on_epoch)
    bundle = run.path / "retrained"
    export_bundle(model, arch, space, out=bundle, costs=info["costs"], input_shape=(1, 3, size, size),
                  num_classes=task.num_classes, metrics=metrics)
    run.append({"event": "retrain", "epochs": epochs, "data": config.task_options.get("data", "default"),
                "seed": seed, "metrics": metrics})
    from .report import write_report

    write_report(run.path)
    return {**metrics, "bundle": str(bundle)}
