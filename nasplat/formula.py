"""TinyNet's "tiny formula": search at several MAC budgets, fit r and d against log-budget by Gaussian-process
regression on the best models, and predict (r, d) for a new budget; the space then solves the width."""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .constraints import Constraint, limit_of
from .errors import UserError
from .run import RunDir
from .units import format_count, parse_count

if TYPE_CHECKING:
    from rich.console import Console

FITTED = ("r", "d")


def _regressor(theta: Sequence[float] | None = None):
    """RBF + white noise on log-budget; with `theta` the fitted hyper-parameters are reused, not re-optimised."""
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

    kernel = ConstantKernel(1.0, (1e-3, 1e3)) * RBF(1.0, (0.1, 20.0)) + WhiteKernel(1e-2, (1e-6, 1.0))
    if theta is not None:
        kernel = kernel.clone_with_theta(np.asarray(theta))
    return GaussianProcessRegressor(kernel=kernel, normalize_y=True, optimizer=None if theta is not None
                                    else "fmin_l_bfgs_b", random_state=0)


@dataclass
class Formula:
    space: str
    points: list[dict[str, float]]  # the best models per budget: {"budget", "r", "d", "accuracy"}
    theta: dict[str, list[float]]  # fitted kernel hyper-parameters per fitted parameter

    @classmethod
    def fit(cls, space: str, points: Sequence[Mapping[str, float]]) -> Formula:
        if len({p["budget"] for p in points}) < 2:
            raise UserError("the formula needs the best models of at least two budgets")
        x = np.log([[p["budget"]] for p in points])
        theta = {}
        for name in FITTED:
            gpr = _regressor().fit(x, [p[name] for p in points])
            theta[name] = gpr.kernel_.theta.tolist()
        return cls(space, [dict(p) for p in points], theta)

    def predict(self, budget: float) -> dict[str, float]:
        x = np.log([[p["budget"]] for p in self.points])
        out = {}
        for name in FITTED:
            gpr = _regressor(self.theta[name]).fit(x, [p[name] for p in self.points])
            out[name] = round(float(gpr.predict(np.log([[budget]]))[0]), 3)
        return out

    def initial_points(self, space: str, constraints: Sequence[Constraint]) -> list[dict[str, Any]]:
        """The predicted (r, d) for the MAC budget of a search, clipped into the space's ranges."""
        from .registry import SPACES

        if space != self.space:
            raise UserError(f"the formula was fitted on space {self.space!r}, not {space!r}")
        budget = limit_of(constraints, "macs")
        if budget is None:
            raise UserError("--prior needs a MAC budget (--flops) to predict for")
        params = SPACES.create(space).parameters()
        point = self.predict(budget)
        return [{k: min(params[k].high, max(params[k].low, v)) for k, v in point.items()}]

    def save(self, path: Path) -> None:
        table = {format_count(b): self.predict(b) for b in sorted({p["budget"] for p in self.points})}
        path.write_text(json.dumps({**asdict(self), "predictions": table}, indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Formula:
        try:
            data = json.loads(Path(path).read_text())
            return cls(data["space"], data["points"], data["theta"])
        except FileNotFoundError:
            raise UserError(f"--prior {path}: no such file (make one with `nasplat formula`)") from None
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise UserError(f"--prior {path} is not a formula file written by `nasplat formula` ({exc})") from None


def _search_budget(space: str, limit: float, *, folder: Path, trials: int, epochs: int | None, seed: int,
                   strategy: str, data: str | None, console: Console | None) -> RunDir:
    """The finished search of one budget: reused if `folder` has one, resumed if killed, else started."""
    from .api import resume, search

    runs = sorted(p for p in folder.glob("*/config.json")) if folder.exists() else []
    for config in runs:
        run = RunDir.open(config.parent)
        ends = [e for e in run.events() if e.get("event") == "end"]
        if ends and ends[-1].get("reason") == "done":
            return run
        if not any(e.get("reason") == "done" for e in ends):
            return resume(run.path, console=console).run
    return search(space, strategy=strategy, flops=limit, trials=trials, epochs=epochs, seed=seed, out=folder,
                  data=data, console=console).run


def fit_formula(space: str, *, budgets: Sequence[str | float], trials: int, epochs: int | None, seed: int,
                out: Path, strategy: str = "random", data: str | None = None, top_k: int = 3,
                console: Console | None = None) -> Path:
    """One search per budget (in out/<budget>/, reused or resumed when run again), then the GPR fit on the
    top_k feasible models of each budget; writes out/formula.json."""
    out.mkdir(parents=True, exist_ok=True)
    points = []
    for limit in sorted(parse_count(b, what="--flops budget") for b in budgets):
        run = _search_budget(space, limit, folder=out / format_count(limit), trials=trials, epochs=epochs,
                             seed=seed, strategy=strategy, data=data, console=console)
        ranked = sorted(((r.metrics["accuracy"], t) for t, r in run.results().values() if r.ok),
                        key=lambda x: -x[0])[:top_k]
        points += [{"budget": limit, "r": t.arch["r"], "d": t.arch["d"], "accuracy": acc} for acc, t in ranked]
    formula = Formula.fit(space, points)
    path = out / "formula.json"
    formula.save(path)
    return path
