"""Byte sizes: parsing what users write ("5 GB", "500MiB") and printing sizes back.

Carriers sell decimal gigabytes (1 GB = 10**9 bytes), so the unsuffixed SI units are
decimal and the IEC units (KiB, MiB, GiB) are binary.
"""

from __future__ import annotations

import re

_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str | int) -> int:
    """Return the number of bytes that `text` names; raise ValueError with the reason."""
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"a size cannot be negative: {text}")
        return text
    match = _SIZE_RE.match(text)
    if match is None:
        raise ValueError(f"not a size: {text!r} (write e.g. '20 GB', '500 MiB' or a byte count)")
    number, unit = match.groups()
    factor = _UNITS.get(unit.lower())
    if factor is None:
        known = ", ".join(u.upper() for u in _UNITS if u)
        raise ValueError(f"unknown unit {unit!r} in {text!r} (known: {known})")
    return round(float(number) * factor)


def format_bytes(n: int) -> str:
    """Print a byte count the way carriers do: decimal units, three significant figures."""
    sign = "-" if n < 0 else ""
    value = float(abs(n))
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            if unit == "B":
                return f"{sign}{int(value)} B"
            return f"{sign}{value:.3g} {unit}" if value < 100 else f"{sign}{value:.0f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")
