"""nasplat: neural architecture search for small hardware."""
from .arch import Arch
from .constraints import Constraint
from .registry import (list_spaces, list_strategies, list_tasks, register_space, register_strategy,
                       register_task)
from .space import Choice, FloatRange, IntRange, SearchSpace, Target
from .strategy import Result, Strategy, Trial

__version__ = "0.1.0"


def __getattr__(name: str):
    """The verbs load lazily: `import nasplat` stays light, `nasplat.search(...)` works."""
    if name in ("search", "resume", "start", "dry_run"):
        from . import api

        return getattr(api, name)
    if name == "load":
        from .export import load

        return load
    raise AttributeError(f"module 'nasplat' has no attribute {name!r}")

__all__ = [
    "Arch", "Choice", "Constraint", "FloatRange", "IntRange", "Result", "SearchSpace", "Strategy",
    "Target", "Trial", "list_spaces", "list_strategies", "list_tasks", "register_space",
    "register_strategy", "register_task", "search", "resume", "start", "dry_run", "load",
]
