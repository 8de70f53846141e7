"""CallStore on SQLite: migrations, reads with filters, the background writer, recording purge,
and a writer process killed with SIGKILL mid-call leaving a readable partial record."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from bots.records import schema
from bots.records.migrations import latest_version, migrate
from bots.records.models import CallRecord, ToolCallRecord, TurnRecord, utcnow
from bots.records.store import CallFilter, CallStore, normalize_url, purge_expired_recordings

ROOT = Path(__file__).resolve().parents[2]


def test_migrations_are_versioned_and_idempotent(tmp_path):
    url = f"sqlite:///{tmp_path}/m.db"
    engine = create_engine(url)
    assert migrate(engine) == [1, 2]
    assert migrate(engine) == []
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT version FROM stepcall_schema_version")).all()
        tables = {
            r[0] for r in conn.execute(text("SELECT name FROM sqlite_master WHERE type='table'"))
        }
    assert [r[0] for r in rows] == [1, latest_version()]
    assert {"calls", "turns", "tool_calls"} <= tables


def test_database_newer_than_code_is_refused(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path}/n.db")
    migrate(engine)
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO stepcall_schema_version VALUES (999, 'future', CURRENT_TIMESTAMP)")
        )
    with pytest.raises(RuntimeError, match="999"):
        migrate(engine)


def test_postgres_urls_use_psycopg3():
    assert normalize_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_url("sqlite:///x.db") == "sqlite:///x.db"


def test_sqlite_uses_wal(store):
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_filters_and_latency_points(store):
    t0 = utcnow() - timedelta(hours=2)
    for i, (bot, outcome, frm) in enumerate(
        [
            ("front_desk", "completed", "+1555111"),
            ("pizza", "transferred", "+1555222"),
            ("pizza", "error", "+1555333"),
        ]
    ):
        cid = f"CA{i}"
        store.start_call(CallRecord(cid, bot, t0 + timedelta(minutes=i), from_number=frm))
        store.save_turn(
            TurnRecord(
                cid, 1, "bot", t0 + timedelta(minutes=i), text="hi", latency_ms=400.0 + 100 * i
            )
        )
        store.end_call(cid, outcome)
    store.start_call(CallRecord("CA-live", "pizza", utcnow()))
    assert [c.call_id for c in store.list_calls()] == ["CA-live", "CA2", "CA1", "CA0"]
    assert [c.call_id for c in store.list_calls(CallFilter(bot="pizza"))] == [
        "CA-live",
        "CA2",
        "CA1",
    ]
    assert [c.call_id for c in store.list_calls(CallFilter(outcome="transferred"))] == ["CA1"]
    assert [c.call_id for c in store.list_calls(CallFilter(outcome="in_progress"))] == ["CA-live"]
    assert [c.call_id for c in store.list_calls(CallFilter(number="333"))] == ["CA2"]
    assert [c.call_id for c in store.list_calls(CallFilter(since=t0 + timedelta(seconds=90)))] == [
        "CA-live",
        "CA2",
    ]
    with pytest.raises(ValueError, match="bogus"):
        store.list_calls(CallFilter(outcome="bogus"))
    points = store.latency_points(bot="pizza")
    assert [p.latency_ms for p in points] == [500.0, 600.0]
    assert store.bots() == ["front_desk", "pizza"]
    assert store.turn_counts(["CA0", "CA-live"]) == {"CA0": 1}


def test_tool_call_json_round_trip_and_upserts(store):
    store.start_call(CallRecord("CA", "b", utcnow()))
    tool = ToolCallRecord("CA", "t1", "lookup", {"q": "pizza ü"}, utcnow())
    store.save_tool_call(tool)
    tool.result, tool.ended_at = ["ok", 3], utcnow()
    store.save_tool_call(tool)
    turn = TurnRecord("CA", 1, "bot", utcnow(), text="Hel")
    store.save_turn(turn)
    turn.text = "Hello"
    store.save_turn(turn)
    call = store.get_call("CA")
    assert len(call.tool_calls) == 1 and call.tool_calls[0].arguments == {"q": "pizza ü"}
    assert call.tool_calls[0].result == ["ok", 3]
    assert [t.text for t in call.turns] == ["Hello"]
    assert store.get_call("nope") is None


def test_writer_survives_a_bad_write_in_a_batch(store):
    w = store.writer
    w.submit("start_call", CallRecord("CA", "b", utcnow()))
    w.submit("save_turn", TurnRecord("NO-SUCH-CALL", 1, "bot", utcnow()))  # FK violation
    w.submit("save_turn", TurnRecord("CA", 1, "bot", utcnow(), text="kept"))
    assert w.flush()
    assert [t.text for t in store.get_call("CA").turns] == ["kept"]
    assert w.failed == 1
    with pytest.raises(ValueError, match="drop_table"):
        w.submit("drop_table", "calls")


def test_writer_writes_a_row_once_per_batch_with_its_latest_state(store):
    w = store.writer
    gate = threading.Event()
    w.submit("start_call", CallRecord("CA", "b", utcnow()))
    assert w.flush()
    # hold the writer's thread so the next writes gather in one batch
    original, store.apply = store.apply, lambda conn, op, *a: (gate.wait(5), original(conn, op, *a))
    w.submit("save_turn", TurnRecord("CA", 9, "user", utcnow(), text="first"))  # alone in a batch
    time.sleep(0.2)
    turn = TurnRecord("CA", 1, "bot", utcnow())
    for text_so_far in ("We", "We are", "We are open"):  # a bot turn's text deltas
        turn.text = text_so_far
        w.submit("save_turn", turn)
    tool = ToolCallRecord("CA", "t1", "lookup", {"q": 1}, utcnow())
    w.submit("save_tool_call", tool)
    tool.result = "done"
    w.submit("save_tool_call", tool)
    w.submit("end_call", "CA", "completed", utcnow(), None)
    gate.set()
    assert w.flush()
    store.apply = original
    call = store.get_call("CA")
    assert {t.seq: t.text for t in call.turns} == {1: "We are open", 9: "first"}
    assert call.tool_calls[0].result == "done" and call.outcome == "completed"
    assert w.superseded == 3  # two turn texts and the tool call's first state, never written


def test_purge_expired_recordings(store, tmp_path):
    now = utcnow()
    for cid, days in (("old", -1), ("new", 5)):
        wav = tmp_path / f"{cid}.wav"
        wav.write_bytes(b"RIFF")
        store.start_call(CallRecord(cid, "b", now))
        store.set_recording(cid, str(wav), now + timedelta(days=days))
    assert purge_expired_recordings(store) == ["old"]
    assert not (tmp_path / "old.wav").exists() and (tmp_path / "new.wav").exists()
    assert store.get_call("old").recording_path is None
    assert store.get_call("new").recording_path == str(tmp_path / "new.wav")
    assert purge_expired_recordings(store, now + timedelta(days=6)) == ["new"]


CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from pipecat.frames.frames import (BotStartedSpeakingFrame, BotStoppedSpeakingFrame,
        FunctionCallInProgressFrame, TTSTextFrame, UserStartedSpeakingFrame,
        UserStoppedSpeakingFrame)
    from pipecat.processors.filters.identity_filter import IdentityFilter
    from pipecat.tests.utils import SleepFrame, run_test
    from bots.records.store import CallStore
    from bots.records.observer import CallRecordObserver

    async def main():
        store = CallStore.open(sys.argv[1])
        obs = CallRecordObserver(store, "CA-killed", bot="front_desk", from_number="+1555")
        frames = [UserStartedSpeakingFrame(), SleepFrame(sleep=0.1), UserStoppedSpeakingFrame(),
                  BotStartedSpeakingFrame(), TTSTextFrame("Your pizza is on its way.", text_type="sentence"),
                  BotStoppedSpeakingFrame(), FunctionCallInProgressFrame("lookup", "t1", {"id": 7}),
                  UserStartedSpeakingFrame(), SleepFrame(sleep=3600)]
        await run_test(IdentityFilter(), frames_to_send=frames, observers=[obs])

    asyncio.run(main())
    """
)


def test_kill_9_mid_call_leaves_a_readable_partial_record(tmp_path):
    db = tmp_path / "calls.db"
    url = f"sqlite:///{db}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, url],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        seen = False
        while time.monotonic() < deadline and proc.poll() is None:
            if db.exists():
                engine = create_engine(url)
                try:
                    with engine.connect() as conn:
                        n = conn.execute(
                            text("SELECT count(*) FROM tool_calls WHERE call_id='CA-killed'")
                        ).scalar()
                        seen = bool(n)
                except Exception:
                    seen = False
                finally:
                    engine.dispose()
            if seen:
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert seen, "the child never committed its partial call"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    store = CallStore.open(url)
    try:
        call = store.get_call("CA-killed")
        assert call is not None and call.bot == "front_desk" and call.from_number == "+1555"
        assert call.ended_at is None and call.outcome is None  # partial: the call never ended
        assert [t.role for t in call.turns] == ["user", "bot", "user"]
        assert call.turns[1].text == "Your pizza is on its way."
        assert call.turns[2].ended_at is None
        assert call.tool_calls[0].name == "lookup" and call.tool_calls[0].arguments == {"id": 7}
        assert [c.call_id for c in store.list_calls(CallFilter(outcome="in_progress"))] == [
            "CA-killed"
        ]
    finally:
        store.close()


def test_migration_2_adds_the_call_counters_to_a_version_1_database(tmp_path):
    url = f"sqlite:///{tmp_path}/v1.db"
    engine = create_engine(url)
    with engine.begin() as conn:  # the calls table as version 1 shipped it
        conn.execute(
            text(
                "CREATE TABLE calls (call_id VARCHAR(128) PRIMARY KEY, bot VARCHAR(128) NOT NULL,"
                " flow VARCHAR(512), stream_id VARCHAR(128), from_number VARCHAR(64),"
                " to_number VARCHAR(64), started_at DATETIME NOT NULL, ended_at DATETIME,"
                " outcome VARCHAR(32), error TEXT, recording_path VARCHAR(1024),"
                " recording_expires_at DATETIME)"
            )
        )
        conn.execute(
            text("INSERT INTO calls (call_id, bot, started_at) VALUES ('CA-old', 'b', '2026-01-01')")
        )
        conn.execute(
            text(
                "CREATE TABLE stepcall_schema_version (version INTEGER PRIMARY KEY,"
                " description VARCHAR(256) NOT NULL, applied_at DATETIME NOT NULL)"
            )
        )
        conn.execute(
            text("INSERT INTO stepcall_schema_version VALUES (1, 'v1', CURRENT_TIMESTAMP)")
        )
        for table in (schema.turns, schema.tool_calls):  # unchanged since version 1
            table.create(conn)
    assert migrate(engine) == [2]
    store = CallStore.open(url)
    try:
        old = store.get_call("CA-old")
        assert old is not None and (old.unanswered_turns, old.holding_lines) == (0, 0)
        store.set_counters("CA-old", {"unanswered_turns": 2, "holding_lines": 1, "turn_retries": 1})
        again = store.get_call("CA-old")
        assert (again.unanswered_turns, again.holding_lines, again.turn_retries) == (2, 1, 1)
        assert store.counter_totals(bot="b")["unanswered_turns"] == 2
        with pytest.raises(ValueError, match="unknown call counters"):
            store.set_counters("CA-old", {"nonsense": 1})
    finally:
        store.close()
