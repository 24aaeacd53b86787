"""What is sent (`AlertMessage`), what came of it (`Delivery`), and the `Notifier` protocol.

These are plain values with a JSON form because they cross a process boundary: the daemon
hands alerts to the delivery worker over a pipe (see worker.py) and reads deliveries back.
This module imports nothing heavy, so the daemon can use it without loading apprise.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast

if TYPE_CHECKING:
    from meterguard.core.guard import Alert

Level = Literal["info", "warning", "critical"]
_LEVELS = ("info", "warning", "critical")

# How long one delivery may take before it counts as failed (seconds).
DEFAULT_TIMEOUT_S = 10.0


class MessageError(ValueError):
    """A JSON line that is not a valid alert or delivery."""


def _field(obj: dict[str, Any], name: str, *kinds: type, null: bool = False) -> Any:
    value = obj.get(name)
    if value is None and null:
        return None
    # bool is an int to Python, but never a valid id or time here.
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise MessageError(f"{name!r} must be {' or '.join(k.__name__ for k in kinds)},"
                           f" got {value!r}")
    return value


def _object(line: str | bytes) -> dict[str, Any]:
    try:
        obj = json.loads(line)
    except ValueError as exc:
        raise MessageError(f"not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise MessageError(f"expected a JSON object, got {type(obj).__name__}")
    return obj


@dataclass(frozen=True, slots=True)
class AlertMessage:
    """One alert to deliver: what the user reads, plus what ties results back to it.

    `event_id` is the ledger event the alert was recorded as, so that each `Delivery` can be
    stored with `Ledger.mark_delivered(event_id, ...)`. `at` is the unix time of the crossing,
    kept so the latency from crossing to delivery can be measured.
    """

    title: str
    body: str
    level: Level = "info"
    key: str | None = None
    event_id: int | None = None
    at: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        if self.level not in _LEVELS:
            raise MessageError(f"level must be one of {_LEVELS}, got {self.level!r}")

    @classmethod
    def from_alert(cls, alert: Alert, *, event_id: int | None, at: float | datetime
                   ) -> AlertMessage:
        """The message for a guard `Alert`, recorded as event `event_id` at `at`."""
        stamp = at.timestamp() if isinstance(at, datetime) else float(at)
        return cls(alert.title, alert.body, alert.level, alert.key, event_id, stamp)

    def to_dict(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "key": self.key,
            "level": self.level,
            "title": self.title,
            "body": self.body,
            "at": self.at,
        }

    def to_json(self) -> str:
        """One line of JSON (no newline inside, none at the end)."""
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str | bytes) -> AlertMessage:
        obj = _object(line)
        level = _field(obj, "level", str)
        if level not in _LEVELS:
            raise MessageError(f"'level' must be one of {_LEVELS}, got {level!r}")
        return cls(
            title=_field(obj, "title", str),
            body=_field(obj, "body", str),
            level=cast(Level, level),
            key=_field(obj, "key", str, null=True),
            event_id=_field(obj, "event_id", int, null=True),
            at=float(_field(obj, "at", int, float)),
        )


@dataclass(frozen=True, slots=True)
class Delivery:
    """The outcome of delivering one alert through one channel.

    `channel` names the destination without its secrets (apprise's privacy form of the URL,
    or "desktop"), because it is stored in the event log and shown by `meterguard events`.
    `detail` says why a delivery failed ("" when it succeeded). `at` is when it finished.
    """

    channel: str
    ok: bool
    detail: str
    event_id: int | None = None
    key: str | None = None
    at: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "key": self.key,
            "channel": self.channel,
            "ok": self.ok,
            "detail": self.detail,
            "at": self.at,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str | bytes) -> Delivery:
        obj = _object(line)
        return cls(
            channel=_field(obj, "channel", str),
            ok=_field(obj, "ok", bool),
            detail=_field(obj, "detail", str),
            event_id=_field(obj, "event_id", int, null=True),
            key=_field(obj, "key", str, null=True),
            at=float(_field(obj, "at", int, float)),
        )

    @classmethod
    def failed(cls, alert: AlertMessage, channel: str, detail: str) -> Delivery:
        return cls(channel, False, detail, alert.event_id, alert.key)


class Notifier(Protocol):
    """Something that delivers an alert and says, per channel, whether it got through.

    `send` must not raise for a delivery problem: a failure is a `Delivery` with ok=False.
    """

    def send(self, alert: AlertMessage) -> list[Delivery]: ...


class FakeNotifier:
    """Records what it was asked to send; channels listed in `failing` report failure."""

    def __init__(
        self, channels: tuple[str, ...] = ("fake://",), *, failing: frozenset[str] = frozenset()
    ) -> None:
        self.channels = channels
        self.failing = failing
        self.sent: list[AlertMessage] = []

    def send(self, alert: AlertMessage) -> list[Delivery]:
        self.sent.append(alert)
        return [
            Delivery(
                ch,
                ch not in self.failing,
                "fake failure" if ch in self.failing else "",
                alert.event_id,
                alert.key,
            )
            for ch in self.channels
        ]
