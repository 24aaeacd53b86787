"""Alert delivery: remote alerts through apprise, the desktop agent, and their test doubles.

Only the light parts are imported here, so the daemon can `from meterguard.notify import
NotifyWorker` without loading apprise (the worker process loads it) or dbus-fast (the desktop
agent does). Import `apprise_notifier`, `desktop` and `agent` explicitly where needed.
"""

from .handle import NotifyWorker, NotifyWorkerError
from .message import AlertMessage, Delivery, FakeNotifier, MessageError, Notifier

__all__ = [
    "AlertMessage",
    "Delivery",
    "FakeNotifier",
    "MessageError",
    "Notifier",
    "NotifyWorker",
    "NotifyWorkerError",
]
