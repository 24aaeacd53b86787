"""The one error a bad configuration produces: where it is, and what is wrong."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

Loc = tuple[str | int, ...]

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def format_field(loc: Loc) -> str:
    """Write a location the way the TOML file spells it: `network[1].interfaces[0]`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        if part == "[key]":
            continue  # pydantic's marker for "the key itself", not a nested field
        key = part if _BARE_KEY.fullmatch(part) else '"' + part.replace('"', '\\"') + '"'
        out += f".{key}" if out else key
    return out


class ConfigError(Exception):
    """A configuration the daemon refuses, with the file, line and field to fix.

    `str(e)` reads `/etc/meterguard/meterguard.toml:12: network[1].interfaces: reason`;
    parts that are unknown (no line for an unreadable file, no field for a TOML
    syntax error) are left out. `also` holds further problems found in the same
    file, so a checker can list them all at once.
    """

    def __init__(
        self,
        path: Path | None,
        line: int | None,
        field: str | None,
        message: str,
        *,
        loc: Loc = (),
        also: Sequence[ConfigError] = (),
    ) -> None:
        self.path = path
        self.line = line
        self.field = field
        self.message = message
        self.loc = loc
        self.also: tuple[ConfigError, ...] = tuple(also)
        super().__init__(self.__str__())

    def __reduce__(self) -> tuple[object, ...]:
        # Exception pickles its args by default, which do not match __init__.
        state = {"loc": self.loc, "also": self.also}
        return (self.__class__, (self.path, self.line, self.field, self.message), state)

    def __str__(self) -> str:
        where = "" if self.path is None else str(self.path)
        if self.line is not None:
            where = f"{where}:{self.line}" if where else f"line {self.line}"
        return ": ".join(part for part in (where, self.field, self.message) if part)
