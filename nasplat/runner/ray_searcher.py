"""The driver's side of the Ray runner: nasplat's ask/tell strategy as a Ray Tune Searcher, and a Tune
Callback for what only Tune's trial objects carry (epochs as they arrive, retries, errors, shipped weights).

The strategy knows nothing of Ray: `suggest` asks it (through the Driver, which snapshots), and
`on_trial_complete` records the result (the Driver journals it, then tells the strategy).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray.tune import Callback
from ray.tune.search import Searcher

from ..strategy import Result, Trial
from .ray_cluster import lost_node
from .ray_trial import EPOCH, METRICS, WEIGHTS, decode, load_model, trial_config

if TYPE_CHECKING:
    from ray.tune.experiment import Trial as TuneTrial

    from .driver import Driver


class TuneEvents(Callback):
    """Journals each epoch as Tune receives it and each retry of a trial whose worker died; takes the
    shipped weights out of a result before Tune keeps it (Tune holds every trial's last result and writes it
    into its experiment snapshots, where megabytes of weights would only cost time)."""

    def __init__(self, driver: Driver):
        self.driver = driver
        self.weights: dict[str, bytes] = {}  # Tune trial id -> weights, until the searcher records the trial
        self.trials: dict[str, TuneTrial] = {}

    def __getstate__(self) -> dict[str, Any]:
        """Left out of tuner.pkl with the driver, as StrategySearcher is (see there)."""
        return {**self.__dict__, "driver": None}

    def on_trial_start(self, iteration: int, trials: list, trial: TuneTrial, **info: Any) -> None:
        self.trials[trial.trial_id] = trial

    def on_trial_result(self, iteration: int, trials: list, trial: TuneTrial, result: dict, **info: Any) -> None:
        if WEIGHTS in result:
            self.weights[trial.trial_id] = result.pop(WEIGHTS)
        if EPOCH in result:
            self.driver.run.append({"event": "epoch", "trial": trial.config["trial"], "epoch": result[EPOCH],
                                    "metrics": json.loads(result[METRICS])})

    def on_trial_recover(self, iteration: int, trials: list, trial: TuneTrial, **info: Any) -> None:
        self.driver.run.append({"event": "retry", "trial": trial.config["trial"], "failures": trial.num_failures,
                                "reason": last_failure(trial)})

    def error(self, trial_id: str) -> str:
        trial = self.trials.get(trial_id)
        return last_failure(trial) if trial is not None else "the trial could not start"


def last_failure(trial: TuneTrial) -> str:
    """One line for the latest failure Tune wrote to the trial's error file: the exception raised, or the
    first line of Ray's message (a worker that died has no exception of its own), after "node <id> died: "
    where the worker's node was lost."""
    try:
        text = Path(trial.error_file).read_text() if trial.error_file else ""
    except OSError:
        text = ""
    block = [line.strip() for line in text.split("Failure #")[-1].splitlines()[1:] if line.strip()]
    raised = [line for line in block if re.match(r"^[\w.]+(Error|Exception|Interrupt)\b", line)]
    line = (raised or block or ["no error recorded"])[-1 if raised else 0]
    node = lost_node("\n".join(block))
    return f"node {node} died: {line}" if node else line


class StrategySearcher(Searcher):
    """A nasplat Strategy as Ray Tune's Searcher. `suggest` returns None (ask again later) while the trials
    in flight would fill the number asked for, and FINISHED once they are all in or the search must end."""

    def __init__(self, driver: Driver, events: TuneEvents, *, lookups: bool = False):
        super().__init__()
        self.driver = driver
        self.events = events
        self.lookups = lookups  # whether the trials run as a LookupJob's: each config then carries its table key
        self.live: dict[str, Trial] = {}  # Tune trial id -> the nasplat trial it runs
        self.reason = "done"
        self.crash: BaseException | None = None  # an error of the strategy or the journal: ends the search

    def __getstate__(self) -> dict[str, Any]:
        """Tune pickles its searcher into tuner.pkl for `Tuner.restore`; nasplat resumes from the run's journal
        instead, and the driver (an Optuna storage, a console: locks) cannot be pickled, so it is left out."""
        return {**self.__dict__, "driver": None, "events": None}

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return True  # the strategy knows its metric; the space is nasplat's, not a Tune param_space

    def suggest(self, trial_id: str) -> dict | str | None:
        if self.crash is not None:
            return Searcher.FINISHED
        reason = self.driver.stop_reason()
        if reason is not None:
            self.reason = reason
            return Searcher.FINISHED
        if not self.driver.wants(in_flight=len(self.live)):
            return None if self.live else Searcher.FINISHED
        trial = self.driver.take()
        self.driver.run.asked(trial)
        self.live[trial_id] = trial
        key = self.driver.comp.space.describe(trial.arch) if self.lookups else None
        return trial_config(trial, ship_above=self.driver.best_score(), key=key)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        trial = self.live.pop(trial_id, None)
        if trial is None:  # told already (Tune reports an error raised while recording as a trial error)
            return
        weights = self.events.weights.pop(trial_id, None)
        outcome: Result | None
        if error:
            outcome = Result("failed", {}, f"the trial's worker failed {self.driver.config.max_retries + 1} "
                                           f"time(s): {self.events.error(trial_id)}")
        else:
            outcome = decode(result or {}, epochs=self.driver.comp.epochs)
        if outcome is None:  # removed before it ran (the search was cut short): it stays pending for a resume
            return
        try:
            comp = self.driver.comp
            model = load_model(comp.space, comp.task, trial.arch, weights) \
                if weights is not None and self.driver.would_be_best(outcome) else None
            self.driver.record(trial, outcome, model)
        except BaseException as exc:
            self.crash = exc
            raise
