"""The local runner: drives an ask/tell strategy in-process, journaling every step so a kill -9 resumes."""
from __future__ import annotations

import time
from dataclasses import dataclass

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..run import RunDir, RunError
from ..strategy import Result, Trial
from ..units import format_count, format_time
from .components import Components, build_components, export_best, finish_best
from .trial import evaluate

# a strategy that proposes only infeasible architectures would never finish: stop after this many per trial
MAX_INFEASIBLE_PER_TRIAL = 25


@dataclass
class SearchOutcome:
    run: RunDir
    reason: str  # done | timeout | interrupted | infeasible
    best: tuple[Trial, Result] | None
    finished: int  # trained trials (ok or failed)


def _trial_line(trial: Trial, result: Result, comp: Components) -> str:
    m = result.metrics
    cost = f"MACs {format_count(m['macs'])}  params {format_count(m['params'])}" if "macs" in m else ""
    head = f"trial {trial.id:>3}  {comp.space.describe(trial.arch).split(' | ')[0]}  {cost}"
    if result.ok:
        return f"{head}  acc {m['accuracy']:.2f}% @{m['input_size']}px  ({format_time(m['seconds'])})"
    return f"{head}  [{result.status}] {result.error}"


def run_search(run: RunDir, *, resume: bool = False, console: Console | None = None,
               components: Components | None = None) -> SearchOutcome:
    console = console or Console(stderr=True)
    config = run.config()
    comp = components or build_components(config, run)
    finished = run.results()
    pending: list[Trial] = []
    if resume:
        if any(e.get("event") == "end" and e.get("reason") == "done" for e in run.events()):
            raise RunError(f"{run.path} has finished; start a new search (or raise --trials with a new run)")
        snapshot = run.load_state()
        if snapshot:
            strategy_state, in_flight = snapshot
            comp.strategy.restore(strategy_state)
            for trial in in_flight:  # told to the journal but not yet to the strategy: tell; else rerun
                if trial.id in finished:
                    comp.strategy.tell(trial, finished[trial.id][1])
                else:
                    pending.append(trial)
        run.save_state(comp.strategy.state(), pending)
    run.append({"event": "start", "resumed": resume, "pending": [t.id for t in pending]})

    scored = [(comp.strategy.score(r), t, r) for t, r in finished.values() if comp.strategy.score(r) is not None]
    best = max(scored, key=lambda x: x[0])[1:] if scored else None
    trained = sum(1 for _, r in finished.values() if r.status != "infeasible")
    infeasible_streak, start, reason = 0, time.time(), "done"

    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console,
                        transient=False)
    bar = progress.add_task(f"{config.space}/{config.strategy}", total=config.trials, completed=trained)
    try:
        with progress:
            while trained < config.trials:
                if config.timeout is not None and time.time() - start > config.timeout:
                    reason = "timeout"
                    break
                if infeasible_streak >= MAX_INFEASIBLE_PER_TRIAL * config.trials:
                    reason = "infeasible"
                    break
                if pending:
                    trial = pending[0]
                else:
                    trial = comp.strategy.ask()
                    pending.append(trial)
                    run.save_state(comp.strategy.state(), pending)
                run.asked(trial)

                def on_epoch(epoch: int, metrics: dict, trial: Trial = trial) -> None:
                    run.append({"event": "epoch", "trial": trial.id, "epoch": epoch, "metrics": metrics})

                outcome = evaluate(trial, space=comp.space, task=comp.task, constraints=config.constraints,
                                   epochs=comp.epochs, seed=config.seed, on_epoch=on_epoch)
                result = outcome.result
                run.told(trial, result)
                comp.strategy.tell(trial, result)
                pending.remove(trial)
                run.save_state(comp.strategy.state(), pending)
                if result.status == "infeasible":
                    infeasible_streak += 1
                    continue
                infeasible_streak = 0
                trained += 1
                progress.console.print(_trial_line(trial, result, comp))
                progress.advance(bar)
                score = comp.strategy.score(result)
                if score is not None and (best is None or score > comp.strategy.score(best[1])):
                    best = (trial, result)
                    export_best(run, comp, trial, result, outcome.model, console=progress.console)
    except KeyboardInterrupt:
        reason = "interrupted"
        console.print("[yellow]interrupted: the finished trials are kept; resume with "
                      f"`nasplat search --resume {run.path}`[/]")
    finish_best(run, console=console)
    run.append({"event": "end", "reason": reason})
    from ..report import write_report

    write_report(run.path)
    return SearchOutcome(run, reason, best, trained)
