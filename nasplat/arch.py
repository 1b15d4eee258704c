"""Arch: an immutable architecture, a space name plus a mapping of parameter name to value."""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from typing import Any

from .errors import UserError

Value = Any  # int, float, str, bool, or (nested) tuples of them


def _freeze(value: Any) -> Value:
    """Lists become tuples so that an Arch is hashable and JSON round-trips to an equal Arch."""
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, Mapping):
        raise TypeError("Arch values may not be mappings; flatten them into named parameters")
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    raise TypeError(f"Arch values must be int, float, str, bool or tuples of them, not {type(value).__name__}")


class Arch(Mapping[str, Value]):
    """A frozen architecture: `space` names the search space, the mapping holds its parameters.

    `to_json()` is canonical (sorted keys, no spaces), so equal architectures give equal strings and
    `key()`, a short hash of that string, names an architecture in caches, journals and file names.
    """

    __slots__ = ("_space", "_params", "_json")

    def __init__(self, space: str, params: Mapping[str, Any]):
        if not isinstance(space, str) or not space:
            raise UserError("an Arch needs the name of its search space")
        frozen = {str(k): _freeze(v) for k, v in sorted(params.items())}
        object.__setattr__(self, "_space", space)
        object.__setattr__(self, "_params", frozen)
        object.__setattr__(self, "_json", json.dumps({"space": space, "params": frozen},
                                                      sort_keys=True, separators=(",", ":")))

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Arch is immutable; use replace() for a changed copy")

    @property
    def space(self) -> str:
        return self._space

    def __getitem__(self, name: str) -> Value:
        return self._params[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._params)

    def __len__(self) -> int:
        return len(self._params)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Arch) and other._json == self._json

    def __hash__(self) -> int:
        return hash(self._json)

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self._params.items())
        return f"Arch({self._space}: {inner})"

    def replace(self, **changes: Any) -> Arch:
        return Arch(self._space, {**self._params, **changes})

    def to_dict(self) -> dict[str, Any]:
        return json.loads(self._json)

    def to_json(self) -> str:
        return self._json

    def key(self) -> str:
        """A 12-hex-digit hash of the canonical JSON: stable across processes and versions."""
        return hashlib.sha256(self._json.encode()).hexdigest()[:12]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Arch:
        if not isinstance(data, Mapping) or "space" not in data or not isinstance(data.get("params"), Mapping):
            raise UserError('an architecture must be a JSON object {"space": NAME, "params": {...}}')
        return cls(data["space"], data["params"])

    @classmethod
    def from_json(cls, text: str) -> Arch:
        return cls.from_dict(json.loads(text))
