"""Units for people: durations and sizes, parsed from options and formatted for output.

The command line reads ``--older-than 7d`` and ``--max-size 2G`` here, and
the command line and doctor both print sizes with :func:`format_size`, so a
size reads the same everywhere.  Imports nothing from safecache.
"""

from __future__ import annotations

import math
import re

_DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?|\.\d+)\s*([smhdw])", re.IGNORECASE)


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``7d``, ``12h``, ``30m``, ``90s``,
    ``1.5h`` or ``1h30m`` (units s, m, h, d, w).  Raises ``ValueError`` with
    a message for people."""
    value = text.strip()
    hint = "use a number and a unit (s, m, h, d, w): 7d, 12h, 30m, 90s, 1h30m"
    if not value:
        raise ValueError(f"invalid duration {text!r}: {hint}")
    if value.startswith("-"):
        raise ValueError(f"invalid duration {text!r}: a duration cannot be negative; {hint}")
    if re.fullmatch(r"\d+(?:\.\d+)?", value):
        raise ValueError(f"invalid duration {text!r}: a unit is needed ({value}s? {value}d?); {hint}")
    pos = 0
    total = 0.0
    for match in _DURATION_PART.finditer(value):
        if value[pos:match.start()].strip():
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2).lower()]
        pos = match.end()
    if pos == 0 or value[pos:].strip():
        raise ValueError(f"invalid duration {text!r}: {hint}")
    return total


_SIZE = re.compile(r"(\d+(?:\.\d+)?|\.\d+)\s*([a-z]*)", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1}
for _i, _letter in enumerate("kmgtp", start=1):
    _SIZE_UNITS[_letter] = 1024**_i  # K, M, G: binary, as du, sort and truncate read them
    _SIZE_UNITS[_letter + "ib"] = 1024**_i  # KiB, MiB, GiB
    _SIZE_UNITS[_letter + "b"] = 1000**_i  # KB, MB, GB: decimal (SI)
del _i, _letter


def parse_size(text: str) -> int:
    """Bytes in a size such as ``500M``, ``2G``, ``1.5GiB``, ``100MB`` or
    ``1048576``.  ``K``/``M``/``G``/``T`` and ``KiB``/``MiB``/... are powers
    of 1024; ``KB``/``MB``/``GB``/``TB`` powers of 1000; a bare number is
    bytes.  Case-insensitive.  Raises ``ValueError`` with a message for people."""
    hint = "use bytes or a number and a unit: 500M, 2G, 1.5GiB, 100MB"
    if text.strip().startswith("-"):
        raise ValueError(f"invalid size {text!r}: a size cannot be negative; {hint}")
    match = _SIZE.fullmatch(text.strip())
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _SIZE_UNITS:
        raise ValueError(f"invalid size {text!r}: {hint}")
    value = float(match.group(1)) * _SIZE_UNITS[unit]
    if not math.isfinite(value):
        raise ValueError(f"invalid size {text!r}: too large")
    return int(value)


def format_size(n: float) -> str:
    """``1536`` -> ``"1.5 KiB"``: binary units, one decimal (bytes as an integer)."""
    sign = "-" if n < 0 else ""
    n = abs(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{sign}{int(n)} B" if unit == "B" else f"{sign}{n:.1f} {unit}"
        n /= 1024
    raise AssertionError  # pragma: no cover


def format_ago(seconds: float) -> str:
    """``5400`` -> ``"90 min ago"``: the unit a person would pick."""
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 36 * 3600:
        return f"{seconds / 3600:.0f} h ago"
    return f"{seconds / 86400:.0f} days ago"
