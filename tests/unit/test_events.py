"""The event log and the command queue (ledger v4), and `meterguard events`."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import typer
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from meterguard.cli.events import register
from meterguard.ledger import (
    CURRENT_VERSION,
    Ledger,
    LedgerError,
    SchemaTooOldError,
    UsageDelta,
)
from meterguard.ledger.schema import MIGRATIONS

T0 = 1_767_225_600  # 2026-01-01T00:00Z
KEY = "hk-monthly@2026-01-15T00:00+08:00:80%"


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return Ledger.open(tmp_path / "ledger.sqlite3")


# -- events --------------------------------------------------------------------------------


def test_events_round_trip_in_id_order(ledger: Ledger) -> None:
    first = ledger.add_event(T0, "alert", "warning", "80% used", "4 GB left", key=KEY,
                             data={"plan": "hk", "used": 16_000_000_000})
    second = ledger.add_event(T0 + 5, "pause", "critical", "paused", "")
    assert first is not None and second is not None and second > first
    rows = ledger.events()
    assert [r.id for r in rows] == [first, second]
    assert rows[0].as_dict() == {
        "id": first, "at": T0, "kind": "alert", "level": "warning", "key": KEY,
        "title": "80% used", "body": "4 GB left",
        "data": {"plan": "hk", "used": 16_000_000_000}, "delivered": {},
    }
    assert rows[1].key is None and rows[1].data == {}
    assert [r.id for r in ledger.events(since_id=first)] == [second]
    assert [r.id for r in ledger.events(limit=1)] == [first]
    assert ledger.last_event_id() == second
    assert ledger.event(first) == rows[0] and ledger.event(second + 1) is None


def test_a_key_fires_once_even_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    with Ledger.open(path) as ledger:
        assert ledger.add_event(T0, "alert", "warning", "80%", "", key=KEY) == 1
        assert ledger.add_event(T0 + 60, "alert", "warning", "80% again", "", key=KEY) is None
    # A new process (the restarted daemon) opens the same file: the key is still there.
    with Ledger.open(path) as ledger:
        assert ledger.add_event(T0 + 120, "alert", "warning", "80%", "", key=KEY) is None
        assert [(e.id, e.title) for e in ledger.events()] == [(1, "80%")]
        assert ledger.event_keys("hk-monthly@2026-01-15") == {KEY}
        # Keyless events never collide.
        assert ledger.add_event(T0, "resume", "info", "resumed", "") == 2
        assert ledger.add_event(T0, "resume", "info", "resumed", "") == 3


def test_event_keys_is_a_literal_case_sensitive_prefix(ledger: Ledger) -> None:
    keys = ["a@1:50%", "a@1:80%", "a@2:50%", "A@1:50%", "a_1:50%", "b@1:50%", "a@1"]
    for i, key in enumerate(keys):
        ledger.add_event(T0 + i, "alert", "info", key, "", key=key)
    assert ledger.event_keys("a@1:") == {"a@1:50%", "a@1:80%"}
    # "_" and "%" are wildcards to LIKE; here they are just characters.
    assert ledger.event_keys("a_") == {"a_1:50%"}
    assert ledger.event_keys("a@1:5%") == set()
    assert ledger.event_keys("") == set(keys)


@settings(deadline=None, max_examples=50)
@given(st.lists(st.one_of(st.none(), st.sampled_from(["k1", "k2", "k3"])), max_size=12))
def test_inserts_store_each_key_once(tmp_path_factory: pytest.TempPathFactory,
                                     keys: list[str | None]) -> None:
    path = tmp_path_factory.mktemp("ev") / "ledger.sqlite3"
    seen: set[str] = set()
    with Ledger.open(path) as ledger:
        for i, key in enumerate(keys):
            got = ledger.add_event(T0 + i, "alert", "info", f"t{i}", "", key=key)
            assert (got is None) == (key is not None and key in seen)
            if key is not None:
                seen.add(key)
        stored = ledger.events()
    assert len(stored) == sum(k is None for k in keys) + len(seen)
    assert [e.id for e in stored] == sorted(e.id for e in stored)


def test_an_event_joins_the_callers_transaction(ledger: Ledger) -> None:
    # The daemon records an alert's event with the state derived from it; a failure between
    # them must leave neither, or the alert would be lost (or fired twice).
    with pytest.raises(RuntimeError), ledger.transaction():
        ledger.add_event(T0, "alert", "critical", "cap", "", key=KEY)
        ledger.put_state("guard.hk", "{}")
        raise RuntimeError("crash before commit")
    assert ledger.events() == [] and ledger.get_state("guard.hk") is None
    assert ledger.add_event(T0, "alert", "critical", "cap", "", key=KEY) == 1


def test_ids_are_never_reused(ledger: Ledger, tmp_path: Path) -> None:
    for i in range(3):
        ledger.add_event(T0 + i, "resume", "info", f"e{i}", "")
    conn = sqlite3.connect(tmp_path / "ledger.sqlite3")
    conn.execute("DELETE FROM events WHERE id = 3")
    conn.commit()
    conn.close()
    # A follower that saw id 3 must not miss the next event: AUTOINCREMENT gives 4, not 3.
    assert ledger.add_event(T0 + 9, "resume", "info", "next", "") == 4


def test_mark_delivered_keeps_the_last_attempt_per_channel(ledger: Ledger) -> None:
    event_id = ledger.add_event(T0, "alert", "critical", "cap", "body", key=KEY)
    assert event_id is not None
    ledger.mark_delivered(event_id, "json://host/hook", False, "connection refused", at=T0)
    ledger.mark_delivered(event_id, "tgram://1...p/42/", True, "")
    ledger.mark_delivered(event_id, "json://host/hook", True, "", at=T0 + 3)
    event = ledger.event(event_id)
    assert event is not None
    assert {ch: s.as_dict() for ch, s in event.delivered.items()} == {
        "json://host/hook": {"ok": True, "detail": "", "at": T0 + 3},
        "tgram://1...p/42/": {"ok": True, "detail": "", "at": None},
    }
    with pytest.raises(KeyError):
        ledger.mark_delivered(event_id + 1, "json://host/hook", True, "")


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"level": "fatal"}, ValueError),
        ({"kind": ""}, ValueError),
        ({"title": ""}, ValueError),
        ({"at": -1}, ValueError),
        ({"at": True}, TypeError),
        ({"key": ""}, ValueError),
        ({"data": {"x": float("nan")}}, ValueError),
        ({"data": {"x": object()}}, ValueError),
        ({"data": ["not", "a", "mapping"]}, TypeError),
    ],
)
def test_bad_events_are_refused(ledger: Ledger, kwargs: dict[str, object],
                                error: type[Exception]) -> None:
    args: dict[str, object] = {"at": T0, "kind": "alert", "level": "info", "title": "t",
                               "body": "", **kwargs}
    with pytest.raises(error):
        ledger.add_event(**args)  # type: ignore[arg-type]
    assert ledger.events() == []


def test_a_readonly_ledger_cannot_log(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    Ledger.open(path).close()
    with Ledger.open(path, readonly=True) as ro, pytest.raises(LedgerError):
        ro.add_event(T0, "alert", "info", "t", "")


# -- commands ------------------------------------------------------------------------------


def test_the_command_queue_drains_in_order(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    with Ledger.open(path) as cli:
        topup = cli.enqueue_command(T0, "plan.topup", {"plan": "hk", "bytes": 1_000_000_000})
        resume = cli.enqueue_command(T0 + 1, "plan.resume", {"plan": "hk", "seconds": 3600})
    # The daemon is another process with its own connection.
    with Ledger.open(path) as daemon:
        pending = daemon.pending_commands()
        assert [(c.id, c.kind, c.args) for c in pending] == [
            (topup, "plan.topup", {"plan": "hk", "bytes": 1_000_000_000}),
            (resume, "plan.resume", {"plan": "hk", "seconds": 3600}),
        ]
        assert not any(c.done for c in pending)
        daemon.finish_command(topup, T0 + 2, {"ok": True, "allowance": 21_000_000_000})
        assert [c.id for c in daemon.pending_commands()] == [resume]
        with pytest.raises(LedgerError, match="already finished"):
            daemon.finish_command(topup, T0 + 3, {"ok": True})
        with pytest.raises(KeyError):
            daemon.finish_command(resume + 1, T0 + 3, None)
    with Ledger.open(path, readonly=True) as reader:
        done = reader.command(topup)
        assert done is not None and done.done and done.done_at == T0 + 2
        assert done.result == {"ok": True, "allowance": 21_000_000_000}
        still = reader.command(resume)
        assert still is not None and not still.done and still.result is None
        assert reader.command(resume + 1) is None


def test_commands_need_a_kind_and_json_args(ledger: Ledger) -> None:
    with pytest.raises(ValueError):
        ledger.enqueue_command(T0, "", {})
    with pytest.raises(ValueError):
        ledger.enqueue_command(T0, "plan.topup", {"bytes": {1, 2}})
    assert ledger.enqueue_command(T0, "plan.status") == 1
    assert ledger.pending_commands()[0].args == {}


# -- migration -----------------------------------------------------------------------------


def test_v3_to_v4_keeps_every_row(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    conn = sqlite3.connect(path, isolation_level=None)
    for step in MIGRATIONS[:3]:
        step(conn)
    conn.execute("PRAGMA user_version = 3")
    conn.executemany(
        "INSERT INTO usage_minute VALUES (?, ?, ?, ?, ?)",
        [(T0 + 60, "wwan0", "firefox", 100, 1_000), (T0 + 120, "wwan0", "apt", 5, 50)],
    )
    conn.execute("INSERT INTO usage_q15 VALUES (?, 'wwan0', 'firefox', 100, 1000)", (T0,))
    conn.execute("INSERT INTO usage_q15 VALUES (?, 'wwan0', 'apt', 5, 50)", (T0,))
    conn.execute("INSERT INTO usage_day VALUES (?, 'wwan0', 'firefox', 100, 1000)", (T0,))
    conn.execute("INSERT INTO usage_day VALUES (?, 'wwan0', 'apt', 5, 50)", (T0,))
    conn.execute("INSERT INTO apps VALUES ('firefox', 'app', ?, ?)", (T0, T0 + 60))
    conn.execute("INSERT INTO kv VALUES ('guard.fired', '[\"old\"]')")
    conn.close()
    before = _dump(path)

    # A reader never migrates: v3 is refused until the daemon has opened it.
    with pytest.raises(SchemaTooOldError):
        Ledger.open(path, readonly=True)
    with Ledger.open(path) as ledger:
        assert ledger.add_event(T0, "alert", "info", "50%", "", key="k") == 1
        ledger.record(T0 + 3 * 86_400, [UsageDelta("wwan0", "curl", 1, 1)])
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == CURRENT_VERSION >= 4
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"events", "commands"} <= tables
    conn.close()
    after = _dump(path)
    for table, rows in before.items():
        assert set(rows) <= set(after[table]), table
    assert after["kv"] == before["kv"]


def _dump(path: Path) -> dict[str, list[tuple[object, ...]]]:
    conn = sqlite3.connect(path)
    try:
        # Usage rows as v3 had them (later versions add columns): time, network, app, up, down.
        return {
            t: [r[:5] if t.startswith("usage") else r
                for r in conn.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall()]
            for t in ("usage_minute", "usage_q15", "usage_day", "apps", "cgroups", "kv")
        }
    finally:
        conn.close()


# -- the CLI -------------------------------------------------------------------------------


def _app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """Stand-in for cli/main.py: makes `events` a subcommand, as it will be there."""

    register(app)
    return app


def _seed(state_dir: Path) -> tuple[int, int]:
    with Ledger.open(state_dir / "ledger.sqlite3") as ledger:
        a = ledger.add_event(T0, "alert", "warning", "hk: 80% used", "4.0 GB left on hk",
                             key=KEY)
        b = ledger.add_event(T0 + 60, "pause", "critical", "hk: data paused", "until Feb 15")
        assert a is not None and b is not None
        ledger.mark_delivered(a, "json://127.0.0.1/hook", False, "connection refused")
    return a, b


def test_events_json_lists_the_log(tmp_path: Path) -> None:
    a, b = _seed(tmp_path)
    result = CliRunner().invoke(_app(), ["events", "--state-dir", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["last_id"] == b
    assert [(e["id"], e["kind"], e["title"]) for e in out["events"]] == [
        (a, "alert", "hk: 80% used"), (b, "pause", "hk: data paused")
    ]
    assert out["events"][0]["delivered"] == {
        "json://127.0.0.1/hook": {"ok": False, "detail": "connection refused", "at": None}
    }
    since = CliRunner().invoke(
        _app(), ["events", "--state-dir", str(tmp_path), "--json", "--since", str(a)]
    )
    assert [e["id"] for e in json.loads(since.stdout)["events"]] == [b]


def test_events_text_shows_title_body_and_failures(tmp_path: Path) -> None:
    _seed(tmp_path)
    result = CliRunner().invoke(_app(), ["events", "--state-dir", str(tmp_path)])
    assert result.exit_code == 0
    assert "hk: 80% used" in result.stdout and "4.0 GB left on hk" in result.stdout
    assert "json://127.0.0.1/hook FAILED (connection refused)" in result.stdout
    assert "hk: data paused" in result.stdout


def test_events_without_a_ledger_is_empty(tmp_path: Path) -> None:
    result = CliRunner().invoke(_app(), ["events", "--state-dir", str(tmp_path), "--json"])
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {"events": [], "last_id": 0}


FOLLOW = (
    "import typer, sys\n"
    "from meterguard.cli.events import register\n"
    "app = typer.Typer()\n"
    "app.callback()(lambda: None)\n"
    "register(app)\n"
    "app(sys.argv[1:])\n"
)


def _read_line(proc: subprocess.Popen[str], deadline: float) -> str:
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    buf = ""
    while time.monotonic() < deadline:
        chunk = proc.stdout.readline()
        buf += chunk or ""
        if buf.endswith("\n"):
            return buf
        time.sleep(0.02)
    raise AssertionError(f"no line from `events --follow` in time (got {buf!r})")


def test_follow_prints_new_events_until_ctrl_c(tmp_path: Path) -> None:
    a, _ = _seed(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-c", FOLLOW, "events", "--follow", "--json", "--since", str(a),
         "--state-dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        # The event after --since that already exists comes first ...
        first = json.loads(_read_line(proc, time.monotonic() + 20))
        assert first["title"] == "hk: data paused"
        # ... then one logged while it follows.
        with Ledger.open(tmp_path / "ledger.sqlite3") as ledger:
            new = ledger.add_event(T0 + 120, "resume", "info", "hk: resumed", "new cycle")
        second = json.loads(_read_line(proc, time.monotonic() + 20))
        assert (second["id"], second["title"]) == (new, "hk: resumed")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
        assert proc.stderr is not None and "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
