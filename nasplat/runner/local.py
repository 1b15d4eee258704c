"""The local runner: drives an ask/tell strategy in-process, journaling every step so a kill -9 resumes."""
from __future__ import annotations

import time
from dataclasses import dataclass, replace

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..run import RunDir, RunError
from ..strategy import Result, Trial
from ..tasks.base import CHARGE, TabularTask
from ..units import format_count, format_ms, format_time
from .budget import SimulatedClock, check_budget
from .components import Components, build_components, export_best, finish_best, latency_record, write_front
from .trial import evaluate

# a strategy that proposes only infeasible architectures would never finish: stop after this many per trial
MAX_INFEASIBLE_PER_TRIAL = 25
# under a simulated budget a repeated query is free, so a strategy that only re-asks what it has seen would
# never finish either: stop after this many repeats in a row (and this many infeasible ones when no number
# of trials is set)
MAX_FREE_IN_A_ROW = 1000
FINAL = ("done", "budget", "repeats")  # end reasons after which a run cannot be resumed


@dataclass
class SearchOutcome:
    run: RunDir
    reason: str  # done | budget | timeout | interrupted | infeasible | repeats
    best: tuple[Trial, Result] | None
    finished: int  # evaluated trials (ok or failed), repeated queries included


def _trial_line(trial: Trial, result: Result, comp: Components) -> str:
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


def run_search(run: RunDir, *, resume: bool = False, console: Console | None = None,
               components: Components | None = None, report: bool = True) -> SearchOutcome:
    """Drives the strategy until the trials, the timeout or the simulated budget run out.

    A tabular task's queries are charged simulated seconds (`SimulatedClock`), journaled with each result
    but held out from the strategy, which is told `result.for_strategy()`. `report=False` skips the plots
    and summary at the end (a benchmark of hundreds of searches draws its own).
    """
    console = console or Console(stderr=True)
    config = run.config()
    comp = components or build_components(config, run)
    check_budget(config.budget, comp.task)
    finished = run.results()
    pending: list[Trial] = []
    if resume:
        ended = [e.get("reason") for e in run.events() if e.get("event") == "end" and e.get("reason") in FINAL]
        if ended:
            raise RunError(f"{run.path} has finished ({ended[-1]}); start a new search (or raise --trials or "
                           f"--budget with a new run)")
        snapshot = run.load_state()
        if snapshot:
            strategy_state, in_flight = snapshot
            comp.strategy.restore(strategy_state)
            for trial in in_flight:  # told to the journal but not yet to the strategy: tell; else rerun
                if trial.id in finished:
                    comp.strategy.tell(trial, finished[trial.id][1].for_strategy())
                else:
                    pending.append(trial)
        run.save_state(comp.strategy.state(), pending)
    run.append({"event": "start", "resumed": resume, "pending": [t.id for t in pending],
                **latency_record(comp)})

    scored = [(comp.strategy.score(r), t, r) for t, r in finished.values() if comp.strategy.score(r) is not None]
    best = max(scored, key=lambda x: x[0])[1:] if scored else None
    trained = sum(1 for _, r in finished.values() if r.status != "infeasible")
    clock = SimulatedClock(comp.task, comp.space, epochs=comp.epochs, budget=config.budget,
                           finished=finished.values()) if isinstance(comp.task, TabularTask) else None
    infeasible_limit = MAX_INFEASIBLE_PER_TRIAL * config.trials if config.trials else MAX_FREE_IN_A_ROW
    infeasible_streak, repeat_streak, start, reason = 0, 0, time.time(), "done"
    end: dict[str, object] = {}

    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console,
                        transient=False)
    by_budget = config.trials is None and clock is not None and config.budget is not None
    bar = progress.add_task(f"{config.space}/{config.strategy}" + (" (simulated s)" if by_budget else ""),
                            total=config.budget if by_budget else config.trials,
                            completed=clock.spent if by_budget and clock else trained)
    try:
        with progress:
            while config.trials is None or trained < config.trials:
                if config.timeout is not None and time.time() - start > config.timeout:
                    reason = "timeout"
                    break
                if infeasible_streak >= infeasible_limit:
                    reason = "infeasible"
                    break
                if repeat_streak >= MAX_FREE_IN_A_ROW:
                    reason = "repeats"
                    break
                if pending:
                    trial = pending[0]
                else:
                    trial = comp.strategy.ask()
                    pending.append(trial)
                    run.save_state(comp.strategy.state(), pending)
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
                run.told(trial, result)
                # the next ask saves the snapshot; a crash before it leaves this trial pending there and told
                # in the journal, which a resume tells the strategy again (one snapshot per trial, not two)
                comp.strategy.tell(trial, result.for_strategy())
                pending.remove(trial)
                if result.status == "infeasible":
                    infeasible_streak += 1
                    continue
                infeasible_streak = 0
                trained += 1
                if not console.quiet:  # rendering the line is most of a table lookup's time
                    progress.console.print(_trial_line(trial, result, comp))
                progress.advance(bar, charge if by_budget else 1)
                score = comp.strategy.score(result)
                if score is not None and (best is None or score > comp.strategy.score(best[1])):
                    best = (trial, result)
                    export_best(run, comp, trial, result, outcome.model, console=progress.console)
    except KeyboardInterrupt:
        reason = "interrupted"
        console.print("[yellow]interrupted: the finished trials are kept; resume with "
                      f"`nasplat search --resume {run.path}`[/]")
    run.save_state(comp.strategy.state(), pending)
    finish_best(run, console=console)
    if len(config.objectives) > 1:
        write_front(run, comp, console=console)
    if clock:
        end["simulated_seconds"] = round(clock.spent, 4)
    run.append({"event": "end", "reason": reason, **end})
    if report:
        from ..report import write_report

        write_report(run.path)
    return SearchOutcome(run, reason, best, trained)
