"""One trial, wherever it runs: measure cost, reject early, build, train on the proxy (or look the
architecture up in a tabular task's table), report."""
from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..constraints import Constraint, violations
from ..cost import measure
from ..strategy import Result, Trial
from ..tasks.base import TabularTask

if TYPE_CHECKING:
    from torch import nn

    from ..arch import Arch
    from ..space import SearchSpace
    from ..tasks.base import EpochCallback, Task


@dataclass(frozen=True)
class Outcome:
    result: Result
    model: nn.Module | None  # the trained model of an ok trial, for the best bundle


def _costs(space: SearchSpace, arch: Arch, constraints: Sequence[Constraint]) -> dict[str, float] | Result:
    """The measured costs, or the Result of an Arch that cannot be measured or breaks a constraint."""
    try:
        costs = measure(space, arch)
    except Exception as exc:  # a space that cannot build this Arch: record it, keep searching
        return Result("failed", {}, f"cost measurement: {type(exc).__name__}: {exc}")
    broken = violations(constraints, costs)
    return Result("infeasible", costs, "; ".join(broken)) if broken else costs


def look_up(arch: Arch, *, space: SearchSpace, task: TabularTask, constraints: Sequence[Constraint]) -> Result:
    """A tabular task's answer: the signal as "accuracy", the reported columns held out from the strategy.

    Costs are measured only where constraints need them: a lookup takes microseconds and building the model
    to count its MACs would take the whole time of a benchmark."""
    costs: dict[str, float] = {}
    if constraints:
        checked = _costs(space, arch, constraints)
        if isinstance(checked, Result):
            return checked
        costs = checked
    try:
        answer = task.query(space.describe(arch))
    except (LookupError, ValueError) as exc:
        return Result("failed", costs, str(exc.args[0]) if exc.args else type(exc).__name__)
    if not math.isfinite(answer.signal):
        return Result("failed", costs, "the table's signal is not finite (NaN or inf)", dict(answer.reported))
    return Result("ok", {**costs, "accuracy": answer.signal}, held_out=dict(answer.reported))


def evaluate(trial: Trial, *, space: SearchSpace, task: Task | TabularTask, constraints: Sequence[Constraint],
             epochs: int, seed: int, on_epoch: EpochCallback | None = None) -> Outcome:
    """Costs are measured at the target configuration and checked before any training; the proxy trains at
    round(proxy_scale x base resolution). A trial that raises or yields NaN is `failed`, not fatal. A
    tabular task answers from its table instead (`look_up`), with no model."""
    if isinstance(task, TabularTask):
        return Outcome(look_up(trial.arch, space=space, task=task, constraints=constraints), None)
    start = time.perf_counter()
    costs = _costs(space, trial.arch, constraints)
    if isinstance(costs, Result):
        return Outcome(costs, None)
    input_size = task.input_size(space.proxy_scale(trial.arch))
    try:
        model = space.build(trial.arch, num_classes=task.num_classes)
        metrics = task.train_eval(model, input_size=input_size, epochs=epochs, seed=seed + trial.id,
                                  on_epoch=on_epoch)
    except Exception as exc:
        return Outcome(Result("failed", {**costs, "input_size": input_size}, f"{type(exc).__name__}: {exc}"),
                       None)
    if not all(math.isfinite(float(v)) for v in metrics.values()):
        return Outcome(Result("failed", {**costs, **metrics}, "metrics are not finite (NaN or inf)"), None)
    metrics = {**costs, **metrics, "input_size": input_size, "seconds": round(time.perf_counter() - start, 2)}
    return Outcome(Result("ok", metrics), model)
