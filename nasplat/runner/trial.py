"""One trial, wherever it runs: measure cost, reject early, build, train on the proxy, report."""
from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..constraints import Constraint, violations
from ..cost import measure
from ..strategy import Result, Trial

if TYPE_CHECKING:
    from torch import nn

    from ..space import SearchSpace
    from ..tasks.base import EpochCallback, Task


@dataclass(frozen=True)
class Outcome:
    result: Result
    model: nn.Module | None  # the trained model of an ok trial, for the best bundle


def evaluate(trial: Trial, *, space: SearchSpace, task: Task, constraints: Sequence[Constraint], epochs: int,
             seed: int, on_epoch: EpochCallback | None = None) -> Outcome:
    """Costs are measured at the target configuration and checked before any training; the proxy trains at
    round(proxy_scale x base resolution). A trial that raises or yields NaN is `failed`, not fatal."""
    start = time.perf_counter()
    try:
        costs = measure(space, trial.arch)
    except Exception as exc:  # a space that cannot build this Arch: record it, keep searching
        return Outcome(Result("failed", {}, f"cost measurement: {type(exc).__name__}: {exc}"), None)
    broken = violations(constraints, costs)
    if broken:
        return Outcome(Result("infeasible", costs, "; ".join(broken)), None)
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
