"""A tabular task over a CSV table of measured architectures, one row per architecture.

Tables are read once per file and kept (a benchmark asks the same table for hundreds of searches); a
changed file is read again. The task takes its column names as options, so one implementation serves
any table of the same schema: another dataset of the same benchmark, another signal, another report.
"""
from __future__ import annotations

import csv
import functools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import UserError
from .base import CHARGE, Answer, TabularTask


class Table:
    """Rows of a CSV file keyed by one column; every other column as a float (None where not a number)."""

    def __init__(self, path: Path, rows: Mapping[str, Mapping[str, float | None]], columns: Sequence[str], key: str):
        self.path = path
        self.rows = rows
        self.columns = tuple(columns)
        self.key = key
        self._checked: set[tuple[str, bool]] = set()  # columns found valid: a benchmark asks for each many times

    def __len__(self) -> int:
        return len(self.rows)

    def numeric(self, column: str, *, what: str, seconds: bool = False) -> None:
        """Raises ValueError unless `column` exists and holds a number in every row (with `seconds`, a
        finite one, at least 0)."""
        if (column, seconds) in self._checked:
            return
        if column not in self.columns or column == self.key:
            raise UserError(f"{what} {column!r} is not a column of {self.path}; numeric columns: "
                            f"{', '.join(c for c in self.columns if c != self.key)}")
        for name, row in self.rows.items():
            value = row[column]
            if value is None or (seconds and not (math.isfinite(value) and value >= 0)):
                raise UserError(f"{what} {column!r} of {self.path} is not "
                                f"{'a duration in seconds' if seconds else 'a number'} in the row of {name!r}")
        self._checked.add((column, seconds))


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


@functools.lru_cache(maxsize=4)
def _read(path: Path, key: str, mtime_ns: int, size: int) -> Table:
    """The parsed file; the modification time and size in the cache key make a changed file read again."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            columns = list(reader.fieldnames or [])
            if key not in columns:
                raise UserError(f"table {path} has no key column {key!r} (columns: {', '.join(columns) or 'none'}); "
                                f"is it a CSV file with a header row?")
            rows: dict[str, dict[str, float | None]] = {}
            for line, record in enumerate(reader, start=2):
                name = record[key]
                if name in rows:
                    raise UserError(f"table {path} line {line}: {key} {name!r} appears twice")
                rows[name] = {c: _number(record[c]) for c in columns if c != key}
    except (UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"table {path} is not a readable CSV file ({exc})") from None
    if not rows:
        raise UserError(f"table {path} has no rows")
    return Table(path, rows, columns, key)


def load_table(path: str | Path, *, key: str) -> Table:
    """The table at `path` keyed by column `key`, read on first use and cached."""
    resolved = Path(path).expanduser().resolve()
    try:
        stat = resolved.stat()
    except OSError as exc:
        raise UserError(f"table {path} cannot be read ({exc.strerror or exc})") from None
    if not resolved.is_file():
        raise UserError(f"table {path} is not a file")
    return _read(resolved, key, stat.st_mtime_ns, stat.st_size)


def _names(value: str | Sequence[str]) -> tuple[str, ...]:
    """Column names given as a sequence or as one comma-separated string (as on the command line)."""
    items = value.split(",") if isinstance(value, str) else value
    return tuple(name.strip() for name in items if name.strip())


class TableTask(TabularTask):
    """Answers from a CSV table: `signal` is what strategies see, `report` what is only reported, and a
    query is charged `epochs x time_columns[0] + time_columns[1]` simulated seconds (training epochs, then
    one evaluation; the second column is optional)."""

    def __init__(self, *, table: str | Path, key: str, signal: str, report: str | Sequence[str] = (),
                 time_columns: str | Sequence[str]):
        self.table = load_table(table, key=key)
        self.signal = signal
        self.report = _names(report)
        self.time_columns = _names(time_columns)
        self.table.numeric(signal, what="signal")
        for column in self.report:
            self.table.numeric(column, what="report column")
        if not 1 <= len(self.time_columns) <= 2:
            raise UserError(f"time columns {','.join(self.time_columns) or '(none)'}: give one or two, seconds per "
                            f"training epoch and, optionally, seconds per evaluation")
        for column in self.time_columns:
            self.table.numeric(column, what="time column", seconds=True)
        if CHARGE in self.report:
            raise UserError(f"report column {CHARGE!r} clashes with the charged time nasplat records")

    def query(self, key: str) -> Answer:
        row = self._row(key)
        return Answer(float(row[self.signal]), {c: float(row[c]) for c in self.report})  # type: ignore[arg-type]

    def charge(self, key: str, *, epochs: int) -> float:
        row = self._row(key)
        per_epoch, *per_query = (float(row[c]) for c in self.time_columns)  # type: ignore[arg-type]
        return round(epochs * per_epoch + sum(per_query), 6)

    def _row(self, key: str) -> Mapping[str, float | None]:
        try:
            return self.table.rows[key]
        except KeyError:
            raise KeyError(f"{key!r} is not in table {self.table.path}") from None

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "table": str(self.table.path), "signal": self.signal,
                "report": list(self.report), "time_columns": list(self.time_columns)}
