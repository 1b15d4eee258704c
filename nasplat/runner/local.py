"""The local runner: drives an ask/tell strategy in-process, journaling every step so a kill -9 resumes."""
from __future__ import annotations

from dataclasses import replace

from rich.console import Console

from ..run import RunDir
from ..strategy import Trial
from ..tasks.base import CHARGE, TabularTask
from .budget import SimulatedClock
from .components import Components
from .driver import MAX_FREE_IN_A_ROW, Driver, SearchOutcome
from .oneshot import supernet_phase
from .trial import evaluate

__all__ = ["SearchOutcome", "run_search"]


def run_search(run: RunDir, *, resume: bool = False, console: Console | None = None,
               components: Components | None = None, report: bool = True) -> SearchOutcome:
    """Drives the strategy until the trials, the timeout or the simulated budget run out.

    A tabular task's queries are charged simulated seconds (`SimulatedClock`), journaled with each result
    but held out from the strategy, which is told `result.for_strategy()`. `report=False` skips the plots
    and summary at the end (a benchmark of hundreds of searches draws its own).
    """
    console = console or Console(stderr=True)
    driver = Driver(run, resume=resume, console=console, components=components)
    config, comp = driver.config, driver.comp
    if comp.strategy.one_shot:  # trains the supernet first; its derived architecture is then the one trial
        try:
            supernet_phase(run, comp.strategy, comp.task, console=console)
        except KeyboardInterrupt:
            return driver.finish(driver.interrupted(), report=report)
    clock = SimulatedClock(comp.task, comp.space, epochs=comp.epochs, budget=config.budget,
                           finished=driver.finished.values()) if isinstance(comp.task, TabularTask) else None
    by_budget = config.trials is None and clock is not None and config.budget is not None
    progress = driver.start_progress(total=config.budget if by_budget else config.trials,
                                     completed=clock.spent if by_budget and clock else driver.trained,
                                     suffix=" (simulated s)" if by_budget else "")
    repeat_streak, reason = 0, "done"
    end: dict[str, object] = {}
    try:
        with progress:
            while driver.wants():
                reason = driver.stop_reason() or ("repeats" if repeat_streak >= MAX_FREE_IN_A_ROW else "done")
                if reason != "done":
                    break
                trial = driver.take()
                charge = clock.charge(trial.arch) if clock else 0.0
                if clock and not clock.affords(charge):  # the query stays unmade (and in state.json's pending)
                    reason = "budget"
                    end["refused"] = {"trial": trial.id, "charge": charge}
                    break
                repeat_streak = repeat_streak + 1 if clock and clock.is_repeat(trial.arch) else 0
                run.asked(trial)

                def on_epoch(epoch: int, metrics: dict, trial: Trial = trial) -> None:
                    run.append({"event": "epoch", "trial": trial.id, "epoch": epoch, "metrics": metrics})

                outcome = evaluate(trial, space=comp.space, task=comp.task, constraints=config.constraints,
                                   epochs=comp.epochs, seed=config.seed, on_epoch=on_epoch, costs=comp.costs)
                result = outcome.result
                if clock:  # a query rejected for its costs was never made: it costs nothing
                    charge = charge if result.status != "infeasible" else 0.0
                    clock.record(trial.arch, charge)
                    result = replace(result, held_out={**result.held_out, CHARGE: charge})
                driver.record(trial, result, outcome.model, advance=charge if by_budget else 1)
    except KeyboardInterrupt:
        reason = driver.interrupted()
    if clock:
        end["simulated_seconds"] = round(clock.spent, 4)
    return driver.finish(reason, report=report, **end)
