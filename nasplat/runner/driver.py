"""The driver's side of a search, which every runner shares: they differ only in where trials run.

It resumes a run from its journal and snapshot, hands out trials, records each result (journal first,
then the strategy), keeps and exports the best, and ends the run. The invariant a resume relies on:
state.json is saved at every ask and lists every trial asked and not yet told (`pending`), and a result is
journaled before the strategy is told it. A snapshot therefore holds exactly the tells made before it, so
a resume tells the strategy the pending trials that the journal finished (in journal order) and reruns
the others with the same Arch, however many were in flight.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..run import RunDir, RunError
from ..strategy import Result, Trial
from ..tasks.base import CHARGE
from ..tracebacks import traceback_folder, write_traceback
from ..units import format_count, format_ms, format_time
from .budget import check_budget
from .components import Components, build_components, export_best, finish_best, latency_record, write_front

if TYPE_CHECKING:
    from torch import nn

# a strategy that proposes only infeasible architectures would never finish: stop after this many per trial
MAX_INFEASIBLE_PER_TRIAL = 25
# under a simulated budget a repeated query is free, so a strategy that only re-asks what it has seen would
# never finish either: stop after this many repeats in a row (and this many infeasible ones when no number
# of trials is set)
MAX_FREE_IN_A_ROW = 1000
FINAL = ("done", "budget", "repeats")  # end reasons after which a run cannot be resumed


class RepeatedFailure(RuntimeError):
    """Trials kept failing with the same exception: a bug (of nasplat, the space or the task), not
    architectures that cannot train. The run ended as after a timeout (reason "failures"): resumable once
    the cause is fixed."""


@dataclass
class SearchOutcome:
    run: RunDir
    reason: str  # done | budget | timeout | interrupted | infeasible | repeats (failures raises RepeatedFailure)
    best: tuple[Trial, Result] | None
    finished: int  # evaluated trials (ok, failed or stopped), repeated queries included


def trial_line(trial: Trial, result: Result, comp: Components) -> str:
    m = result.metrics
    cost = f"MACs {format_count(m['macs'])}  params {format_count(m['params'])}" if "macs" in m else ""
    if "latency" in m or "latency_predicted" in m:
        cost += f"  latency {format_ms(m['latency'])}" if "latency" in m else \
            f"  latency ~{format_ms(m['latency_predicted'])} (predicted)"
    head = f"trial {trial.id:>3}  {comp.space.describe(trial.arch).split(' | ')[0]}  {cost}"
    if not result.ok:
        return f"{head}  [{result.status}] {result.error}"
    line = f"{head}  acc {m['accuracy']:.2f}%" + (f" @{m['input_size']}px" if "input_size" in m else "")
    if "seconds" in m:
        line += f"  ({format_time(m['seconds'])})"
    if CHARGE in result.held_out:
        line += f"  (charged {format_time(result.held_out[CHARGE])} simulated)" if result.held_out[CHARGE] else \
            "  (repeat: free)"
    return line


def searched_seconds(events: list[dict[str, Any]]) -> float:
    """How long a run's sessions have searched, for --timeout: from each start event to the last event of its
    session (a kill -9 leaves no end event), counted since the last session that ended by the timeout (a resume
    after the timeout gets a new one)."""
    sessions: list[list[float]] = []
    for event in events:
        at = event.get("time")
        if event.get("event") == "start" and at is not None:
            sessions.append([at, at])
        elif sessions and at is not None:
            sessions[-1][1] = at
        if event.get("event") == "end" and event.get("reason") == "timeout":
            sessions.clear()
    return sum(last - first for first, last in sessions)


class Driver:
    """One search's bookkeeping on the driver. `start` is journaled with `record` (the runner's own facts,
    such as where its workers are)."""

    def __init__(self, run: RunDir, *, resume: bool, console: Console, components: Components | None,
                 record: dict[str, Any] | None = None):
        self.run = run
        self.console = console
        self.config = run.config()
        self.comp = components or build_components(self.config, run)
        check_budget(self.config.budget, self.comp.task)
        self.finished = run.results()
        for _, result in sorted(self.finished.items()):  # the latency plan's corrections, as the run learnt them
            self.comp.costs.observe(result[1].metrics)
        self.pending: list[Trial] = []  # asked and not told, in the order asked
        self.reruns: list[Trial] = []  # pending trials of a killed run, not handed out again yet
        # the --timeout clock goes on from where the killed or interrupted sessions left it
        searched = searched_seconds(run.events()) if resume else 0.0
        if resume:
            self._resume()
        run.append({"event": "start", "resumed": resume, "pending": [t.id for t in self.pending],
                    **latency_record(self.comp), **(record or {})})
        strategy = self.comp.strategy
        scored = [(strategy.score(r), t, r) for t, r in self.finished.values() if strategy.score(r) is not None]
        self.best: tuple[Trial, Result] | None = max(scored, key=lambda x: x[0])[1:] if scored else None
        self.trained = sum(1 for _, r in self.finished.values() if r.status != "infeasible")
        trials = self.config.trials
        self.infeasible_limit = MAX_INFEASIBLE_PER_TRIAL * trials if trials else MAX_FREE_IN_A_ROW
        self.infeasible_streak = 0
        self.failures: list[tuple[Trial, Result]] = []  # the latest trials in a row that raised the same exception
        self.started = time.time() - searched
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console,
                                 transient=False)
        self._bar: Any = None

    def _resume(self) -> None:
        ended = [e.get("reason") for e in self.run.events() if e.get("event") == "end" and e.get("reason") in FINAL]
        if ended:
            raise RunError(f"{self.run.path} has finished ({ended[-1]}); start a new search (or raise --trials or "
                           f"--budget with a new run)")
        snapshot = self.run.load_state()
        if snapshot:
            strategy_state, in_flight = snapshot
            self.comp.strategy.restore(strategy_state)
            asked = {t.id for t in in_flight}
            for trial, result in self.finished.values():  # told to the journal but not yet to the strategy
                if trial.id in asked:
                    self.comp.strategy.tell(trial, result.for_strategy())
            self.pending = [t for t in in_flight if t.id not in self.finished]
            self.reruns = list(self.pending)
        self.run.save_state(self.comp.strategy.state(), self.pending)

    # -- the loop's questions ------------------------------------------------------------------------------
    def wants(self, *, in_flight: int = 0) -> bool:
        """Whether another trial is needed, counting `in_flight` ones as if they will train."""
        return self.config.trials is None or self.trained + in_flight < self.config.trials

    def stop_reason(self) -> str | None:
        """failures, timeout or infeasible when no new trial may start, else None."""
        if self.failing:
            return "failures"
        if self.config.timeout is not None and time.time() - self.started > self.config.timeout:
            return "timeout"
        if self.infeasible_streak >= self.infeasible_limit:
            return "infeasible"
        return None

    def would_be_best(self, result: Result) -> bool:
        score = self.comp.strategy.score(result)
        return score is not None and (self.best is None or score > self.best_score())

    def best_score(self) -> float | None:
        return self.comp.strategy.score(self.best[1]) if self.best else None

    # -- trials --------------------------------------------------------------------------------------------
    def take(self) -> Trial:
        """The next trial: a rerun of one a killed run left in flight, else a new ask (snapshot saved)."""
        if self.reruns:
            return self.reruns.pop(0)
        trial = self.comp.strategy.ask()
        self.pending.append(trial)
        self.run.save_state(self.comp.strategy.state(), self.pending)
        return trial

    def start_progress(self, *, total: float | None, completed: float, suffix: str = "") -> Progress:
        self._bar = self.progress.add_task(f"{self.config.space}/{self.config.strategy}{suffix}", total=total,
                                           completed=completed)
        return self.progress

    def record(self, trial: Trial, result: Result, model: nn.Module | None = None, *, advance: float = 1.0) -> None:
        """Journals the result, tells the strategy, and exports a new best. The next ask saves the snapshot:
        a crash before it leaves this trial pending there and told in the journal, which a resume tells the
        strategy again (one snapshot per trial, not two)."""
        self.run.told(trial, result)
        self._count_failure(trial, result)
        self.comp.costs.observe(result.metrics)
        self.comp.strategy.tell(trial, result.for_strategy())
        self.pending.remove(trial)
        if result.status == "infeasible":
            self.infeasible_streak += 1
            return
        self.infeasible_streak = 0
        self.trained += 1
        if not self.console.quiet:  # rendering the line is most of a table lookup's time
            self.progress.console.print(trial_line(trial, result, self.comp))
        if self._bar is not None:
            self.progress.advance(self._bar, advance)
        if self.would_be_best(result):
            self.best = (trial, result)
            export_best(self.run, self.comp, trial, result, model, console=self.progress.console)

    def _count_failure(self, trial: Trial, result: Result) -> None:
        """Extends the streak of trials that raised the same exception (type and message), or ends it; an
        infeasible trial, which never ran the code that raised, leaves it as it is."""
        if result.status == "infeasible":
            return
        if result.traceback is None or (self.failures and self.failures[-1][1].error != result.error):
            self.failures = []
        if result.traceback is not None:
            self.failures.append((trial, result))

    @property
    def failing(self) -> bool:
        """Whether the last `max_repeated_failures` trials raised the same exception."""
        limit = self.config.max_repeated_failures
        return limit > 0 and len(self.failures) >= limit

    def _repeated_failure(self) -> tuple[dict[str, Any], RepeatedFailure]:
        """The end event's record of the repeated exception, and the error that says which and where its
        traceback was written."""
        trial, result = self.failures[-1]
        path = write_traceback(result.traceback or "", folder=traceback_folder(self.run.path),
                               name=f"traceback-trial-{trial.id}")
        ids = [t.id for t, _ in self.failures]
        record = {"failures": {"trials": ids, "error": result.error, "traceback": str(path)}}
        return record, RepeatedFailure(
            f"{len(ids)} trials in a row ({', '.join(map(str, ids))}) failed with {result.error}; its traceback is in "
            f"{path} (and each trial's in the journal); fix the cause, then `nasplat search --resume {self.run.path}`")

    def interrupted(self) -> str:
        self.console.print("[yellow]interrupted: the finished trials are kept; resume with "
                           f"`nasplat search --resume {self.run.path}`[/]")
        return "interrupted"

    def finish(self, reason: str, *, report: bool, **end: Any) -> SearchOutcome:
        """Saves the snapshot, completes best/ and the Pareto front, journals the end, writes the report.
        Raises RepeatedFailure after all that when the last trials raised the same exception."""
        if reason == "done" and self.failing:  # the last trials failed alike: the search found a bug, not an end
            reason = "failures"
        failure = self._repeated_failure() if reason == "failures" else None
        if failure:
            end = {**end, **failure[0]}
        self.run.save_state(self.comp.strategy.state(), self.pending)
        finish_best(self.run, console=self.console)
        if len(self.config.objectives) > 1:
            write_front(self.run, self.comp, console=self.console)
        self.run.append({"event": "end", "reason": reason, **end})
        if report:
            from ..report import write_report

            write_report(self.run.path)
        if failure:
            raise failure[1]
        return SearchOutcome(self.run, reason, self.best, self.trained)
