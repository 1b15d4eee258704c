"""What the verbs of the `nasplat` command share: the console, one-line errors, argparse types and flags."""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from rich.console import Console

from ..errors import UserError

console = Console(stderr=True, highlight=False)


class UsageError(UserError):
    """Bad input found by the CLI itself."""


def print_error(message: str, *, label: str = "error") -> None:
    """One line on stderr, never wrapped: scripts grep it."""
    sys.stderr.write(f"nasplat: {label}: {' '.join(message.split())}\n")


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit code 2 (no usage dump)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print_error(f"{message} (see `{self.prog} --help`)")
        raise SystemExit(2)


# flags whose values may start with '-' (a negative budget is bad input to report, not an unknown option)
_VALUE_FLAGS = ("--flops", "--params", "--latency", "--timeout", "--budget", "--seed")


def join_negative_values(argv: Sequence[str]) -> list[str]:
    """`--flops -1M` as `--flops=-1M`, which argparse would otherwise read as an unknown option."""
    out: list[str] = []
    for token in argv:
        if out and out[-1] in _VALUE_FLAGS and token.startswith("-") and token[1:2].isdigit():
            out[-1] = f"{out[-1]}={token}"
        else:
            out.append(token)
    return out


def whole_number(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number of at least `minimum`."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    return parse


positive_int = whole_number(1)


def decimal(minimum: float, *, above: bool) -> Callable[[str], float]:
    """An argparse type: a number above `minimum` (`above`), or at least it."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not (value > minimum if above else value >= minimum) or value != value:
            raise argparse.ArgumentTypeError(f"must be {'above' if above else 'at least'} {minimum:g}, got {text}")
        return value
    return parse


def comma_separated(text: str) -> list[str]:
    """"a, b,,c" -> ["a", "b", "c"]."""
    return [name.strip() for name in text.split(",") if name.strip()]


def option(text: str) -> tuple[str, object]:
    """KEY=VALUE, the value read as JSON where it is JSON (8, 0.5, true, [1, 2]) and as a string otherwise."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE (e.g. channels=16)")
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value


class Options(argparse.Action):
    """Collects repeated KEY=VALUE flags into one dict."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        getattr(namespace, self.dest).update([values])


def device_table_option(args: argparse.Namespace) -> dict[str, Any] | None:
    """--device table:COLUMN [--latency-table CSV] as a search's config holds it (search and bench)."""
    from ..cost.device_table import PREFIX

    if args.device and args.device.startswith(PREFIX):
        column = args.device[len(PREFIX):]
        if not column:
            raise UsageError("--device table: needs a column, e.g. table:lat_pixel3 (`nasplat list` names the "
                             "latency tables the spaces ship)")
        return {"column": column, "path": args.latency_table}
    if args.latency_table:
        raise UsageError("--latency-table is read by --device table:COLUMN: name the device's column too")
    return None
