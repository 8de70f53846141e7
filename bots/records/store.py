"""CallStore: call records in SQLite (default, zero set-up) or PostgreSQL (by URL).

``CallStore.open(url)`` connects and migrates. Writes are small idempotent upserts, each in its
own transaction when called directly; on the call path they go through :attr:`CallStore.writer`
(a background thread, ``bots/records/writer.py``) so the event loop never waits on the database.
Reads (dashboard) are plain synchronous queries: run them in a thread.

URLs: ``sqlite:///path/to/calls.db`` (folders are created; WAL journal, so readers never block
the writer and a killed process loses nothing committed), ``postgresql://user:pw@host/db``
(driven by psycopg 3).
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from loguru import logger
from sqlalchemy import Connection, Engine, and_, create_engine, event, func, or_, select
from sqlalchemy.engine import make_url

from bots.records import schema
from bots.records.migrations import migrate
from bots.records.models import (
    CALL_COUNTERS,
    CallRecord,
    ToolCallRecord,
    TurnRecord,
    check_outcome,
    utcnow,
)
from bots.records.writer import WRITE_OPS, RecordWriter

DEFAULT_DATABASE_URL = "sqlite:///var/calls.db"


def normalize_url(url: str) -> str:
    """Pick our drivers: ``postgres://``/``postgresql://`` → psycopg 3."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


def _utc(value: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes: they are UTC (we only store UTC)."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _dump(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return json.dumps(value, ensure_ascii=False, default=str)


def _load(value: str | None) -> Any:
    if value is None:
        return None
    try:
        return json.loads(value)
    except ValueError:
        return value


@dataclass
class CallFilter:
    """Which calls :meth:`CallStore.list_calls` returns (None: any)."""

    bot: str | None = None
    outcome: str | None = None
    number: str | None = None  # matches the caller's or the called number (substring)
    since: datetime | None = None
    until: datetime | None = None
    limit: int = 100
    offset: int = 0


@dataclass
class LatencyPoint:
    """One bot turn's voice-to-voice latency, for aggregate plots."""

    at: datetime
    bot: str
    latency_ms: float


class CallStore:
    """The call-record database (thread-safe; one per server process)."""

    def __init__(self, engine: Engine) -> None:
        """Wrap an engine; prefer :meth:`open`, which also migrates."""
        self.engine = engine
        self._writer: Any = None
        self._writer_lock = threading.Lock()

    @classmethod
    def open(cls, url: str = DEFAULT_DATABASE_URL, *, migrate_schema: bool = True) -> CallStore:
        """Connect to ``url`` and bring its schema up to date."""
        url = normalize_url(url)
        parsed = make_url(url)
        kwargs: dict[str, Any] = {"future": True}
        if parsed.get_backend_name() == "sqlite":
            database = parsed.database or ""
            if database and database != ":memory:":
                Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        else:
            kwargs["pool_pre_ping"] = True
        engine = create_engine(url, **kwargs)
        if parsed.get_backend_name() == "sqlite":
            event.listen(engine, "connect", _sqlite_pragmas)
        store = cls(engine)
        if migrate_schema:
            applied = migrate(engine)
            if applied:
                logger.info(
                    f"call records: applied schema migrations {applied} ({parsed.render_as_string(hide_password=True)})"
                )
        return store

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self.engine.dialect.name

    @property
    def writer(self) -> Any:
        """The store's background writer (started on first use)."""
        with self._writer_lock:
            if self._writer is None:
                self._writer = RecordWriter(self)
            return self._writer

    def close(self) -> None:
        """Drain and stop the writer, then close all connections."""
        with self._writer_lock:
            writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
        self.engine.dispose()

    # -- writes (each ``_name(conn, ...)`` has a public one-transaction wrapper) --------------

    def run(self, op: str, *args: Any) -> None:
        """Run the write ``op`` (``start_call``, ``save_turn``, …) in its own transaction."""
        with self.engine.begin() as conn:
            self.apply(conn, op, *args)

    def apply(self, conn: Connection, op: str, *args: Any) -> None:
        """Run the write ``op`` on an open connection (the writer batches several)."""
        method = getattr(self, f"_{op}", None)
        if op not in WRITE_OPS or method is None:
            raise ValueError(f"unknown call-record write {op!r}: expected one of {WRITE_OPS}")
        method(conn, *args)

    def start_call(self, call: CallRecord) -> None:
        """Insert (or refresh) a call's header row."""
        self.run("start_call", call)

    def save_turn(self, turn: TurnRecord) -> None:
        """Insert or update a turn (by call and ``seq``)."""
        self.run("save_turn", turn)

    def save_tool_call(self, tool: ToolCallRecord) -> None:
        """Insert or update a tool call (by call and ``tool_call_id``)."""
        self.run("save_tool_call", tool)

    def end_call(
        self, call_id: str, outcome: str, ended_at: datetime | None = None, error: str | None = None
    ) -> None:
        """Record how and when a call ended."""
        self.run("end_call", call_id, outcome, ended_at or utcnow(), error)

    def set_recording(self, call_id: str, path: str | None, expires_at: datetime | None) -> None:
        """Attach (or, with None, detach) a call's recording file."""
        self.run("set_recording", call_id, path, expires_at)

    def set_counters(self, call_id: str, counters: dict[str, int]) -> None:
        """Set a call's counters (:data:`~bots.records.models.CALL_COUNTERS`, whole values)."""
        self.run("set_counters", call_id, counters)

    def _set_counters(self, conn: Connection, call_id: str, counters: dict[str, int]) -> None:
        unknown = set(counters) - set(CALL_COUNTERS)
        if unknown:
            raise ValueError(f"unknown call counters {sorted(unknown)}: expected {CALL_COUNTERS}")
        t = schema.calls
        values = {name: int(value) for name, value in counters.items()}
        conn.execute(t.update().where(t.c.call_id == call_id).values(**values))

    def counter_totals(self, since: datetime | None = None, bot: str | None = None) -> dict[str, int]:
        """The calls' counters summed (calls started since ``since``, of ``bot``)."""
        t = schema.calls
        query = select(*(func.coalesce(func.sum(t.c[name]), 0) for name in CALL_COUNTERS))
        if since is not None:
            query = query.where(t.c.started_at >= since)
        if bot:
            query = query.where(t.c.bot == bot)
        with self.engine.connect() as conn:
            row = conn.execute(query).one()
        return {name: int(value or 0) for name, value in zip(CALL_COUNTERS, row, strict=True)}

    def _start_call(self, conn: Connection, call: CallRecord) -> None:
        values = {
            "bot": call.bot,
            "flow": call.flow,
            "stream_id": call.stream_id,
            "from_number": call.from_number,
            "to_number": call.to_number,
            "started_at": call.started_at,
        }
        t = schema.calls
        done = conn.execute(t.update().where(t.c.call_id == call.call_id).values(**values))
        if done.rowcount == 0:
            conn.execute(t.insert().values(call_id=call.call_id, **values))

    def _save_turn(self, conn: Connection, turn: TurnRecord) -> None:
        values = {
            "role": turn.role,
            "started_at": turn.started_at,
            "ended_at": turn.ended_at,
            "text": turn.text,
            "audio_ms": turn.audio_ms,
            "latency_ms": turn.latency_ms,
            "interrupted": bool(turn.interrupted),
        }
        t = schema.turns
        key = and_(t.c.call_id == turn.call_id, t.c.seq == turn.seq)
        if conn.execute(t.update().where(key).values(**values)).rowcount == 0:
            conn.execute(t.insert().values(call_id=turn.call_id, seq=turn.seq, **values))

    def _save_tool_call(self, conn: Connection, tool: ToolCallRecord) -> None:
        values = {
            "name": tool.name,
            "arguments": _dump(tool.arguments),
            "result": _dump(tool.result),
            "error": tool.error,
            "started_at": tool.started_at,
            "ended_at": tool.ended_at,
        }
        t = schema.tool_calls
        key = and_(t.c.call_id == tool.call_id, t.c.tool_call_id == tool.tool_call_id)
        if conn.execute(t.update().where(key).values(**values)).rowcount == 0:
            conn.execute(
                t.insert().values(call_id=tool.call_id, tool_call_id=tool.tool_call_id, **values)
            )

    def _end_call(
        self, conn: Connection, call_id: str, outcome: str, ended_at: datetime, error: str | None
    ) -> None:
        check_outcome(outcome)
        t = schema.calls
        conn.execute(
            t.update()
            .where(t.c.call_id == call_id)
            .values(outcome=outcome, ended_at=ended_at, error=error)
        )

    def _set_recording(
        self, conn: Connection, call_id: str, path: str | None, expires_at: datetime | None
    ) -> None:
        t = schema.calls
        conn.execute(
            t.update()
            .where(t.c.call_id == call_id)
            .values(recording_path=path, recording_expires_at=expires_at)
        )

    # -- reads ---------------------------------------------------------------------------------

    def get_call(self, call_id: str) -> CallRecord | None:
        """A call with its turns and tool calls (None when unknown)."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(schema.calls).where(schema.calls.c.call_id == call_id)
            ).first()
            if row is None:
                return None
            call = _call_from_row(row)
            t = schema.turns
            for r in conn.execute(select(t).where(t.c.call_id == call_id).order_by(t.c.seq)):
                call.turns.append(
                    TurnRecord(
                        call_id=r.call_id,
                        seq=r.seq,
                        role=r.role,
                        started_at=_utc(r.started_at),
                        ended_at=_utc(r.ended_at),
                        text=r.text,
                        audio_ms=r.audio_ms,
                        latency_ms=r.latency_ms,
                        interrupted=bool(r.interrupted),
                    )
                )
            tc = schema.tool_calls
            rows = conn.execute(
                select(tc).where(tc.c.call_id == call_id).order_by(tc.c.started_at, tc.c.id)
            )
            for r in rows:
                call.tool_calls.append(
                    ToolCallRecord(
                        call_id=r.call_id,
                        tool_call_id=r.tool_call_id,
                        name=r.name,
                        arguments=_load(r.arguments),
                        result=_load(r.result),
                        error=r.error,
                        started_at=_utc(r.started_at),
                        ended_at=_utc(r.ended_at),
                    )
                )
            return call

    def list_calls(self, filters: CallFilter | None = None) -> list[CallRecord]:
        """Calls matching ``filters``, newest first (headers only: no turns or tool calls)."""
        f = filters or CallFilter()
        t = schema.calls
        query = select(t)
        if f.bot:
            query = query.where(t.c.bot == f.bot)
        if f.outcome == "in_progress":
            query = query.where(t.c.outcome.is_(None))
        elif f.outcome:
            query = query.where(t.c.outcome == check_outcome(f.outcome))
        if f.number:
            like = f"%{f.number}%"
            query = query.where(or_(t.c.from_number.like(like), t.c.to_number.like(like)))
        if f.since:
            query = query.where(t.c.started_at >= f.since)
        if f.until:
            query = query.where(t.c.started_at < f.until)
        query = query.order_by(t.c.started_at.desc()).limit(max(1, f.limit)).offset(f.offset)
        with self.engine.connect() as conn:
            return [_call_from_row(r) for r in conn.execute(query)]

    def bots(self) -> list[str]:
        """Bot names that have calls."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(schema.calls.c.bot).distinct().order_by(schema.calls.c.bot))
            return [r[0] for r in rows]

    def turn_counts(self, call_ids: list[str]) -> dict[str, int]:
        """Number of turns per call."""
        if not call_ids:
            return {}
        t = schema.turns
        query = (
            select(t.c.call_id, func.count()).where(t.c.call_id.in_(call_ids)).group_by(t.c.call_id)
        )
        with self.engine.connect() as conn:
            return {r[0]: int(r[1]) for r in conn.execute(query)}

    def latency_points(
        self, since: datetime | None = None, bot: str | None = None
    ) -> list[LatencyPoint]:
        """Voice-to-voice latencies of bot turns (oldest first), for aggregate plots."""
        t, c = schema.turns, schema.calls
        query = (
            select(t.c.started_at, c.c.bot, t.c.latency_ms)
            .join(c, c.c.call_id == t.c.call_id)
            .where(t.c.role == "bot", t.c.latency_ms.is_not(None))
        )
        if since:
            query = query.where(t.c.started_at >= since)
        if bot:
            query = query.where(c.c.bot == bot)
        with self.engine.connect() as conn:
            return [
                LatencyPoint(_utc(r[0]), r[1], float(r[2]))
                for r in conn.execute(query.order_by(t.c.started_at))
            ]

    # -- recordings ----------------------------------------------------------------------------

    def expired_recordings(self, now: datetime | None = None) -> list[tuple[str, str]]:
        """``(call_id, path)`` of recordings past their retention."""
        t = schema.calls
        query = select(t.c.call_id, t.c.recording_path).where(
            t.c.recording_path.is_not(None), t.c.recording_expires_at <= (now or utcnow())
        )
        with self.engine.connect() as conn:
            return [(r[0], r[1]) for r in conn.execute(query)]


def purge_expired_recordings(store: CallStore, now: datetime | None = None) -> list[str]:
    """Delete recordings past their retention period; return the call ids purged.

    The file goes first, then the record's link to it; a file already gone is fine.
    """
    purged: list[str] = []
    for call_id, path in store.expired_recordings(now):
        try:
            os.remove(path)
        except FileNotFoundError:
            pass
        except OSError as e:
            logger.warning(f"could not delete expired recording {path} of call {call_id}: {e}")
            continue
        store.set_recording(call_id, None, None)
        purged.append(call_id)
    if purged:
        logger.info(f"purged {len(purged)} expired call recording(s)")
    return purged


def retention_deadline(ended_at: datetime, retention_days: float) -> datetime:
    """When a recording made at ``ended_at`` expires."""
    return ended_at + timedelta(days=retention_days)


def _call_from_row(row: Any) -> CallRecord:
    return CallRecord(
        call_id=row.call_id,
        bot=row.bot,
        flow=row.flow,
        stream_id=row.stream_id,
        from_number=row.from_number,
        to_number=row.to_number,
        started_at=_utc(row.started_at),
        ended_at=_utc(row.ended_at),
        outcome=row.outcome,
        error=row.error,
        recording_path=row.recording_path,
        recording_expires_at=_utc(row.recording_expires_at),
        **{name: int(getattr(row, name, 0) or 0) for name in CALL_COUNTERS},
    )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()
