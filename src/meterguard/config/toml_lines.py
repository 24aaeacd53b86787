"""Where each key of a TOML document is written, so errors can name a line.

tomllib reports positions for syntax errors only; once the document has parsed,
validation errors carry a path such as ("network", 1, "interfaces", 0) and no
position. This scanner walks the same (already valid) text and records the line
of every table header, key and array element under the path pydantic uses:
arrays of tables get their index, dotted keys and inline tables are expanded.
It relies on the text being valid TOML, which tomllib has just established.
"""

from __future__ import annotations

import tomllib

from meterguard.config.errors import Loc

_BARE_KEY_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_SCALAR_END = frozenset(",]}#\r\n")


def key_lines(text: str) -> dict[Loc, int]:
    """Map every path in the document to the (1-based) line where it first appears."""
    scanner = _Scanner(text)
    scanner.run()
    return scanner.lines


def line_for(lines: dict[Loc, int], loc: Loc) -> int | None:
    """The line of `loc`, or of its nearest written ancestor (a missing key points at
    its table's header); None if nothing on the way is written in the file."""
    parts = tuple(part for part in loc if part != "[key]")
    for length in range(len(parts), 0, -1):
        line = lines.get(parts[:length])
        if line is not None:
            return line
    return None


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.line = 1
        self.lines: dict[Loc, int] = {}
        # Current index of each array of tables, keyed by its resolved path.
        self.table_arrays: dict[Loc, int] = {}

    def run(self) -> None:
        table: Loc = ()
        while True:
            self._skip_blank(newlines=True)
            if self.pos >= len(self.text):
                return
            line = self.line
            if self.text.startswith("[[", self.pos):
                self._advance(self.pos + 2)
                keys = self._key()
                self._advance(self.text.index("]]", self.pos) + 2)
                array = (*self._resolve(keys[:-1]), keys[-1])
                index = self.table_arrays.get(array, -1) + 1
                self.table_arrays[array] = index
                table = (*array, index)
                self._record(array, line)
                self._record(table, line)
            elif self.text[self.pos] == "[":
                self._advance(self.pos + 1)
                table = self._resolve(self._key())
                self._advance(self.text.index("]", self.pos) + 1)
                self._record(table, line)
            else:
                self._key_value(table)

    def _resolve(self, keys: list[str]) -> Loc:
        """A header's path, with the current index of each array of tables it crosses."""
        resolved: Loc = ()
        for key in keys:
            resolved = (*resolved, key)
            if resolved in self.table_arrays:
                resolved = (*resolved, self.table_arrays[resolved])
        return resolved

    def _record(self, loc: Loc, line: int) -> None:
        self.lines.setdefault(loc, line)

    def _key_value(self, table: Loc) -> None:
        line = self.line
        keys = self._key()
        for length in range(1, len(keys) + 1):
            self._record((*table, *keys[:length]), line)
        self._skip_blank(newlines=False)
        self._advance(self.pos + 1)  # the '='
        self._skip_blank(newlines=False)
        self._value((*table, *keys))

    def _key(self) -> list[str]:
        """A dotted key: bare, "basic" or 'literal' parts separated by dots."""
        keys: list[str] = []
        while True:
            self._skip_blank(newlines=False)
            char = self.text[self.pos]
            if char in "\"'":
                start = self.pos
                self._string()
                # Let tomllib decode the escapes it has already accepted.
                quoted = self.text[start : self.pos]
                keys.append(str(tomllib.loads(f"k = {quoted}")["k"]))
            else:
                start = self.pos
                while self.pos < len(self.text) and self.text[self.pos] in _BARE_KEY_CHARS:
                    self.pos += 1
                keys.append(self.text[start : self.pos])
            self._skip_blank(newlines=False)
            if self.pos < len(self.text) and self.text[self.pos] == ".":
                self.pos += 1
                continue
            return keys

    def _value(self, loc: Loc) -> None:
        char = self.text[self.pos]
        if char in "\"'":
            self._string()
        elif char == "[":
            self._advance(self.pos + 1)
            index = 0
            while True:
                self._skip_blank(newlines=True)
                if self.text[self.pos] == "]":
                    self._advance(self.pos + 1)
                    return
                self._record((*loc, index), self.line)
                self._value((*loc, index))
                index += 1
                self._skip_blank(newlines=True)
                if self.text[self.pos] == ",":
                    self._advance(self.pos + 1)
        elif char == "{":
            self._advance(self.pos + 1)
            while True:
                self._skip_blank(newlines=True)
                if self.text[self.pos] == "}":
                    self._advance(self.pos + 1)
                    return
                self._key_value(loc)
                self._skip_blank(newlines=True)
                if self.text[self.pos] == ",":
                    self._advance(self.pos + 1)
        else:
            # Numbers, booleans and dates (which may contain a space) end at a
            # delimiter, a comment or the end of the line.
            end = self.pos
            while end < len(self.text) and self.text[end] not in _SCALAR_END:
                end += 1
            self._advance(end)

    def _string(self) -> None:
        quote = self.text[self.pos]
        text = self.text
        if text.startswith(quote * 3, self.pos):
            i = self.pos + 3
            while True:
                if quote == '"' and text[i] == "\\":
                    i += 2
                elif text.startswith(quote * 3, i):
                    # Up to two quotes may sit just before the closing delimiter.
                    run = 3
                    while run < 5 and i + run < len(text) and text[i + run] == quote:
                        run += 1
                    self._advance(i + run)
                    return
                else:
                    i += 1
        i = self.pos + 1
        while text[i] != quote:
            i += 2 if quote == '"' and text[i] == "\\" else 1
        self._advance(i + 1)

    def _skip_blank(self, *, newlines: bool) -> None:
        text = self.text
        while self.pos < len(text):
            char = text[self.pos]
            if char in " \t":
                self.pos += 1
            elif newlines and char in "\r\n":
                self._advance(self.pos + 1)
            elif newlines and char == "#":
                end = text.find("\n", self.pos)
                self._advance(len(text) if end < 0 else end)
            elif not newlines and char == "#":
                end = text.find("\n", self.pos)
                self.pos = len(text) if end < 0 else end
            else:
                return

    def _advance(self, to: int) -> None:
        self.line += self.text.count("\n", self.pos, to)
        self.pos = to
