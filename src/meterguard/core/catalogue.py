"""The catalogue of known background data users on Linux, grouped by category.

It ships as data (`meterguard/data/catalogue.toml`) so that users can extend it without code:
the daemon reads the shipped file, then `/etc/meterguard/catalogue.d/*.toml` in name order, and
hands the texts to `load_catalogue`, which merges them:

- a later `[category.NAME]` or `[app.ID]` table changes only the fields it sets, so a user file
  can move one app to another category or change one category's default profile;
- a name listed by a later entry moves to that entry (a name belongs to one entry only);
- within one file, a name listed by two entries is an error, since it is surely a typo.

Parsing and merging are pure; the only I/O here reads the shipped file or paths given
explicitly. Errors name the source, line and field, as the config's do.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any, cast

from meterguard.core.policy import RULES, Rule

SHIPPED_SOURCE = "meterguard/data/catalogue.toml"

Loc = tuple[str | int, ...]
# Builds the error for a location in the source being merged (it knows the source's lines).
_Fail = Callable[[Loc, str], "CatalogueError"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
# tomllib (3.11) reports the position of a syntax error only inside its message.
_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")
_TOML_AT_END = re.compile(r"\s*\(at end of document\)$")
_CATEGORY_KEYS = frozenset({"description", "metered"})
_APP_KEYS = frozenset({"category", "description", "names"})


class CatalogueError(ValueError):
    """A catalogue text meterguard refuses: `source:line: field: reason`, like ConfigError."""

    def __init__(self, source: str, line: int | None, field: str | None, message: str) -> None:
        self.source = source
        self.line = line
        self.field = field
        self.message = message
        super().__init__(str(self))

    def __reduce__(self) -> tuple[object, ...]:
        return (self.__class__, (self.source, self.line, self.field, self.message))

    def __str__(self) -> str:
        where = self.source if self.line is None else f"{self.source}:{self.line}"
        return ": ".join(part for part in (where, self.field, self.message) if part)


@dataclass(frozen=True)
class Category:
    """A group of background data users; `metered` is its rule in the default profile."""

    name: str
    description: str
    metered: Rule | None
    source: str


@dataclass(frozen=True)
class CatalogueEntry:
    """One program: the identity names it shows up as, and its category."""

    id: str
    category: str
    description: str
    names: tuple[str, ...]
    source: str


class Catalogue:
    """Known background data users, looked up by the app names identities produce."""

    __slots__ = ("_by_name", "_categories", "_entries")

    def __init__(self, entries: Iterable[CatalogueEntry], categories: Iterable[Category]) -> None:
        self._categories: Mapping[str, Category] = MappingProxyType(
            {category.name: category for category in categories}
        )
        self._entries = tuple(entries)
        by_name: dict[str, CatalogueEntry] = {}
        for entry in self._entries:
            if entry.category not in self._categories:
                raise ValueError(f"entry {entry.id}: unknown category {entry.category!r}")
            for name in entry.names:
                # Identity names are case-sensitive, but app ids are spelt inconsistently
                # across packagings (com.samschott.Maestral vs .maestral): fold case.
                other = by_name.setdefault(name.casefold(), entry)
                if other is not entry:
                    raise ValueError(f"{name!r} is listed by both {other.id} and {entry.id}")
        self._by_name: Mapping[str, CatalogueEntry] = MappingProxyType(by_name)

    @property
    def entries(self) -> tuple[CatalogueEntry, ...]:
        return self._entries

    @property
    def categories(self) -> Mapping[str, Category]:
        return self._categories

    @property
    def profile(self) -> dict[str, Rule]:
        """The default profile on metered networks: category -> rule, where one is set."""
        return {c.name: c.metered for c in self._categories.values() if c.metered is not None}

    def entry_for(self, app: str) -> CatalogueEntry | None:
        return self._by_name.get(app.casefold())

    def category_of(self, app: str) -> str | None:
        entry = self.entry_for(app)
        return None if entry is None else entry.category

    def profile_rule(self, category: str) -> Rule | None:
        found = self._categories.get(category)
        return None if found is None else found.metered

    def entries_in(self, category: str) -> tuple[CatalogueEntry, ...]:
        return tuple(entry for entry in self._entries if entry.category == category)


EMPTY_CATALOGUE = Catalogue((), ())


@dataclass
class _Draft:
    """An entry or category while sources are merged; `fields` holds what was set so far."""

    fields: dict[str, Any]
    source: str
    # Where the category of an entry was set, so an unknown category is reported there.
    category_at: tuple[str, int | None] = ("", None)


def load_catalogue(texts: Sequence[tuple[str, str]]) -> Catalogue:
    """Merge catalogue texts, given as (source name, TOML text), in order (see module doc)."""
    categories: dict[str, _Draft] = {}
    apps: dict[str, _Draft] = {}
    owner: dict[str, str] = {}  # casefolded name -> entry id
    for source, text in texts:
        _merge_source(source, text, categories, apps, owner)
    for app_id, draft in apps.items():
        category = draft.fields["category"]
        if category not in categories:
            source, line = draft.category_at
            known = ", ".join(sorted(categories)) or "none"
            raise CatalogueError(
                source,
                line,
                _format_field(("app", app_id, "category")),
                f"unknown category {category!r} (known: {known})",
            )
    return Catalogue(
        (
            CatalogueEntry(
                id=app_id,
                category=draft.fields["category"],
                description=draft.fields.get("description", app_id),
                names=tuple(draft.fields["names"]),
                source=draft.source,
            )
            for app_id, draft in apps.items()
        ),
        (
            Category(
                name=name,
                description=draft.fields.get("description", name),
                metered=draft.fields.get("metered"),
                source=draft.source,
            )
            for name, draft in categories.items()
        ),
    )


def shipped_text() -> str:
    """The text of the catalogue that ships with meterguard."""
    return resources.files("meterguard").joinpath("data/catalogue.toml").read_text("utf-8")


@cache
def default_catalogue() -> Catalogue:
    """The shipped catalogue alone."""
    return load_catalogue([(SHIPPED_SOURCE, shipped_text())])


def extend_shipped(texts: Sequence[tuple[str, str]]) -> Catalogue:
    """The shipped catalogue merged with the user's `texts`, which come after it."""
    return load_catalogue([(SHIPPED_SOURCE, shipped_text()), *texts])


def read_sources(paths: Iterable[Path]) -> list[tuple[str, str]]:
    """(path, text) of each file in `paths`, for `load_catalogue`; unreadable files raise."""
    sources: list[tuple[str, str]] = []
    for path in paths:
        try:
            data = path.read_bytes()
        except OSError as error:
            raise CatalogueError(str(path), None, None, f"cannot read: {error.strerror}") from None
        try:
            sources.append((str(path), data.decode("utf-8")))
        except UnicodeDecodeError as error:
            line = data.count(b"\n", 0, error.start) + 1
            raise CatalogueError(str(path), line, None, "not UTF-8 text") from None
    return sources


def _merge_source(
    source: str,
    text: str,
    categories: dict[str, _Draft],
    apps: dict[str, _Draft],
    owner: dict[str, str],
) -> None:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        message = str(error)
        position = _TOML_POSITION.search(message)
        if position is None:
            at_end = _TOML_AT_END.search(message)
            if at_end is None:
                raise CatalogueError(source, None, None, message) from None
            last_line = text.count("\n") + 1
            raise CatalogueError(source, last_line, None, message[: at_end.start()]) from None
        reason = f"{message[: position.start()]} (column {position.group(2)})"
        raise CatalogueError(source, int(position.group(1)), None, reason) from None
    lines = _key_lines(text)

    def fail(loc: Loc, message: str) -> CatalogueError:
        return CatalogueError(source, _line_for(lines, loc), _format_field(loc), message)

    for key in data:
        if key not in ("category", "app"):
            raise fail((key,), "unknown table (a catalogue has [category.NAME] and [app.ID])")
    _merge_categories(source, _tables(data, "category", fail), categories, fail)
    _merge_apps(source, _tables(data, "app", fail), lines, apps, owner, fail)


def _merge_categories(
    source: str, tables: dict[str, dict[str, Any]], categories: dict[str, _Draft], fail: _Fail
) -> None:
    for name, table in tables.items():
        _check_keys(("category", name), table, _CATEGORY_KEYS, fail)
        _check_str(("category", name), table, "description", fail)
        metered = table.get("metered")
        if metered is not None and metered not in RULES:
            raise fail(("category", name, "metered"), f"must be one of {', '.join(RULES)}")
        draft = categories.setdefault(name, _Draft({}, source))
        draft.fields.update(table)
        draft.source = source


def _merge_apps(
    source: str,
    tables: dict[str, dict[str, Any]],
    lines: dict[Loc, int],
    apps: dict[str, _Draft],
    owner: dict[str, str],
    fail: _Fail,
) -> None:
    claimed: dict[str, str] = {}  # casefolded name -> entry id, in this source
    for app_id, table in tables.items():
        loc: Loc = ("app", app_id)
        _check_keys(loc, table, _APP_KEYS, fail)
        _check_str(loc, table, "description", fail)
        _check_str(loc, table, "category", fail)
        draft = apps.get(app_id)
        if draft is None:
            for required in ("category", "names"):
                if required not in table:
                    raise fail(loc, f"a new entry needs `{required}`")
            draft = apps[app_id] = _Draft({}, source)
        if "category" in table:
            draft.category_at = (source, _line_for(lines, (*loc, "category")))
        if "names" in table:
            names = _check_names(loc, table["names"], fail)
            for index, name in enumerate(names):
                folded = name.casefold()
                if claimed.get(folded, app_id) != app_id:
                    raise fail(
                        (*loc, "names", index), f"{name!r} is also listed by {claimed[folded]}"
                    )
                claimed[folded] = app_id
            for old in draft.fields.get("names", ()):
                owner.pop(old.casefold(), None)
            for name in names:
                previous = owner.get(name.casefold())
                if previous is not None and previous != app_id:
                    # A later source moves the name: take it off the earlier entry.
                    earlier = apps[previous]
                    earlier.fields["names"] = [
                        n for n in earlier.fields["names"] if n.casefold() != name.casefold()
                    ]
                owner[name.casefold()] = app_id
            table = {**table, "names": names}
        draft.fields.update(table)
        draft.source = source


def _tables(data: dict[str, Any], key: str, fail: _Fail) -> dict[str, dict[str, Any]]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise fail((key,), f"must be tables: [{key}.NAME]")
    for name, table in value.items():
        if not isinstance(table, dict):
            raise fail((key, name), f"must be a table: [{key}.{name}]")
        if not _NAME.fullmatch(name):
            raise fail((key, name), "a name is letters, digits and . _ + - (no spaces)")
    return cast(dict[str, dict[str, Any]], value)


def _check_keys(loc: Loc, table: dict[str, Any], known: frozenset[str], fail: _Fail) -> None:
    for key in table:
        if key not in known:
            raise fail((*loc, key), f"unknown field (known: {', '.join(sorted(known))})")


def _check_str(loc: Loc, table: dict[str, Any], key: str, fail: _Fail) -> None:
    value = table.get(key)
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise fail((*loc, key), "must be a non-empty string")


def _check_names(loc: Loc, value: object, fail: _Fail) -> list[str]:
    if not isinstance(value, list) or not value:
        raise fail((*loc, "names"), "must be a non-empty array of app names")
    seen: set[str] = set()
    for index, name in enumerate(value):
        if not isinstance(name, str) or not name or name != name.strip():
            raise fail((*loc, "names", index), "an app name is a non-empty string, no spaces")
        if name.casefold() in seen:
            raise fail((*loc, "names", index), f"{name!r} is listed twice")
        seen.add(name.casefold())
    return cast(list[str], value)


def _format_field(loc: Loc) -> str:
    """A location spelt the way TOML writes it: `app."org.gnome.Software".names[1]`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        key = part if _BARE_KEY.fullmatch(part) else '"' + part.replace('"', '\\"') + '"'
        out += f".{key}" if out else key
    return out


def _key_lines(text: str) -> dict[Loc, int]:
    """The line of each table header and key, by path.

    A line scanner, not a parser: the text has already parsed, the catalogue uses only plain
    tables and keys, and an unmatched line (inside a multi-line array) just gets no entry.
    """
    lines: dict[Loc, int] = {}
    table: Loc = ()
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("["):
            header = _toml_path(stripped)
            if header is not None:
                table = header
                for length in range(1, len(header) + 1):
                    lines.setdefault(header[:length], number)
            continue
        key, equals, _ = stripped.partition("=")
        if equals and not stripped.startswith("#"):
            path = _toml_path(f"{key} = 0")
            if path is not None:
                for length in range(1, len(path) + 1):
                    lines.setdefault((*table, *path[:length]), number)
    return lines


def _toml_path(snippet: str) -> Loc | None:
    """The dotted path a header or `key = 0` line defines, decoded by tomllib itself."""
    try:
        node: Any = tomllib.loads(snippet)
    except tomllib.TOMLDecodeError:
        return None
    path: list[str | int] = []
    while isinstance(node, dict) and len(node) == 1:
        key, node = next(iter(node.items()))
        path.append(key)
    return tuple(path) or None


def _line_for(lines: dict[Loc, int], loc: Loc) -> int | None:
    """The line of `loc`, or of its nearest written ancestor."""
    for length in range(len(loc), 0, -1):
        line = lines.get(loc[:length])
        if line is not None:
            return line
    return None
