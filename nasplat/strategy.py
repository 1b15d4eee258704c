"""Trial, Result and the ask/tell Strategy base of multi-trial search."""
from __future__ import annotations

import logging
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from traceback import format_exc
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from .arch import Arch
from .errors import LatencyError, UserError
from .oneshot import contract

if TYPE_CHECKING:
    from .constraints import Constraint
    from .cost import CostModel
    from .space import SearchSpace

log = logging.getLogger(__name__)

MAX_DRAWS = 1000  # proposals a strategy redraws while a free check finds them infeasible

# objective -> whether it is maximised; costs (the metrics of constraints) are minimised
OBJECTIVES: dict[str, bool] = {"accuracy": True, "latency": False, "macs": False, "params": False}


def check_objectives(objectives: Sequence[str]) -> tuple[str, ...]:
    """Objectives as a search takes them: known, none twice, and accuracy first (it picks best/)."""
    objectives = tuple(objectives)
    unknown = [o for o in objectives if o not in OBJECTIVES]
    if unknown or not objectives or objectives[0] != "accuracy" or len(set(objectives)) != len(objectives):
        raise UserError(f"--objective {','.join(objectives)}: give accuracy first, then any of "
                        f"{', '.join(o for o in OBJECTIVES if o != 'accuracy')}, each once "
                        f"(e.g. accuracy,latency)")
    return objectives

Status = Literal["ok", "infeasible", "failed", "stopped"]


@dataclass(frozen=True)
class Trial:
    """One evaluation the strategy asked for: a unique id within the run and the Arch to evaluate."""

    id: int
    arch: Arch


@dataclass(frozen=True)
class Result:
    """What evaluating a trial gave. `infeasible`: broke a constraint, never trained; `failed`: raised or NaN;
    `stopped`: an early-stopping scheduler (the Ray runner's ASHA) ended its training, so it has the metrics
    of the epoch it reached and no final ones.

    `held_out` holds measurements that are journaled with the trial but never told to the strategy: a
    benchmark's report metric (the 200-epoch accuracy a search must not peek at), the simulated seconds
    a query was charged. The runner tells a strategy `for_strategy()`, which lacks them.

    `traceback` is the Python traceback of a trial that raised (its `error` is then "Type: message"), kept
    in the journal for whoever debugs it.
    """

    status: Status
    metrics: Mapping[str, float] = field(default_factory=dict)
    error: str | None = None
    held_out: Mapping[str, float] = field(default_factory=dict)
    traceback: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @classmethod
    def raised(cls, exc: Exception, metrics: Mapping[str, float] | None = None, *, during: str = "") -> Result:
        """The failed Result of a trial that raised `exc` (call it while handling `exc`): "Type: message" as
        the error, after `during`, and the traceback, which the driver's repeated-failure check and the
        journal read."""
        return cls("failed", dict(metrics or {}), f"{during}{type(exc).__name__}: {exc}", traceback=format_exc())

    def for_strategy(self) -> Result:
        """This result as a strategy may see it: without the held-out measurements, and a stopped trial as
        failed. A stopped trial has no final accuracy, and its accuracy at an early epoch is not comparable with
        finished ones; strategies know `failed` (Optuna's samplers skip it, evolution and local search never
        pick it), and the scheduler has already judged it worse than its peers."""
        if self.status == "stopped":
            return Result("failed", self.metrics, f"stopped early: {self.error}" if self.error else "stopped early")
        return replace(self, held_out={}) if self.held_out else self

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status, "metrics": dict(self.metrics)}
        if self.error:
            out["error"] = self.error
        if self.held_out:
            out["held_out"] = dict(self.held_out)
        if self.traceback:
            out["traceback"] = self.traceback
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Result:
        return cls(data["status"], dict(data.get("metrics", {})), data.get("error"), dict(data.get("held_out", {})),
                   data.get("traceback"))


class Strategy(ABC):
    """Multi-trial search as ask/tell, small like Optuna's samplers.

    The runner calls `ask()` for the next trial and `tell()` with its result; several trials may be in
    flight at once. `state()` is a JSON-able snapshot and `restore()` takes it back, so that a killed run
    resumes where it stopped. `initial` holds parameter sets to evaluate first (a prior, a warm start).
    The objective, maximised, is `metric` of an `ok` result. A multi-objective search also names costs to
    minimise (`objectives`, accuracy first); only strategies with `multi_objective` take more than one, and
    the others are refused rather than left to ignore them. `costs` is the search's cost model, against which
    a space completes the parameters it derives from the constraints.
    """

    name: str
    metric: str = "accuracy"
    multi_objective: ClassVar[bool] = False
    one_shot: ClassVar[bool] = False  # trains a supernet before its one ask (OneShotStrategy)

    def __init__(self, space: SearchSpace, *, seed: int = 0, constraints: Sequence[Constraint] = (),
                 initial: Sequence[Mapping[str, Any]] = (), workdir: Path | None = None,
                 objectives: Sequence[str] = ("accuracy",), costs: CostModel | None = None):
        self.objectives = self.takes(objectives)
        self.space = space
        self.workdir = workdir  # the run directory, for strategies that keep files (Optuna's study)
        self.seed = seed
        self.constraints = tuple(constraints)
        self.costs = costs
        self.initial = [dict(p) for p in initial]
        self.rng = random.Random(seed)
        self.next_id = 0
        self._checked: dict[str, dict[str, float]] = {}  # architecture key -> violations (free checks only)
        self._completed: tuple[dict[str, Any], Arch] | None = None  # the last params completed, and their Arch

    @classmethod
    def takes(cls, objectives: Sequence[str]) -> tuple[str, ...]:
        """The objectives checked, or ValueError for ones this strategy cannot search (before any run starts)."""
        objectives = check_objectives(objectives)
        if len(objectives) > 1 and not cls.multi_objective:
            raise UserError(f"strategy {cls.name!r} searches accuracy alone; for --objective "
                            f"{','.join(objectives)} use bayesian (Optuna's TPE or NSGA-II) or random")
        return objectives

    @classmethod
    def check_space(cls, space: SearchSpace) -> None:
        """Raises ValueError when this strategy cannot search `space` (checked before any run starts)."""

    @abstractmethod
    def ask(self) -> Trial: ...

    @abstractmethod
    def tell(self, trial: Trial, result: Result) -> None: ...

    def _trial(self, params: Mapping[str, Any]) -> Trial:
        """A new trial for searched parameter values, completed into an Arch by the space."""
        trial = Trial(self.next_id, self._complete(params))
        self.next_id += 1
        return trial

    def _complete(self, params: Mapping[str, Any]) -> Arch:
        """The space's completion of `params`. Under a free check the last one is kept, since the check
        completes the parameters that the trial then completes again (TinyNet solves its width by bisection
        on MACs); costs that are measured may change what a completion gives (a table's learnt correction)."""
        if not self.checks_free:
            return self.space.complete(params, constraints=self.constraints, costs=self.costs)
        if self._completed is None or self._completed[0] != params:
            self._completed = (dict(params), self.space.complete(params, constraints=self.constraints,
                                                                 costs=self.costs))
        return self._completed[1]

    @property
    def checks_free(self) -> bool:
        """Whether the constraints can be checked at no cost before proposing (MACs, a device's table, a fitted
        predictor); a latency measured on a device is checked by the runner, one trial at a time."""
        return bool(self.constraints) and self.costs is not None and self.costs.free

    def violations(self, params: Mapping[str, Any]) -> dict[str, float] | None:
        """Per constraint, cost / limit - 1 (positive when broken) of `params` completed into an Arch, where
        checking is free (`checks_free`); None where it would take a measurement. Cached by architecture key:
        evolution and local search revisit neighbours, and a table's lookup is cheaper than a second model."""
        if not self.checks_free:
            return None
        try:
            arch = self._complete(params)
            key = arch.key()
            if key not in self._checked:
                costs = self.costs(self.space, arch)  # type: ignore[misc]
                self._checked[key] = {str(c): costs[c.metric] / c.limit - 1 for c in self.constraints}
        except LatencyError:
            raise  # the latency source cannot answer at all: an input error, as the runner treats it
        except Exception:  # noqa: BLE001 - an Arch the space cannot build: the runner records it as failed
            return None
        return self._checked[key]

    def feasible(self, params: Mapping[str, Any]) -> bool:
        """Whether `params` meet the constraints as far as a free check can tell (True where it cannot)."""
        found = self.violations(params)
        return found is None or all(v <= 0 for v in found.values())

    def _draw(self, propose: Callable[[], Mapping[str, Any]], *, what: str,
              reject: Callable[[Mapping[str, float]], None] | None = None) -> dict[str, Any]:
        """`propose()` again until it gives parameters that meet the constraints, where a free check can tell,
        so that no trial is spent on an architecture known to be infeasible; `reject(violations)` hears of each
        proposal drawn again (a model-based strategy learns from it). After MAX_DRAWS infeasible ones it warns
        and returns the last: the runner then records it as infeasible, as it would without the check."""
        for draw in range(MAX_DRAWS):
            params = dict(propose())
            found = self.violations(params)
            if found is None or all(v <= 0 for v in found.values()):
                return params
            if reject is not None and draw < MAX_DRAWS - 1:
                reject(found)
        log.warning("%s: %d %s in a row broke %s; evaluating the last one, which will be infeasible",
                    self.name, MAX_DRAWS, what, ", ".join(map(str, self.constraints)))
        return params

    def score(self, result: Result) -> float | None:
        """The maximised objective, None for infeasible or failed trials."""
        return float(result.metrics[self.metric]) if result.ok else None

    def values(self, result: Result) -> tuple[float, ...] | None:
        """The objectives of an ok result in `objectives` order (None for infeasible or failed trials)."""
        return tuple(float(result.metrics[o]) for o in self.objectives) if result.ok else None

    def state(self) -> dict[str, Any]:
        version, internal, gauss = self.rng.getstate()
        return {"next_id": self.next_id, "initial": self.initial,
                "rng": [version, list(internal), gauss]}

    def restore(self, state: Mapping[str, Any]) -> None:
        self.next_id = int(state["next_id"])
        self.initial = [dict(p) for p in state["initial"]]
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))


class OneShotStrategy(Strategy):
    """Trains a weight-sharing supernet and derives one architecture (DARTS, PC-DARTS, CP-NAS, the bandits).

    The runner calls `search(session)` first: it trains the supernet, checkpointing through the session so that
    a killed run resumes where it stopped, and returns the derived Arch, which it must also keep as
    `self.derived`. From then on the strategy is an ask/tell strategy of one trial: `ask()` gives the derived
    Arch, which the runner evaluates like any other (constraints checked, trained from scratch on the proxy,
    exported as best/). Options arrive as keyword arguments (`--strategy-option key=value`).
    """

    one_shot: ClassVar[bool] = True
    space_contract: ClassVar[type] = contract.OneShotSpace  # the protocol a space must implement for it

    def __init__(self, space: SearchSpace, **common: Any):
        if common.get("initial"):
            raise UserError(f"strategy {self.name!r} derives its architecture from a supernet: it takes no --prior")
        self.check_space(space)
        super().__init__(space, **common)
        self.derived: Arch | None = None
        self.told: Result | None = None

    @classmethod
    def check_space(cls, space: SearchSpace) -> None:
        contract.check_space(space, strategy=cls.name, needs=cls.space_contract)

    @abstractmethod
    def search(self, session: Any) -> Arch:
        """Trains the supernet (resuming from the session's checkpoint) and returns the derived Arch."""

    def ask(self) -> Trial:
        if self.derived is None:
            raise RuntimeError(f"{self.name}: search() must derive an architecture before the first ask")
        trial = Trial(self.next_id, self.derived)
        self.next_id += 1
        return trial

    def tell(self, trial: Trial, result: Result) -> None:
        self.told = result

    def state(self) -> dict[str, Any]:
        return {**super().state(), "derived": self.derived.to_dict() if self.derived is not None else None}

    def restore(self, state: Mapping[str, Any]) -> None:
        super().restore(state)
        self.derived = Arch.from_dict(state["derived"]) if state.get("derived") else None
