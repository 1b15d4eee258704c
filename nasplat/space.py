"""SearchSpace base and its parameter declarations (Choice, IntRange, FloatRange)."""
from __future__ import annotations

import itertools
import math
import random
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from .arch import Arch
from .errors import UserError

if TYPE_CHECKING:  # torch is heavy; only the methods that build models need it
    from torch import nn

    from .constraints import Constraint
    from .cost import CostModel
    from .cost.lut import Unit


class Param(ABC):
    """One searched parameter: samples, mutates and checks its values."""

    @abstractmethod
    def sample(self, rng: random.Random) -> Any: ...

    @abstractmethod
    def mutate(self, value: Any, rng: random.Random) -> Any: ...

    @abstractmethod
    def contains(self, value: Any) -> bool: ...

    @abstractmethod
    def size(self) -> float:
        """Number of distinct values (math.inf for continuous ranges)."""

    def neighbours(self, value: Any) -> tuple[Any, ...] | None:
        """The values one step from `value`, or None where they cannot be enumerated (continuous ranges)."""
        return None

    def all_values(self) -> tuple[Any, ...] | None:
        """Every value, or None where they cannot be enumerated (continuous ranges)."""
        return None


@dataclass(frozen=True)
class Choice(Param):
    values: tuple[Any, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", tuple(self.values))
        if not self.values:
            raise ValueError("Choice needs at least one value")

    def sample(self, rng: random.Random) -> Any:
        return rng.choice(self.values)

    def mutate(self, value: Any, rng: random.Random) -> Any:
        others = [v for v in self.values if v != value]
        return rng.choice(others) if others else value

    def contains(self, value: Any) -> bool:
        return value in self.values

    def __str__(self) -> str:
        return "{" + ", ".join(map(str, self.values)) + "}"

    def size(self) -> float:
        return len(self.values)

    def all_values(self) -> tuple[Any, ...]:
        return self.values

    def neighbours(self, value: Any) -> tuple[Any, ...]:
        """Every other value: choices are unordered, so each is one step away."""
        return tuple(v for v in self.values if v != value)


@dataclass(frozen=True)
class IntRange(Param):
    low: int
    high: int
    step: int = 1

    def sample(self, rng: random.Random) -> int:
        return rng.randrange(self.low, self.high + 1, self.step)

    def mutate(self, value: int, rng: random.Random) -> int:
        if self.low == self.high:
            return value
        delta = rng.choice((-1, 1)) * self.step * max(1, int(abs(rng.gauss(0, 1.5))))
        clipped = min(self.high, max(self.low, value + delta))
        return clipped if clipped != value else min(self.high, max(self.low, value - delta))

    def contains(self, value: Any) -> bool:
        return isinstance(value, int) and self.low <= value <= self.high and (value - self.low) % self.step == 0

    def size(self) -> float:
        return (self.high - self.low) // self.step + 1

    def all_values(self) -> tuple[int, ...]:
        return tuple(range(self.low, self.high + 1, self.step))

    def neighbours(self, value: int) -> tuple[int, ...]:
        return tuple(v for v in (value - self.step, value + self.step) if self.low <= v <= self.high)

    def __str__(self) -> str:
        return f"{self.low}..{self.high}" + (f" step {self.step}" if self.step != 1 else "")


@dataclass(frozen=True)
class FloatRange(Param):
    low: float
    high: float
    log: bool = False

    def _to_unit(self, v: float) -> float:
        if self.log:
            return (math.log(v) - math.log(self.low)) / (math.log(self.high) - math.log(self.low))
        return (v - self.low) / (self.high - self.low)

    def _from_unit(self, u: float) -> float:
        u = min(1.0, max(0.0, u))
        if self.log:
            return math.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low)))
        return self.low + u * (self.high - self.low)

    def sample(self, rng: random.Random) -> float:
        return self._from_unit(rng.random())

    def mutate(self, value: float, rng: random.Random) -> float:
        """A Gaussian step of a tenth of the range, reflected at the bounds."""
        u = self._to_unit(value) + rng.gauss(0.0, 0.1)
        u = -u if u < 0 else (2 - u if u > 1 else u)
        return self._from_unit(u)

    def contains(self, value: Any) -> bool:
        return isinstance(value, (int, float)) and self.low <= value <= self.high

    def size(self) -> float:
        return math.inf

    def __str__(self) -> str:
        return f"[{self.low:g}, {self.high:g}]" + (" (log)" if self.log else "")


@dataclass(frozen=True)
class Target:
    """The configuration at which costs are measured and a deployed model runs."""

    input_shape: tuple[int, ...]  # batch first, e.g. (1, 3, 106, 106)
    num_classes: int

    def to_dict(self) -> dict[str, Any]:
        return {"input_shape": list(self.input_shape), "num_classes": self.num_classes}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Target:
        return cls(tuple(int(x) for x in data["input_shape"]), int(data["num_classes"]))


class SearchSpace(ABC):
    """A family of architectures: declares its parameters and builds a standalone model for an Arch.

    A space is one module that registers its class with `@register_space(name)`, found through an entry
    point of the group `nasplat.search_spaces` (docs/extending.md walks through one). The keyword-only
    arguments of `__init__` are its options (`--space-option KEY=VALUE`). The contract:

    Required (abstract, or a UserError naming the space where first used):
    - `parameters()`: the searched parameters, each a Choice, IntRange or FloatRange.
    - `build(arch, num_classes=)`: a fresh, untrained torch model for an Arch.
    - `target(arch)`: the input shape and classes at which costs are measured and the model deployed.
    - `smallest()`: the cheapest Arch. A budget (--flops, --params, --latency) it breaks is refused before
      a search starts, and --dry-run reports its costs. No default: which value costs least depends on what
      the space builds (choices are unordered, and a larger value may build a cheaper model).

    Optional, with defaults:
    - `complete()`: the Arch for searched values; a space overrides it to derive parameters instead of
      searching them (TinyNet solves its width for the budget). Default: the searched values as they are.
    - `validate()`: checks an Arch against `parameters()`; extend it for derived parameters.
    - `sample()`, `mutate()`, `neighbours()`, `size()`, `enumerate()`: from `parameters()`.
    - `proxy_scale()`: the proxy input side as a share of the task's (default 1.0).
    - `describe()`, `to_text()`, `parse()`: how reports and files name an Arch (default: its parameters, JSON).
    - `default_task` ("classification") and `default_task_options` (none).

    Optional capabilities, absent unless a space has them:
    - `latency_units()` and `latency_unit_space()`: the per-op decomposition latency lookup tables need.
    - `supernet()`: a weight-sharing supernet for one-shot strategies (the contract is in nasplat.oneshot).
    """

    name: ClassVar[str]
    default_task: ClassVar[str] = "classification"
    default_task_options: ClassVar[dict[str, Any]] = {}  # options of the default task that suit this space

    def __init__(self, **options: Any):
        self.options = options

    @abstractmethod
    def parameters(self) -> dict[str, Param]: ...

    @abstractmethod
    def build(self, arch: Arch, *, num_classes: int | None = None) -> nn.Module:
        """A fresh, untrained model; num_classes=None means the target's."""

    @abstractmethod
    def target(self, arch: Arch) -> Target: ...

    def complete(self, params: Mapping[str, Any], *, constraints: Sequence[Constraint] = (),
                 costs: CostModel | None = None) -> Arch:
        """The Arch for searched parameter values; spaces with derived parameters override this, solving them
        against `constraints` with `costs` (the search's cost model; fvcore MACs and params when None)."""
        return self.arch(params)

    def arch(self, params: Mapping[str, Any]) -> Arch:
        return Arch(self.name, params)

    def sample(self, rng: random.Random) -> dict[str, Any]:
        return {name: p.sample(rng) for name, p in self.parameters().items()}

    def mutate(self, params: Mapping[str, Any], rng: random.Random) -> dict[str, Any]:
        """Changes one searched parameter."""
        name = rng.choice(sorted(self.parameters()))
        return {**params, name: self.parameters()[name].mutate(params[name], rng)}

    def neighbours(self, params: Mapping[str, Any]) -> list[dict[str, Any]] | None:
        """Every parameter set one mutation away (one parameter changed by one step), or None when a
        parameter's steps cannot be enumerated; local search then samples mutations instead."""
        out: list[dict[str, Any]] = []
        for name, param in sorted(self.parameters().items()):
            values = param.neighbours(params[name])
            if values is None:
                return None
            out += [{**params, name: value} for value in values]
        return out

    def searched(self, arch: Arch) -> dict[str, Any]:
        """The searched parameters of an Arch (what a strategy proposes)."""
        return {name: arch[name] for name in self.parameters()}

    def validate(self, arch: Arch) -> None:
        """Raises ValueError naming what is wrong with an Arch that this space cannot build."""
        if arch.space != self.name:
            raise UserError(f"architecture is of space {arch.space!r}, not {self.name!r}")
        for name, param in self.parameters().items():
            if name not in arch:
                raise UserError(f"architecture lacks parameter {name!r}")
            if not param.contains(arch[name]):
                raise UserError(f"parameter {name!r}={arch[name]!r} lies outside {param}")

    def smallest(self) -> Arch:
        """The cheapest Arch of the space: no other has fewer MACs or params, or a lower latency, so that a
        budget it breaks is one no architecture meets. Required: budgets and --dry-run are checked with it.

        The base has no answer, since it cannot know which values build the cheapest model; it raises a
        UserError, one line that names the space and what to implement, instead of a traceback.
        """
        cls = type(self)
        raise UserError(f"search space {self.name!r} ({cls.__module__}.{cls.__qualname__}) does not define "
                        f"smallest(), which budgets and --dry-run need: return its cheapest Arch (see "
                        f"docs/extending.md)")

    def latency_units(self, arch: Arch) -> list[Unit]:
        """`arch` decomposed into the ops a latency lookup table keys (nasplat.cost.lut), in the order the
        model runs them, together covering its whole forward pass at the target configuration."""
        raise NotImplementedError(f"space {self.name!r} has no per-op decomposition; its latency can only be "
                                  f"measured whole")

    def latency_unit_space(self) -> Iterator[Unit]:
        """Every distinct unit `latency_units` can return for an architecture of the space, each once."""
        raise NotImplementedError(f"space {self.name!r} has no per-op decomposition; its latency can only be "
                                  f"measured whole")

    def proxy_scale(self, arch: Arch) -> float:
        """Input size on the proxy task as a fraction of the task's base resolution."""
        return 1.0

    def describe(self, arch: Arch) -> str:
        return " ".join(f"{k}={v}" for k, v in arch.items())

    def to_text(self, arch: Arch) -> str:
        """How files name an architecture (the `arch` column of latency tables and measured CSVs): the Arch's
        JSON; tabular spaces, whose tables key rows by their own string, return `describe()` there."""
        return arch.to_json()

    def parse(self, text: str) -> Arch:
        """The Arch that `to_text` names (ValueError, one line, for text that names none of this space)."""
        try:
            arch = Arch.from_json(text)
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(f"cannot read {text[:80]!r} as a {self.name} architecture (the JSON that "
                            f"arch.json holds under \"arch\"): {exc}") from None
        self.validate(arch)
        return arch

    def size(self) -> float:
        return math.prod(p.size() for p in self.parameters().values())

    def enumerate(self) -> Iterator[Arch]:
        """Every architecture of a space of finitely many searched parameter sets, completed without
        constraints (ValueError for a space with continuous parameters)."""
        params = self.parameters()
        values = {name: p.all_values() for name, p in params.items()}
        endless = [name for name, v in values.items() if v is None]
        if endless:
            raise UserError(f"space {self.name!r} cannot be enumerated: {', '.join(endless)} is continuous")
        for combination in itertools.product(*values.values()):
            yield self.complete(dict(zip(values, combination)))
