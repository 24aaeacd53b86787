"""Remote alerts through apprise: email, Telegram, ntfy, webhooks (json://, jsons://) ...

apprise reports one bool for everything it was given, so each URL gets an `Apprise` object of
its own and the caller learns which destination failed. Each delivery runs in a thread of
its own under one deadline: a destination that hangs cannot delay the others or the caller,
and a slow one is reported as failed when the deadline passes.

Importing apprise costs about 20 MB and 0.2 s (it loads every plugin), which is why the
daemon never imports this module: the delivery worker (worker.py) does, once, at start.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import apprise

from .message import DEFAULT_TIMEOUT_S, AlertMessage, Delivery, Level

log = logging.getLogger("meterguard.notify")

_NOTIFY_TYPE: dict[Level, str] = {
    "info": "info",
    "warning": "warning",
    # apprise's strongest type; receivers colour it red or raise its priority.
    "critical": "failure",
}


class _Capture(logging.Handler):
    """Keeps apprise's warnings per delivery, so a failure can say why (refused, 401 ...)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        # A context variable rather than a thread-local: apprise 2 runs a service in its own
        # executor thread but copies the caller's context into it (1.x stays in the caller's
        # thread), so either way the record reaches the delivery that caused it.
        self._messages: ContextVar[list[str] | None] = ContextVar("apprise_capture",
                                                                  default=None)

    @contextmanager
    def collect(self) -> Iterator[list[str]]:
        messages: list[str] = []
        token = self._messages.set(messages)
        try:
            yield messages
        finally:
            self._messages.reset(token)

    def emit(self, record: logging.LogRecord) -> None:
        # Records logged outside a collect() (other apprise users) are not ours to keep.
        messages = self._messages.get()
        if messages is not None:
            messages.append(record.getMessage())


_CAPTURE = _Capture()
_apprise_log = logging.getLogger("apprise")
if _CAPTURE not in _apprise_log.handlers:
    _apprise_log.addHandler(_CAPTURE)


def _unparsed_channel(url: str) -> str:
    # Never echo a URL apprise could not parse: its secrets are wherever the user put them.
    scheme = url.split("://", 1)[0] if "://" in url else "?"
    digest = hashlib.sha256(url.encode()).hexdigest()[:8]
    return f"{scheme}://(invalid URL {digest})"


@dataclass(frozen=True)
class _Target:
    channel: str
    sender: apprise.Apprise | None
    problem: str


class AppriseNotifier:
    """Delivers alerts to apprise URLs; `send` never raises and returns one Delivery per URL."""

    def __init__(self, urls: Sequence[str], *, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self.timeout = timeout
        self._targets = [self._target(url) for url in urls]
        # Channels key the event log's delivery record, so two URLs that read alike (the
        # privacy form hides what differs) must still get names of their own.
        seen: dict[str, int] = {}
        for i, target in enumerate(self._targets):
            n = seen[target.channel] = seen.get(target.channel, 0) + 1
            if n > 1:
                self._targets[i] = _Target(f"{target.channel} #{n}", target.sender,
                                           target.problem)

    def _target(self, url: str) -> _Target:
        try:
            plugin = apprise.Apprise.instantiate(url)
        except Exception as exc:  # a plugin bug must not stop the other URLs
            plugin = None
            log.warning("apprise failed on a URL: %s", exc)
        if plugin is None:
            return _Target(_unparsed_channel(url), None, "apprise does not accept this URL")
        # apprise's own socket timeouts (4 s each by default) bound how long a hung delivery
        # thread lives after our deadline gave up on it.
        plugin.socket_connect_timeout = min(plugin.socket_connect_timeout, self.timeout)
        plugin.socket_read_timeout = min(plugin.socket_read_timeout, self.timeout)
        sender = apprise.Apprise()
        sender.add(plugin)
        # The privacy form keeps apprise's defaults in the query (method=POST&overflow=...);
        # the part before it is what tells destinations apart for a reader.
        channel = sender.urls(privacy=True)[0].split("?", 1)[0]
        return _Target(channel, sender, "")

    @property
    def channels(self) -> list[str]:
        """The destinations in config order, without their secrets."""
        return [t.channel for t in self._targets]

    def send(
        self, alert: AlertMessage, on_delivery: Callable[[Delivery], None] | None = None
    ) -> list[Delivery]:
        """Deliver `alert` to every URL at once; one Delivery per URL, in config order.

        `on_delivery` is called with each Delivery as soon as it is known (from the
        delivering thread), so a fast channel is reported without waiting for a slow one.
        """
        deadline = time.monotonic() + self.timeout
        results = _Results(len(self._targets), on_delivery)
        threads: list[threading.Thread] = []
        for i, target in enumerate(self._targets):
            if target.sender is None:
                results.report(i, Delivery.failed(alert, target.channel, target.problem))
                continue
            thread = threading.Thread(
                target=self._deliver,
                args=(target, alert, results, i),
                name=f"apprise-{i}",
                # A delivery still hanging at exit must not keep the worker alive.
                daemon=True,
            )
            thread.start()
            threads.append(thread)
        for thread in threads:
            thread.join(max(deadline - time.monotonic(), 0.0))
        for i, target in enumerate(self._targets):
            results.report(
                i, Delivery.failed(alert, target.channel, f"no answer within {self.timeout:g} s")
            )
        return results.all()

    @staticmethod
    def _deliver(target: _Target, alert: AlertMessage, results: _Results, i: int) -> None:
        assert target.sender is not None
        with _CAPTURE.collect() as warnings:
            try:
                ok = bool(
                    target.sender.notify(
                        body=alert.body or alert.title,
                        title=alert.title,
                        notify_type=_NOTIFY_TYPE[alert.level],
                    )
                )
                detail = "" if ok else (warnings[-1] if warnings else "apprise reported failure")
            except Exception as exc:  # never into the caller: a failure is a result
                ok, detail = False, f"{type(exc).__name__}: {exc}"
        results.report(i, Delivery(target.channel, ok, detail, alert.event_id, alert.key))


class _Results:
    """One slot per URL; the first outcome reported for a slot wins.

    A delivery thread that answers after the deadline already reported it as failed must
    not report it a second time (the event log would flip, the daemon might retry).
    """

    def __init__(self, n: int, on_delivery: Callable[[Delivery], None] | None) -> None:
        self._slots: list[Delivery | None] = [None] * n
        self._lock = threading.Lock()
        self._on_delivery = on_delivery

    def report(self, i: int, delivery: Delivery) -> None:
        with self._lock:
            if self._slots[i] is not None:
                return
            self._slots[i] = delivery
        if self._on_delivery is not None:
            self._on_delivery(delivery)

    def all(self) -> list[Delivery]:
        with self._lock:
            assert all(d is not None for d in self._slots)
            return [d for d in self._slots if d is not None]
