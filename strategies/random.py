"""Random search: uniform samples from the space, the baseline every strategy must beat."""
from __future__ import annotations

from nasplat.registry import register_strategy
from nasplat.strategy import Result, Strategy, Trial


@register_strategy("random")
class RandomSearch(Strategy):
    """Uniform samples from the space: the baseline every strategy must beat (any number of objectives).
    Where the constraints are free to check, uniform over the feasible architectures (rejection sampling)."""

    multi_objective = True

    def ask(self) -> Trial:
        if self.initial:
            return self._trial(self.initial.pop(0))
        return self._trial(self._draw(lambda: self.space.sample(self.rng), what="random samples"))

    def tell(self, trial: Trial, result: Result) -> None:
        """Random search learns nothing from results."""
