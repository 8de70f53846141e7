"""Database unavailable: call-record writes are buffered, then flushed when it comes back.

Real PostgreSQL, really stopped (``pg_ctl stop -m immediate``) in the middle of a call's writes
and started again; nothing submitted in between is lost, and the order of writes is kept.
"""

from __future__ import annotations

import time
from datetime import timedelta

from loguru import logger

from bots.records.models import CallRecord, TurnRecord, utcnow
from bots.records.store import CallStore
from bots.records.writer import RecordWriter


def _wait(predicate, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_writes_are_buffered_while_postgres_is_down_and_flushed_after(pg_cluster):
    store = CallStore.open(pg_cluster.url)
    writer = RecordWriter(store, retry_min_secs=0.1, retry_max_secs=0.5)
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), level="WARNING")
    try:
        t0 = utcnow()
        writer.submit("start_call", CallRecord("CA-db", "front", t0))
        writer.submit("save_turn", TurnRecord("CA-db", 1, "user", t0, audio_ms=900.0))
        assert writer.flush(10)

        pg_cluster.stop()
        turn = TurnRecord("CA-db", 2, "bot", t0 + timedelta(seconds=1), text="Hel")
        writer.submit("save_turn", turn)
        turn.text = "Hello there"  # the writer copied the record: a later upsert wins
        writer.submit("save_turn", turn)
        writer.submit("save_turn", TurnRecord("CA-db", 3, "user", t0 + timedelta(seconds=3)))
        writer.submit("end_call", "CA-db", "completed", t0 + timedelta(seconds=5), None)
        assert not writer.flush(1.0)  # cannot commit while the database is down
        assert _wait(lambda: not writer.database_available)
        assert writer.buffered == 4 and writer.lost == 0 and writer.failed == 0

        pg_cluster.start()
        assert writer.flush(30), "buffered writes were not flushed after the database came back"
        assert writer.database_available and writer.buffered == 0
        call = store.get_call("CA-db")
        assert call.outcome == "completed"
        assert [(t.seq, t.role, t.text) for t in call.turns] == [
            (1, "user", None), (2, "bot", "Hello there"), (3, "user", None),
        ]
        assert any("database unavailable" in line for line in lines)
        assert any("database back" in line for line in lines)
    finally:
        logger.remove(sink)
        writer.close(2)
        store.close()


def test_close_while_postgres_is_down_reports_the_unsaved_writes(pg_cluster):
    store = CallStore.open(pg_cluster.url)
    writer = RecordWriter(store, retry_min_secs=0.05, retry_max_secs=0.2)
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), level="ERROR")
    try:
        pg_cluster.stop()
        writer.submit("start_call", CallRecord("CA-lost", "front", utcnow()))
        started = time.monotonic()
        writer.close(1.5)
        assert time.monotonic() - started < 5
        assert writer.lost == 1 and writer.buffered == 0
        assert any("1 writes not saved" in line for line in lines)
    finally:
        logger.remove(sink)
        store.close()


def test_buffer_is_bounded_and_drops_the_oldest(pg_cluster):
    store = CallStore.open(pg_cluster.url)
    writer = RecordWriter(store, max_pending=3, retry_min_secs=0.05, retry_max_secs=0.1)
    try:
        pg_cluster.stop()
        for i in range(5):
            writer.submit("start_call", CallRecord(f"CA-{i}", "front", utcnow()))
        assert _wait(lambda: writer.lost == 2)
        pg_cluster.start()
        assert writer.flush(30)
        assert [store.get_call(f"CA-{i}") is not None for i in range(5)] == [
            False, False, True, True, True,
        ]
    finally:
        writer.close(2)
        store.close()
