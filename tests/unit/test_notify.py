"""Remote alerts: apprise to a local webhook, per-URL outcomes, the worker and its handle."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from meterguard.core.guard import Alert
from meterguard.core.plans import Percent
from meterguard.notify import (
    AlertMessage,
    Delivery,
    FakeNotifier,
    MessageError,
    NotifyWorker,
    NotifyWorkerError,
)
from meterguard.notify.apprise_notifier import AppriseNotifier

KEY = "hk@2026-01-15T00:00+08:00:100%"
CAP = AlertMessage(
    title="hk: data cap reached",
    body="20.0 GB of 20.0 GB used on hk: 0 B left, data is paused until 2026-02-15 00:00 HKT",
    level="critical",
    key=KEY,
    event_id=7,
    at=1_767_225_600.0,
)


@dataclass
class Hook:
    """A local HTTP endpoint: /hook answers 200, /broken 500, /hang never answers."""

    port: int
    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)

    def url(self, path: str = "hook", scheme: str = "json", auth: str = "") -> str:
        return f"{scheme}://{auth}127.0.0.1:{self.port}/{path}"

    def wait_for(self, n: int, timeout: float = 20.0) -> list[tuple[str, dict[str, str], bytes]]:
        deadline = time.monotonic() + timeout
        while len(self.requests) < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {n} request(s), got {self.requests}")
            time.sleep(0.01)
        return list(self.requests)


@pytest.fixture
def hook() -> Iterator[Hook]:
    state: list[Hook] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            h = state[0]
            h.requests.append((self.path, dict(self.headers.items()), body))
            if self.path == "/hang":
                h.release.wait(60)
                return
            self.send_response(500 if self.path == "/broken" else 200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass  # keep the test output for failures

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.append(Hook(server.server_address[1]))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state[0]
    finally:
        state[0].release.set()
        server.shutdown()
        server.server_close()


def refused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def payload(request: tuple[str, dict[str, str], bytes]) -> dict[str, object]:
    data = json.loads(request[2])
    assert isinstance(data, dict)
    return data


# -- AppriseNotifier -----------------------------------------------------------------------


def test_an_alert_reaches_a_local_webhook(hook: Hook) -> None:
    notifier = AppriseNotifier([hook.url()])
    [delivery] = notifier.send(CAP)
    assert (delivery.channel, delivery.ok, delivery.detail) == (hook.url(), True, "")
    assert (delivery.event_id, delivery.key) == (7, KEY)
    [request] = hook.wait_for(1)
    assert request[0] == "/hook"
    body = payload(request)
    assert body["title"] == CAP.title and body["message"] == CAP.body
    # critical maps to apprise's strongest type, so receivers can tell the cap apart.
    assert body["type"] == "failure"


def test_each_url_reports_its_own_outcome(hook: Hook) -> None:
    urls = [
        hook.url(),
        f"json://127.0.0.1:{refused_port()}/hook",
        hook.url("broken"),
        "nosuchscheme://whatever",
    ]
    deliveries = AppriseNotifier(urls, timeout=5).send(CAP)
    assert [d.ok for d in deliveries] == [True, False, False, False]
    assert all(d.detail for d in deliveries[1:])
    assert "does not accept" in deliveries[3].detail
    # The good URL was delivered although the others failed.
    assert [r[0] for r in hook.wait_for(2)].count("/hook") == 1


def test_a_hanging_endpoint_fails_within_the_timeout(hook: Hook) -> None:
    notifier = AppriseNotifier([hook.url("hang"), hook.url()], timeout=0.5)
    hang, good = notifier.send(AlertMessage("t", "b"))
    assert not hang.ok and hang.detail
    assert good.ok


def test_channels_never_show_secrets(hook: Hook) -> None:
    notifier = AppriseNotifier(
        [hook.url(auth="alice:s3cretpw@"), "nosuchscheme://t0kenvalue@host"]
    )
    assert not any("s3cretpw" in c or "t0kenvalue" in c for c in notifier.channels)
    good, bad = notifier.send(CAP)
    assert good.ok and not bad.ok
    assert "s3cretpw" not in good.channel
    # The secret still went where it belongs: the request's basic auth.
    assert "Authorization" in hook.wait_for(1)[0][1]


def test_same_looking_urls_get_distinct_channels(hook: Hook) -> None:
    notifier = AppriseNotifier([hook.url(auth="a:one@"), hook.url(auth="a:two@")])
    assert len(set(notifier.channels)) == 2


# -- messages ------------------------------------------------------------------------------


def test_messages_survive_their_json_form() -> None:
    assert AlertMessage.from_json(CAP.to_json()) == CAP
    delivery = Delivery("json://h/hook", False, "refused", 7, KEY, 1.5)
    assert Delivery.from_json(delivery.to_json()) == delivery


@pytest.mark.parametrize(
    "line",
    [
        "not json",
        "[1, 2]",
        '{"title": "t", "body": "b", "level": "fatal", "at": 1}',
        '{"title": "t", "body": "b", "level": "info", "at": 1, "event_id": true}',
        '{"title": 5, "body": "b", "level": "info", "at": 1}',
        '{"title": "t", "body": "b", "level": "info"}',
    ],
)
def test_bad_alert_lines_are_refused(line: str) -> None:
    with pytest.raises(MessageError):
        AlertMessage.from_json(line)


def test_a_guard_alert_becomes_a_message() -> None:
    start = datetime(2026, 1, 14, 16, tzinfo=UTC)
    alert = Alert(KEY, "critical", "hk: data cap reached", "body", Percent(100), start)
    crossed = datetime(2026, 1, 20, tzinfo=UTC)
    message = AlertMessage.from_alert(alert, event_id=3, at=crossed)
    assert message == AlertMessage("hk: data cap reached", "body", "critical", KEY, 3,
                                   crossed.timestamp())


def test_the_fake_notifier_records_and_fails_on_request() -> None:
    fake = FakeNotifier(("a://", "b://"), failing=frozenset({"b://"}))
    assert [(d.channel, d.ok) for d in fake.send(CAP)] == [("a://", True), ("b://", False)]
    assert fake.sent == [CAP]


# -- the worker ----------------------------------------------------------------------------


def config(tmp_path: Path, *urls: str) -> Path:
    path = tmp_path / "meterguard.toml"
    path.write_text("[alerts]\napprise = [" + ", ".join(json.dumps(u) for u in urls) + "]\n")
    return path


def poll(worker: NotifyWorker, until: Callable[[list[Delivery]], bool],
         timeout: float = 30.0) -> list[Delivery]:
    got: list[Delivery] = []
    deadline = time.monotonic() + timeout
    while not until(got):
        if time.monotonic() > deadline:
            raise AssertionError(f"worker results so far: {got}")
        got += worker.poll_results()
        time.sleep(0.01)
    return got


@pytest.fixture
def worker_factory() -> Iterator[Callable[[Path], NotifyWorker]]:
    workers: list[NotifyWorker] = []

    def make(path: Path) -> NotifyWorker:
        w = NotifyWorker(path, timeout=5)
        workers.append(w)
        return w

    yield make
    for w in workers:
        w.stop(timeout=5)


def test_worker_round_trip(tmp_path: Path, hook: Hook,
                           worker_factory: Callable[[Path], NotifyWorker]) -> None:
    worker = worker_factory(config(tmp_path, hook.url()))
    worker.start()
    assert worker.running and worker.channels == [hook.url()]
    worker.send(CAP)
    [delivery] = poll(worker, lambda got: len(got) >= 1)
    assert (delivery.channel, delivery.ok, delivery.event_id, delivery.key) == (
        hook.url(), True, 7, KEY
    )
    assert payload(hook.wait_for(1)[0])["message"] == CAP.body
    proc = worker._proc
    worker.stop()
    assert not worker.running and proc is not None and proc.returncode == 0
    assert worker.poll_results() == []


def test_worker_joins_its_cgroup_before_it_runs(
    tmp_path: Path, hook: Hook, worker_factory: Callable[[Path], NotifyWorker]
) -> None:
    # A plain directory stands in for the cgroup: what matters is that the pid written to
    # cgroup.procs is the worker itself (exec keeps the pid), written before it runs.
    scope = tmp_path / "meterguard.slice" / "meterguard-notify.scope"
    worker = worker_factory(config(tmp_path, hook.url()))
    worker.start(scope)
    assert worker.pid is not None
    assert (scope / "cgroup.procs").read_text().strip() == str(worker.pid)
    cmdline = Path(f"/proc/{worker.pid}/cmdline").read_bytes().split(b"\0")
    assert b"meterguard.notify.worker" in cmdline
    worker.send(CAP)
    assert poll(worker, lambda got: len(got) >= 1)[0].ok


def test_worker_that_cannot_join_its_cgroup_does_not_start(
    tmp_path: Path, worker_factory: Callable[[Path], NotifyWorker]
) -> None:
    scope = tmp_path / "scope"
    (scope / "cgroup.procs").mkdir(parents=True)  # a directory: the write must fail
    worker = worker_factory(config(tmp_path))
    with pytest.raises(NotifyWorkerError, match="exited with status"):
        worker.start(scope)
    assert not worker.running


def test_worker_with_a_bad_config_says_why(
    tmp_path: Path, worker_factory: Callable[[Path], NotifyWorker]
) -> None:
    worker = worker_factory(tmp_path / "missing.toml")
    with pytest.raises(NotifyWorkerError, match=r"missing\.toml"):
        worker.start()


def test_a_dead_worker_fails_what_it_had_not_delivered(
    tmp_path: Path, hook: Hook, worker_factory: Callable[[Path], NotifyWorker]
) -> None:
    worker = NotifyWorker(config(tmp_path, hook.url(), hook.url("hang")), timeout=60)
    try:
        worker.start()
        worker.send(CAP)
        # The fast channel reports as soon as it is delivered, not when the alert is done.
        [good] = poll(worker, lambda got: len(got) >= 1)
        assert (good.channel, good.ok) == (hook.url(), True)
        hook.wait_for(2)  # the /hang request is out and gets no answer
        assert worker.pid is not None
        os.kill(worker.pid, signal.SIGKILL)
        # Only the channel still in flight fails on the worker's death, and only once.
        [hang] = poll(worker, lambda got: len(got) >= 1)
        assert (hang.channel, hang.ok, hang.event_id) == (hook.url("hang"), False, 7)
        assert "exited" in hang.detail
        assert worker.poll_results() == []
        # Sending to a dead worker fails at once instead of waiting.
        worker.send(AlertMessage("later", "b", event_id=8))
        later = poll(worker, lambda got: len(got) >= 2)
        assert all(d.event_id == 8 and "not running" in d.detail for d in later)
        # start() after a death starts a new worker.
        worker.start()
        assert worker.running
    finally:
        hook.release.set()
        worker.stop(timeout=5)


def test_the_worker_protocol_line_by_line(tmp_path: Path, hook: Hook) -> None:
    alert = AlertMessage("香港 eSIM: 80% used", "4.0 GB left", "warning", "hk:80%", 9, 1.0)
    proc = subprocess.Popen(
        [sys.executable, "-m", "meterguard.notify.worker", "--config",
         str(config(tmp_path, hook.url())), "--timeout", "5"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, encoding="utf-8",
        # The protocol is UTF-8 whatever the locale says (an ASCII-only one, here).
        env={**os.environ, "PYTHONIOENCODING": "ascii", "LC_ALL": "C"},
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        ready = json.loads(proc.stdout.readline())
        assert ready == {"type": "ready", "pid": proc.pid, "channels": [hook.url()]}
        proc.stdin.write("not json\n")
        proc.stdin.flush()
        assert json.loads(proc.stdout.readline())["type"] == "error"
        proc.stdin.write(json.dumps({"type": "alert", "seq": 5, **alert.to_dict()},
                                    ensure_ascii=False) + "\n")
        proc.stdin.close()  # end of input: deliver what is in flight, then exit
        lines = [json.loads(line) for line in proc.stdout]
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert [(m["type"], m["seq"]) for m in lines] == [("delivery", 5), ("done", 5)]
    assert lines[0]["ok"] is True and lines[0]["event_id"] == 9 and lines[0]["key"] == "hk:80%"
    assert payload(hook.wait_for(1)[0])["title"] == alert.title
