"""Parsing and printing of counts ("24M", "1.5G", "300K") and durations ("5ms", "12000s")."""
from __future__ import annotations

import math
import re

from .errors import UserError

_COUNT = {"": 1.0, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
_TIME = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
_NUMBER = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)"


def _positive(value: float, text: str, what: str) -> float:
    if not math.isfinite(value) or value <= 0:
        raise UserError(f"{what} must be positive, got {text!r}")
    return value


def parse_count(text: str | float | int, *, what: str = "count") -> float:
    """'24M' -> 24e6. Suffixes K, M, G, T (case-insensitive); a bare number is taken as is."""
    if isinstance(text, (int, float)):
        return _positive(float(text), str(text), what)
    match = re.fullmatch(_NUMBER + r"\s*([kKmMgGtT]?)", str(text).strip())
    if not match:
        raise UserError(f"{what} {text!r} is not a number with an optional K/M/G/T suffix, e.g. 24M or 1.5G")
    return _positive(float(match.group(1)) * _COUNT[match.group(2).upper()], str(text), what)


def parse_time(text: str | float | int, *, what: str = "time") -> float:
    """'5ms' -> 0.005 seconds. Suffixes us, ms, s, m/min, h; a bare number is seconds."""
    if isinstance(text, (int, float)):
        return _positive(float(text), str(text), what)
    match = re.fullmatch(_NUMBER + r"\s*(us|ms|s|min|m|h)?", str(text).strip())
    if not match:
        raise UserError(f"{what} {text!r} is not a duration such as 5ms, 30s, 10min or 2h")
    return _positive(float(match.group(1)) * _TIME[match.group(2) or "s"], str(text), what)


def format_count(value: float, *, digits: int = 3) -> str:
    """24.4e6 -> '24.4M'."""
    for suffix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.{digits}g}{suffix}"
    return f"{value:.{digits}g}"


def format_time(seconds: float) -> str:
    """0.0052 -> '5.2ms', 754 -> '12m34s'."""
    if seconds < 1e-3:
        return f"{seconds * 1e6:.3g}us"
    if seconds < 1:
        return f"{seconds * 1e3:.3g}ms"
    if seconds < 60:
        return f"{seconds:.3g}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def format_ms(milliseconds: float) -> str:
    """4.837 -> '4.84ms' (latency figures are kept in milliseconds)."""
    return f"{milliseconds:.3g}ms"
