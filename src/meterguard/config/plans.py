"""`[plans.NAME]` and `[alerts]`: data plans networks draw on, and where alerts go.

Each string field is parsed here by the pure core's own parser, so a bad cycle, threshold
or window is reported with its file, line and field like any other mistake.
"""

from __future__ import annotations

import os
import re
from typing import Annotated, Literal
from zoneinfo import ZoneInfo

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
)

from meterguard.core.cycles import parse_cycle
from meterguard.core.plans import (
    DEFAULT_THRESHOLDS,
    Plan,
    Rollover,
    Threshold,
    parse_free_window,
    parse_threshold,
)
from meterguard.core.units import parse_size


def system_zone_name() -> str:
    """The machine's IANA zone from $TZ or /etc/localtime, UTC if neither names one."""
    tz = os.environ.get("TZ", "").lstrip(":")
    if tz:
        return tz
    try:
        return os.readlink("/etc/localtime").split("zoneinfo/", 1)[1]
    except (OSError, IndexError):
        return "UTC"


def parse_byte_size(value: object) -> object:
    # bool is an int in Python, and a TOML float such as 20.5 has no unit: both are
    # more likely mistakes than byte counts.
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError('write a size as a string such as "20 GB" or a whole number of bytes')
    return parse_size(value)


def _threshold(value: object) -> object:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError('a threshold is a percentage (80, "80%") or "N MB left"')
    parse_threshold(value)
    return value


def _window(value: str) -> str:
    parse_free_window(value)
    return value


def _zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ValueError, KeyError, OSError):
        raise ValueError(f"unknown time zone {value!r}: use an IANA name") from None
    return value


_URL = re.compile(r"^[a-z][a-z0-9+.-]*://\S+$", re.IGNORECASE)


def _apprise_url(value: str) -> str:
    if not _URL.match(value):
        raise ValueError(f"{value!r} is not an apprise URL (scheme://...)")
    return value


Size = Annotated[int, BeforeValidator(parse_byte_size), Field(ge=0)]
ThresholdValue = Annotated[int | float | str, BeforeValidator(_threshold)]
CapActionName = Literal["pause", "alert", "block-others", "disconnect"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class PlanConfig(_Section):
    """`[plans.NAME]`: a data plan that networks name with `plan = "NAME"`."""

    quota: Annotated[int, BeforeValidator(parse_byte_size), Field(gt=0)]
    # Declared before `cycle`, whose validator needs it: an activation time without an
    # offset is read in the plan's zone.
    time_zone: Annotated[str, AfterValidator(_zone)] | None = None
    cycle: Annotated[str, Field(min_length=1)]
    rollover_max: Size | None = None
    free_window: Annotated[str, AfterValidator(_window)] | None = None
    daily_limit: Annotated[int, BeforeValidator(parse_byte_size), Field(gt=0)] | None = None
    thresholds: list[ThresholdValue] | None = None
    cap_action: CapActionName = "pause"
    allow: list[str] = Field(default_factory=list)

    @field_validator("cycle")
    @classmethod
    def _cycle_parses(cls, cycle: str, info: ValidationInfo) -> str:
        zone = info.data.get("time_zone") or system_zone_name()
        parse_cycle(cycle, ZoneInfo(zone))
        return cycle

    def zone_name(self) -> str:
        return self.time_zone or system_zone_name()

    def to_plan(self, name: str) -> Plan:
        tz = ZoneInfo(self.zone_name())
        thresholds: tuple[Threshold, ...] = (
            tuple(parse_threshold(t) for t in self.thresholds)
            if self.thresholds is not None else DEFAULT_THRESHOLDS
        )
        return Plan(
            name=name,
            quota_bytes=self.quota,
            cycle=parse_cycle(self.cycle, tz),
            tz=tz,
            rollover=Rollover(self.rollover_max) if self.rollover_max is not None else None,
            free_window=parse_free_window(self.free_window) if self.free_window else None,
            daily_limit_bytes=self.daily_limit,
            thresholds=thresholds,
            cap_action=self.cap_action,
            allow_list=tuple(self.allow),
        )


class AlertsConfig(_Section):
    """`[alerts]`: where threshold and cap alerts are sent, besides the event log."""

    apprise: list[Annotated[str, AfterValidator(_apprise_url)]] = Field(default_factory=list)
