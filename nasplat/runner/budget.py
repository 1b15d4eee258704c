"""Simulated time: the seconds a tabular task charges for its queries, and the budget that ends a search."""
from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..errors import UserError
from ..tasks.base import CHARGE, TabularTask

if TYPE_CHECKING:
    from ..arch import Arch
    from ..space import SearchSpace
    from ..strategy import Result, Trial


def check_budget(budget: float | None, task: Any) -> None:
    """A simulated budget needs a task that knows what a query costs before making it."""
    if budget is not None and not isinstance(task, TabularTask):
        raise UserError(f"a simulated-time budget needs a task answered from a table, and task "
                        f"{getattr(task, 'name', type(task).__name__)!r} trains; bound its wall time with "
                        f"--timeout instead")


class SimulatedClock:
    """The simulated seconds a search has been charged, and its optional budget.

    A query is charged the task's `charge()` for its Arch at the search's epochs, which is known before the
    query is made, so the query that would take the total over the budget is never made. An Arch queried
    before in the same search is answered again free: a table's answer cannot change. Built from the
    journal's results, so a resumed search stands where the killed one stood.
    """

    def __init__(self, task: TabularTask, space: SearchSpace, *, epochs: int, budget: float | None,
                 finished: Iterable[tuple[Trial, Result]] = ()):
        self.task = task
        self.space = space
        self.epochs = epochs
        self.budget = budget
        self.spent = 0.0
        self.seen: set[Arch] = set()
        for trial, result in finished:
            self.record(trial.arch, float(result.held_out.get(CHARGE, 0.0)))

    def charge(self, arch: Arch) -> float:
        """What querying `arch` now would cost: nothing for a repeat or for an Arch the table lacks (that
        query fails without being made)."""
        if arch in self.seen:
            return 0.0
        try:
            return self.task.charge(self.space.describe(arch), epochs=self.epochs)
        except (LookupError, ValueError):
            return 0.0

    def affords(self, seconds: float) -> bool:
        return self.budget is None or self.spent + seconds <= self.budget

    def record(self, arch: Arch, seconds: float) -> None:
        self.spent += seconds
        self.seen.add(arch)

    def is_repeat(self, arch: Arch) -> bool:
        return arch in self.seen
