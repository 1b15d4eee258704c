"""Random search: uniform samples from the space, the baseline every strategy must beat."""
from __future__ import annotations

from nasplat.registry import register_strategy
from nasplat.strategy import Result, Strategy, Trial


@register_strategy("random")
class RandomSearch(Strategy):
    """Uniform samples from the space: the baseline every strategy must beat (any number of objectives)."""

    multi_objective = True

    def ask(self) -> Trial:
        params = self.initial.pop(0) if self.initial else self.space.sample(self.rng)
        return self._trial(params)

    def tell(self, trial: Trial, result: Result) -> None:
        """Random search learns nothing from results."""
