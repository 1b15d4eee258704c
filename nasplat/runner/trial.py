"""One trial, wherever it runs: measure cost, reject early, build, train on the proxy (or look the
architecture up in a tabular task's table), report."""
from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..constraints import Constraint, violations
from ..cost import CostModel
from ..cost.latency import LatencyError
from ..units import format_ms
from ..strategy import Result, Trial
from ..tasks.base import TabularTask, table_result

if TYPE_CHECKING:
    from torch import nn

    from ..arch import Arch
    from ..space import SearchSpace
    from ..tasks.base import EpochCallback, Task


@dataclass(frozen=True)
class Outcome:
    result: Result
    model: nn.Module | None  # the trained model of an ok trial, for the best bundle


def _costs(space: SearchSpace, arch: Arch, constraints: Sequence[Constraint],
           cost_model: CostModel) -> dict[str, float] | Result:
    """The costs known before training, or the Result of an Arch that cannot be measured or breaks a
    constraint. A latency that a lookup table predicted is kept as `latency_predicted`, uncorrected."""
    try:
        costs = cost_model(space, arch)
    except LatencyError:
        raise  # the device cannot measure at all: an input error, not this trial's failure
    except Exception as exc:  # a space that cannot build this Arch: record it, keep searching
        return Result.raised(exc, during="cost measurement: ")
    broken = violations(constraints, costs)
    plan = cost_model.latency
    if plan is not None and plan.confirmed:  # the estimate is the table's, corrected: keep both apart
        costs.pop("latency")
        costs["latency_predicted"] = plan.predicted(space, arch)
        broken = [f"predicted {b}" + (f" (table {format_ms(costs['latency_predicted'])} x {plan.correction:.3g}, "
                                      f"the correction learnt from measurements)" if plan.correction != 1 else "")
                  if b.startswith("latency") else b for b in broken]
    return Result("infeasible", costs, "; ".join(broken)) if broken else costs


def _confirm_latency(space: SearchSpace, arch: Arch, constraints: Sequence[Constraint], cost_model: CostModel,
                     metrics: dict[str, float]) -> Result | None:
    """After training an Arch admitted by its predicted latency: its measured latency, which has the last
    word (None when it meets the constraints, else the infeasible Result, accuracy kept for the record)."""
    if cost_model.latency is None or not cost_model.latency.confirmed:
        return None
    metrics["latency"] = cost_model.latency.measure(space, arch)
    broken = [f"measured {b} (predicted {format_ms(metrics['latency_predicted'])})"
              for c in constraints if c.metric == "latency" for b in violations([c], metrics)]
    return Result("infeasible", metrics, "; ".join(broken)) if broken else None


def needs_costs(constraints: Sequence[Constraint], costs: CostModel) -> bool:
    """Whether a table's answer needs the architecture's costs first: a constraint to check, or a latency."""
    return bool(constraints) or costs.latency is not None


def look_up(arch: Arch, *, space: SearchSpace, task: TabularTask, constraints: Sequence[Constraint],
            costs: CostModel) -> Result:
    """A tabular task's answer: the signal as "accuracy", the reported columns held out from the strategy.

    Costs are measured only where constraints need them: a lookup takes microseconds and building the model
    to count its MACs would take the whole time of a benchmark."""
    found: dict[str, float] = {}
    if needs_costs(constraints, costs):
        checked = _costs(space, arch, constraints, costs)
        if isinstance(checked, Result):
            return checked
        found = checked
    return table_result(task, space.describe(arch), found)


def evaluate(trial: Trial, *, space: SearchSpace, task: Task | TabularTask, constraints: Sequence[Constraint],
             epochs: int, seed: int, on_epoch: EpochCallback | None = None,
             costs: CostModel | None = None) -> Outcome:
    """Costs are measured at the target configuration and checked before any training; the proxy trains at
    round(proxy_scale x base resolution); a latency predicted by a table is confirmed by measuring the
    trained architecture. A trial that raises or yields NaN is `failed`, not fatal; one that raised keeps
    its traceback (the driver stops a search whose trials keep raising the same exception). A device that
    cannot measure latency at all (LatencyError) is bad input and ends the search. A tabular task answers
    from its table instead (`look_up`), with no model."""
    try:
        return _evaluate(trial, space=space, task=task, constraints=constraints, epochs=epochs, seed=seed,
                         on_epoch=on_epoch, cost_model=costs or CostModel())
    except LatencyError:
        raise
    except Exception as exc:  # a bug of the space, the task or nasplat: this trial fails, the search goes on
        return Outcome(Result.raised(exc), None)


def _evaluate(trial: Trial, *, space: SearchSpace, task: Task | TabularTask, constraints: Sequence[Constraint],
              epochs: int, seed: int, on_epoch: EpochCallback | None, cost_model: CostModel) -> Outcome:
    if isinstance(task, TabularTask):
        return Outcome(look_up(trial.arch, space=space, task=task, constraints=constraints, costs=cost_model), None)
    start = time.perf_counter()
    costs = _costs(space, trial.arch, constraints, cost_model)
    if isinstance(costs, Result):
        return Outcome(costs, None)
    input_size = task.input_size(space.proxy_scale(trial.arch))
    try:
        model = space.build(trial.arch, num_classes=task.num_classes)
        metrics = task.train_eval(model, input_size=input_size, epochs=epochs, seed=seed + trial.id,
                                  on_epoch=on_epoch)
    except Exception as exc:
        return Outcome(Result.raised(exc, {**costs, "input_size": input_size}), None)
    if not all(math.isfinite(float(v)) for v in metrics.values()):
        return Outcome(Result("failed", {**costs, **metrics}, "metrics are not finite (NaN or inf)"), None)
    metrics = {**costs, **metrics, "input_size": input_size}
    rejected = _confirm_latency(space, trial.arch, constraints, cost_model, metrics)
    metrics["seconds"] = round(time.perf_counter() - start, 2)
    return Outcome(rejected or Result("ok", metrics), model if rejected is None else None)
