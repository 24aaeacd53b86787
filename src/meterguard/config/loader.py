"""Reading the config file and turning every failure into a ConfigError with a line."""

from __future__ import annotations

import difflib
import re
import tomllib
import types
from datetime import date, datetime, time
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from meterguard.config.errors import ConfigError, Loc, format_field
from meterguard.config.schema import Config
from meterguard.config.toml_lines import key_lines, line_for

# tomllib (3.11) puts the position only in the message text.
_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")
_TOML_AT_END = re.compile(r"\s*\(at end of document\)$")

_EXPECTED = {
    "string_type": "a string",
    "int_type": "a whole number",
    "float_type": "a number",
    "bool_type": "true or false",
    "list_type": "an array",
    "dict_type": "a table",
    "model_type": "a table",
    "model_attributes_type": "a table",
}


def load_config(path: Path, *, missing_ok: bool = False) -> Config:
    """Read and validate the config at `path`.

    With `missing_ok`, a file that does not exist gives the defaults (the daemon may
    run unconfigured with the default path); any other failure raises ConfigError.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if missing_ok:
            return Config()
        raise ConfigError(path, None, None, "no such file") from None
    except OSError as error:
        raise ConfigError(path, None, None, f"cannot read: {error.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise ConfigError(path, line, None, "not UTF-8 text (TOML files must be UTF-8)") from None
    return parse_config(text, path)


def parse_config(text: str, path: Path) -> Config:
    """Validate TOML `text`; `path` is only used to say where an error is."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise _syntax_error(str(error), text, path) from None
    try:
        return Config.model_validate(data)
    except ValidationError as error:
        lines = key_lines(text)
        problems = sorted(
            (_from_pydantic(detail, lines, path) for detail in error.errors(include_url=False)),
            key=lambda e: (e.line is None, e.line or 0),
        )
        raise _combine(problems) from None
    except ConfigError as error:
        # Cross-field problems found by the models know their field, not their line.
        lines = key_lines(text)
        raise _combine(
            [_locate(problem, lines, path) for problem in (error, *error.also)]
        ) from None


def _syntax_error(message: str, text: str, path: Path) -> ConfigError:
    position = _TOML_POSITION.search(message)
    if position is not None:
        reason = message[: position.start()]
        return ConfigError(
            path, int(position.group(1)), None, f"{reason} (column {position.group(2)})"
        )
    at_end = _TOML_AT_END.search(message)
    if at_end is not None:
        return ConfigError(path, text.count("\n") + 1, None, message[: at_end.start()])
    return ConfigError(path, None, None, message)


def _combine(problems: list[ConfigError]) -> ConfigError:
    first = problems[0]
    return ConfigError(
        first.path, first.line, first.field, first.message, loc=first.loc, also=problems[1:]
    )


def _locate(problem: ConfigError, lines: dict[Loc, int], path: Path) -> ConfigError:
    return ConfigError(
        path, line_for(lines, problem.loc), problem.field, problem.message, loc=problem.loc
    )


def _from_pydantic(detail: ErrorDetails, lines: dict[Loc, int], path: Path) -> ConfigError:
    loc: Loc = tuple(detail["loc"])
    return ConfigError(
        path, line_for(lines, loc), format_field(loc) or None, _message(detail), loc=loc
    )


def _message(detail: ErrorDetails) -> str:
    kind = detail["type"]
    loc: Loc = tuple(detail["loc"])
    value = detail.get("input")
    if kind == "extra_forbidden":
        return _unknown_key_message(loc)
    if kind == "missing":
        return "required key is missing"
    if kind == "value_error":
        return detail["msg"].removeprefix("Value error, ")
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {_describe(value)}"
    message = detail["msg"].replace("Input should be", "must be", 1)
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        message += f", got {value!r}"
    return message


def _describe(value: object) -> str:
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int | float | str):
        kind = {int: "an integer", float: "a float", str: "a string"}[type(value)]
        return f"{kind} ({value!r})"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, datetime | date | time):
        return f"a date/time ({value.isoformat()})"
    return type(value).__name__


def _unknown_key_message(loc: Loc) -> str:
    key = loc[-1]
    model = _model_at(loc[:-1])
    if model is None:
        return "unknown key"
    known = list(model.model_fields)
    close = difflib.get_close_matches(str(key), known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown key{hint}; known keys here: {', '.join(known)}"


def _model_at(loc: Loc) -> type[BaseModel] | None:
    """The model that validates the table at `loc`, to list the keys it accepts."""
    current: Any = Config
    for part in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(part) if isinstance(part, str) else None
            if field is None:
                return None
            current = field.annotation
        elif get_origin(current) is list and isinstance(part, int):
            current = get_args(current)[0]
        elif get_origin(current) is dict and isinstance(part, str):
            current = get_args(current)[1]
        else:
            return None
    current = _unwrap(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return current
    return None


def _unwrap(annotation: Any) -> Any:
    """Strip Annotated[...] and `X | None` down to the type that holds the fields."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            others = [arg for arg in get_args(annotation) if arg is not type(None)]
            if len(others) != 1:
                return annotation
            annotation = others[0]
        else:
            return annotation
