"""Latency read from a table of measured architectures: one column per device, one row per architecture.

A device that nasplat cannot reach (a phone, an ASIC) was measured once for every architecture of a tabular
space; such a table is the search's latency source with `--device table:COLUMN`: exact (the device's own
figure, no model built) and free to query, so strategies may check a latency limit before they propose.
Rows are keyed by the space's architecture string (`space.to_text(arch)`, the `arch` column), the key the
NAS-Bench-201 tables share. nasplat ships such a table for NAS-Bench-201 (`nasplat/data/hw_latency/`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UserError
from ..tasks.tabular import Table, load_table
from .latency import LatencyError

if TYPE_CHECKING:
    from ..arch import Arch
    from ..space import SearchSpace

KEY = "arch"
PREFIX = "table:"  # --device table:COLUMN


def parse_percentile(text: str) -> float | None:
    """'p25' -> 25.0; None for anything that does not start with p (a limit in time units)."""
    text = text.strip().lower()
    if not text.startswith("p"):
        return None
    try:
        value = float(text[1:])
    except ValueError:
        value = math.nan
    if not 0 < value < 100:
        raise UserError(f"--latency {text}: a percentile limit is pNN with 0 < NN < 100, e.g. p25")
    return value


def default_table(space: SearchSpace, task_table: Path | None = None, *, column: str | None = None) -> Path:
    """The table a `table:COLUMN` device reads when no --latency-table is given: the search's own table
    where it has that column, else the latency table the space ships (`latency_table`)."""
    if task_table is not None and column is not None:
        with_column = load_table(task_table, key=KEY)
        if column in with_column.columns:
            return Path(task_table)
    shipped = getattr(space, "latency_table", None)
    if shipped is None:
        raise LatencyError(f"--device table:...: space {space.name!r} ships no latency table; give one with "
                           f"--latency-table CSV (an `arch` column of {space.name} architecture strings and one "
                           f"latency column in ms per device)")
    return Path(shipped)


@dataclass(frozen=True)
class DeviceTable:
    """One device's column of a latency table, in milliseconds per architecture."""

    path: Path
    column: str

    @classmethod
    def open(cls, path: str | Path, column: str) -> DeviceTable:
        """Checks that the file is a table keyed by `arch` whose `column` is a number in every row (one line
        naming the device columns it has, else)."""
        try:
            table = load_table(path, key=KEY)
            if column not in table.columns or column == KEY:
                raise UserError(f"--device table:{column}: {path} has no column {column!r}; its device columns: "
                                f"{', '.join(latency_columns(table)) or 'none'}")
            table.numeric(column, what="latency column")
        except ValueError as exc:
            raise LatencyError(str(exc)) from None
        return cls(Path(table.path), column)

    @property
    def table(self) -> Table:
        return load_table(self.path, key=KEY)

    def predict(self, space: SearchSpace, arch: Arch) -> float:
        """The device's latency of `arch`, in ms (LatencyError when the table has no row for it)."""
        key = space.to_text(arch)
        row = self.table.rows.get(key)
        if row is None:
            raise LatencyError(f"latency table {self.path} has no row for the {space.name} architecture {key!r}: "
                               f"a table device must list every architecture the space can produce")
        return float(row[self.column])  # type: ignore[arg-type]

    def check_space(self, space: SearchSpace, *, limit: int = 100_000) -> None:
        """Fails before the search starts when the table misses an architecture of a space small enough to
        enumerate (NAS-Bench-201's 15,625), rather than at the trial that draws it."""
        size = space.size()
        if not math.isfinite(size) or size > limit:
            return
        rows = self.table.rows
        for arch in space.enumerate():
            if space.to_text(arch) not in rows:
                raise LatencyError(f"latency table {self.path} has no row for the {space.name} architecture "
                                   f"{space.to_text(arch)!r} ({len(rows)} rows for {int(size)} architectures)")

    def percentile(self, q: float) -> float:
        """The q-th percentile (0 < q < 100) of the column, in ms: a limit that a share q of the table meets."""
        import numpy as np

        return float(np.percentile(self.values(), q))

    def values(self) -> list[float]:
        return [float(row[self.column]) for row in self.table.rows.values()]  # type: ignore[arg-type]

    def describe(self) -> dict[str, Any]:
        """What bundles and the journal record of it."""
        return {"kind": "table", "path": str(self.path), "column": self.column}

    def __str__(self) -> str:
        return f"column {self.column} of {self.path.name}"


def latency_columns(table: Table) -> list[str]:
    """The columns of a latency table other than its keys (`arch`, and `index` where present)."""
    return [c for c in table.columns if c not in (KEY, "index")]
