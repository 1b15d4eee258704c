"""Name -> class registries for search spaces, strategies and tasks.

Importing a plug-in module registers it (`@register_space("tinynet")`); the modules themselves are found
through entry points (`nasplat.search_spaces`, `nasplat.strategies`, `nasplat.tasks`), so a third-party
package adds a space exactly the way nasplat adds its own, and the core never imports a plug-in by name.
"""
from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from .errors import UserError

T = TypeVar("T")


class UnknownName(UserError, LookupError):
    """Raised for a name no plug-in registered; the message lists the known names."""


class Registry(Generic[T]):
    def __init__(self, kind: str, group: str):
        self.kind = kind
        self.group = group
        self._items: dict[str, type[T]] = {}
        self._discovered = False

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        def decorate(cls: type[T]) -> type[T]:
            if name in self._items and self._items[name] is not cls:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = cls
            cls.name = name  # type: ignore[attr-defined]
            return cls
        return decorate

    def _discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        for ep in entry_points(group=self.group):
            try:
                ep.load()  # importing the module runs its @register_* decorators
            except Exception as exc:  # one broken plug-in must not hide the others
                warnings.warn(f"{self.kind} plug-in {ep.name!r} ({ep.value}) failed to load: {exc}", stacklevel=2)

    def get(self, name: str) -> type[T]:
        self._discover()
        if name not in self._items:
            known = ", ".join(sorted(self._items)) or "none installed"
            raise UnknownName(f"unknown {self.kind} {name!r}; known: {known}")
        return self._items[name]

    def names(self, pattern: str = "*") -> list[str]:
        self._discover()
        return sorted(n for n in self._items if fnmatch.fnmatch(n, pattern))

    def create(self, name: str, *args: Any, **kwargs: Any) -> T:
        return self.get(name)(*args, **kwargs)


SPACES: Registry[Any] = Registry("search space", "nasplat.search_spaces")
STRATEGIES: Registry[Any] = Registry("strategy", "nasplat.strategies")
TASKS: Registry[Any] = Registry("task", "nasplat.tasks")

register_space = SPACES.register
register_strategy = STRATEGIES.register
register_task = TASKS.register


def list_spaces(pattern: str = "*") -> list[str]:
    return SPACES.names(pattern)


def list_strategies(pattern: str = "*") -> list[str]:
    return STRATEGIES.names(pattern)


def list_tasks(pattern: str = "*") -> list[str]:
    return TASKS.names(pattern)
