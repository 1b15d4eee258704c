"""Bayesian search on Optuna's samplers (TPE, GP, CMA-ES, NSGA-II, random) through its ask/tell interface.

With a run directory the study lives in Optuna's JournalStorage there (`optuna.journal`), so
`optuna-dashboard runs/<id>/optuna.journal` shows it while the search runs; nasplat's own journal stays the
authoritative record. A journal file rather than SQLite, because SQLite locks under parallel workers
(optuna/optuna#820, #4994).
"""
from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.samplers import BaseSampler
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from nasplat.errors import UserError
from nasplat.registry import register_strategy
from nasplat.space import Choice, FloatRange, IntRange, Param
from nasplat.strategy import OBJECTIVES, Result, Strategy, Trial

if TYPE_CHECKING:
    from nasplat.space import SearchSpace

STUDY_NAME = "nasplat"
# journal: Optuna's JournalStorage in the run directory, where every write is fsynced under a lock file; memory:
# faster where a trial is a table lookup (bench/RESULTS.md, "Bayesian study storage: journal file
# against memory"), for searches that are cheap to redo (a benchmark's)
STORAGES = ("journal", "memory")
JOURNAL_FILE = "optuna.journal"


class DeclaredSpaceTPE(optuna.samplers.TPESampler):
    """Multivariate TPE over the search space nasplat declares up front, with which every trial is asked.

    TPESampler infers that space at each ask as the intersection of the finished trials' spaces, a cache of
    which only a sampler kept from ask to ask has; BayesianSearch builds a new sampler at every ask, so the
    inference went over the whole history each time, and at 1,000 trials took five times the sampling itself
    (bench/RESULTS.md, "Ray at 64 workers"). Every finished trial has the declared space, so the intersection
    is that space, known in advance: the proposals are the same (tests/test_bayesian.py)."""

    def __init__(self, *, space: Mapping[str, BaseDistribution], **options: Any):
        super().__init__(multivariate=True, **options)
        # sorted by name, as Optuna's inference gives it: TPE samples in that order; single values it drops
        self._declared = {name: d for name, d in sorted(space.items()) if not d.single()}

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return dict(self._declared)


# name -> sampler for a seed and the declared space. TPE is multivariate: NAS parameters interact (depth with
# width, kernel with resolution). CMA-ES cannot search categorical parameters; TPE samples those for it, one at a
# time.
SAMPLERS: dict[str, Callable[[int, Mapping[str, BaseDistribution]], BaseSampler]] = {
    "tpe": lambda seed, space: DeclaredSpaceTPE(seed=seed, space=space),
    "gp": lambda seed, space: optuna.samplers.GPSampler(seed=seed),
    "cmaes": lambda seed, space: optuna.samplers.CmaEsSampler(
        seed=seed, independent_sampler=optuna.samplers.TPESampler(seed=seed), warn_independent_sampling=False),
    "nsga2": lambda seed, space: optuna.samplers.NSGAIISampler(seed=seed),
    "random": lambda seed, space: optuna.samplers.RandomSampler(seed=seed),
}

_SINGLE_OBJECTIVE = {"cmaes"}
# CMA-ES ignores constraint values and warns about them on every trial; it learns from the penalty alone.
_IGNORE_CONSTRAINTS = {"cmaes"}


def _label(value: Any) -> Any:
    """A Choice value as an Optuna categorical choice, which must be None, bool, int, float or str."""
    return value if value is None or isinstance(value, (bool, int, float, str)) else json.dumps(value)


def _distribution(param: Param) -> BaseDistribution:
    if isinstance(param, Choice):
        return CategoricalDistribution([_label(v) for v in param.values])
    if isinstance(param, IntRange):  # Optuna wants high - low to be a multiple of step
        high = param.low + (param.high - param.low) // param.step * param.step
        return IntDistribution(param.low, high, step=param.step)
    if isinstance(param, FloatRange):
        return FloatDistribution(param.low, param.high, log=param.log)
    raise UserError(f"the bayesian strategy cannot search a {type(param).__name__} parameter")


@register_strategy("bayesian")
class BayesianSearch(Strategy):
    """Model-based search on an Optuna study; `sampler` is one of tpe, gp, cmaes, nsga2, random; `storage`
    journal (the study in the run directory) or memory; `history` (with storage=memory) the number of latest
    finished trials the sampler keeps learning from, 0 for all of them (see `_roll`).

    The searched parameters are declared to Optuna up front (`study.ask(fixed_distributions)`), as CMA-ES
    and the GP need a fixed space. `initial` points are enqueued and asked first; one may fix only some
    parameters, and the sampler chooses the rest. The sampler is rebuilt for each ask, seeded from the
    strategy's RNG: what it proposes then depends only on that RNG, which `state()` saves, and on the trials
    in the study, so a resumed search asks what the uninterrupted one would have. `study` is the Optuna study.

    Where the constraints are free to check (MACs, a device's table, a fitted predictor), a proposal that
    breaks them is told to Optuna as infeasible at once (`_reject`) and the sampler asked again: it samples
    within the constraints and learns their boundary, and no trial is spent outside it.
    """

    multi_objective = True

    def __init__(self, space: SearchSpace, *, sampler: str = "tpe", storage: str = "journal", history: int = 0,
                 **common: Any):
        if sampler not in SAMPLERS:
            raise UserError(f"unknown sampler {sampler!r}; known: {', '.join(SAMPLERS)}")
        if storage not in STORAGES:
            raise UserError(f"unknown storage {storage!r}; use journal (the study in the run directory, for "
                            f"--resume and optuna-dashboard) or memory (faster; a killed search starts over)")
        whole = isinstance(history, int) and not isinstance(history, bool) and history >= 0
        if not whole or (history and storage != "memory"):
            raise UserError(f"history={history!r}: give a whole number of trials (0: all), with storage=memory (the "
                            "study is then rebuilt as it rolls on, and the journal keeps one study per run)")
        self.history = history
        super().__init__(space, **common)
        if len(self.objectives) > 1 and sampler in _SINGLE_OBJECTIVE:
            raise UserError(f"sampler {sampler!r} optimises one objective; for --objective "
                            f"{','.join(self.objectives)} use tpe, nsga2, gp or random")
        workdir = self.workdir
        self.sampler_name = sampler
        self._params = space.parameters()
        self._distributions = {name: _distribution(p) for name, p in self._params.items()}
        for point in self.initial:
            for name, value in point.items():
                if name in self._params and not self._params[name].contains(value):
                    raise UserError(f"initial point {point}: {name}={value!r} lies outside {self._params[name]}")
        self.storage = storage
        if workdir is None or storage == "memory":
            self._storage: optuna.storages.BaseStorage = optuna.storages.InMemoryStorage()
        else:
            Path(workdir).mkdir(parents=True, exist_ok=True)
            self._storage = optuna.storages.JournalStorage(JournalFileBackend(str(Path(workdir) / JOURNAL_FILE)))
        self.study = optuna.create_study(storage=self._storage, study_name=STUDY_NAME, load_if_exists=True,
                                         sampler=SAMPLERS[sampler](self.seed, self._distributions),
                                         directions=["maximize" if OBJECTIVES[o] else "minimize"
                                                     for o in self.objectives])
        self._study_id = self._storage.get_study_id_from_name(STUDY_NAME)
        self._numbers: dict[int, int] = {}  # nasplat trial id -> Optuna trial number, for trials in flight

    def ask(self) -> Trial:
        if self.history and len(self.study.get_trials(deepcopy=False)) - len(self._numbers) >= 2 * self.history:
            self._roll()
        if self.initial:
            point = self.initial.pop(0)
            self.study.enqueue_trial({name: _label(value) if isinstance(self._params[name], Choice) else value
                                      for name, value in point.items() if name in self._params})
        proposed: list[optuna.trial.Trial] = []  # the Optuna trial behind the latest proposal

        def propose() -> dict[str, Any]:
            self.study.sampler = SAMPLERS[self.sampler_name](self.rng.getrandbits(32), self._distributions)
            proposed[:] = [self.study.ask(self._distributions)]
            return {name: self._decode(name, value) for name, value in proposed[0].params.items()}

        params = self._draw(propose, what="proposals", reject=lambda violations: self._reject(proposed[0], violations))
        asked = proposed[0]
        trial = self._trial(params)
        asked.set_user_attr("nasplat_trial", trial.id)
        asked.set_user_attr("arch", trial.arch.to_json())
        self._numbers[trial.id] = asked.number
        return trial

    def _roll(self) -> None:
        """Starts the study again with its `history` latest finished trials and the trials in flight (running,
        as constant_liar counts them). A sampler's ask grows with the trials it learns from, TPE's by about 10 ms
        per 1,000 of them (bench/RESULTS.md, "Ray at 64 workers"): rolled at 2 x `history` finished trials, the
        study holds at most that many plus the trials in flight."""
        trials = {t.number: t for t in self.study.get_trials(deepcopy=False)}
        finished = [t for t in trials.values() if t.state.is_finished()]
        self._storage = optuna.storages.InMemoryStorage()
        self.study = optuna.create_study(storage=self._storage, study_name=STUDY_NAME, sampler=self.study.sampler,
                                         directions=self.study.directions)
        self._study_id = self._storage.get_study_id_from_name(STUDY_NAME)
        kept = finished[-self.history:]
        self.study.add_trials(kept)
        for place, (trial_id, number) in enumerate(sorted(self._numbers.items(), key=lambda item: item[1]),
                                                   start=len(kept)):
            self._numbers[trial_id] = place
            self.study.add_trial(trials[number])

    def _reject(self, asked: optuna.trial.Trial, violations: Mapping[str, float]) -> None:
        """Tells Optuna a proposal that a free check found infeasible, as `tell` tells an infeasible trial
        (its constraint values and a penalty), without making it a trial: the sampler learns where the
        infeasible region lies, and the search spends nothing on it."""
        self._finish(asked, Result("infeasible", {}, "rejected by a free check before it was asked"), violations)

    def tell(self, trial: Trial, result: Result) -> None:
        """ok: its score. failed: Optuna's FAIL, which the samplers skip. infeasible: told as complete, with
        its constraint values and a penalty value. nasplat rejects such a trial before training, whereas
        Optuna's constraints judge a trial after it ran; telling it as complete with its violations lets
        TPE, the GP and NSGA-II, which rank infeasible trials below feasible ones by their violation, learn
        where the infeasible region lies, and the penalty (see `_penalty`) teaches CMA-ES, which ignores
        constraints, the same. Every sampler but CMA-ES records the constraint values of every complete
        trial (cost / limit - 1), so `study.best_trial` is the best feasible one.

        Telling a trial that Optuna already finished does nothing: a crash between Optuna's tell and the
        runner's next snapshot makes the resumed runner tell it again.
        """
        if trial.id not in self._numbers:
            raise ValueError(f"trial {trial.id} is not in flight: never asked, or told already")
        values = self.values(result)  # raises for an ok result that lacks an objective: the trial stays in flight
        trial_id = self._trial_id(self._numbers.pop(trial.id))
        if self._storage.get_trial(trial_id).state.is_finished():
            return
        asked = optuna.trial.Trial(self.study, trial_id)
        if result.status == "failed":
            asked.set_user_attr("result", result.to_dict())
            self.study.tell(asked, state=TrialState.FAIL)
            return
        self._finish(asked, result, self._violations(result), values)

    def _finish(self, asked: optuna.trial.Trial, result: Result, violations: Mapping[str, float],
                values: tuple[float, ...] | None = None) -> None:
        """Completes an Optuna trial: the result, its constraint values, and its objectives (a penalty when
        it has none, being infeasible)."""
        asked.set_user_attr("result", result.to_dict())
        if self.sampler_name not in _IGNORE_CONSTRAINTS:
            for key, violation in violations.items():
                asked.set_constraint(key, violation)
        self.study.tell(asked, values if values is not None else self._penalty(violations))

    def state(self) -> dict[str, Any]:
        return {**super().state(), "in_flight": sorted(self._numbers.items())}

    def restore(self, state: Mapping[str, Any]) -> None:
        """Takes back a snapshot into a fresh instance built with the same arguments, whose study the
        constructor loaded from the run directory's journal file.

        Trials Optuna handed out after the snapshot was taken (the crash came between the ask and the
        runner's save) are marked FAIL: nasplat never saw them, and the restored RNG asks for them again.
        Trials in flight at the snapshot stay RUNNING: the runner reruns them with the same Arch and tells them.
        """
        if self.workdir is None or self.storage == "memory":
            raise UserError("the bayesian strategy resumes from its study on disk: this search kept it in memory "
                            "(storage=memory, or no run directory), so it cannot resume; start it again")
        super().restore(state)
        self._numbers = {int(trial_id): int(number) for trial_id, number in state["in_flight"]}
        known = set(self._numbers.values())
        for frozen in self.study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING)):
            if frozen.number not in known:
                self._storage.set_trial_state_values(self._trial_id(frozen.number), TrialState.FAIL)

    def _decode(self, name: str, value: Any) -> Any:
        param = self._params[name]
        if isinstance(param, Choice):
            return param.values[int(self._distributions[name].to_internal_repr(value))]
        return value

    def _trial_id(self, number: int) -> int:
        return self._storage.get_trial_id_from_study_id_trial_number(self._study_id, number)

    def _violations(self, result: Result) -> dict[str, float]:
        """Per constraint, measured cost / limit - 1, positive when broken as Optuna expects. An infeasible
        result that lacks a cost counts as breaking that constraint by 1."""
        return {str(c): result.metrics[c.metric] / c.limit - 1 if c.metric in result.metrics
                else (0.0 if result.ok else 1.0) for c in self.constraints}

    def _penalty(self, violations: Mapping[str, float]) -> list[float]:
        """The values told for an infeasible trial: per objective, the worst feasible value so far, made worse
        by one to two times the spread of the feasible values, the more the further over its limits it is.

        Worse than every feasible value so far, so that CMA-ES, which ranks by value only, steers away; graded
        by the total violation v as v / (1 + v), so that among infeasible trials the nearly feasible rank
        first; bounded and finite, so that the GP, which fits its model to every complete trial's value, is
        not dwarfed by outliers (and inf would break CMA-ES). A later feasible value can still be worse than an
        earlier penalty; before any feasible trial the penalty lies one to two units beyond zero.
        """
        feasible = [t.values for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                    if t.user_attrs.get("result", {}).get("status") == "ok"]
        excess = sum(v for v in violations.values() if v > 0) or 1.0
        out = []
        for i, objective in enumerate(self.objectives):
            sign = 1.0 if OBJECTIVES[objective] else -1.0  # as if maximised
            values = [sign * v[i] for v in feasible]
            worst = min(values, default=0.0)
            spread = (max(values, default=0.0) - worst) or abs(worst) or 1.0
            out.append(sign * (worst - spread * (1 + excess / (1 + excess))))
        return out
