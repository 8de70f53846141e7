"""The call-record tables (SQLAlchemy Core), as of the newest migration.

Portable between SQLite and PostgreSQL: strings, integers, floats, booleans, timezone-aware
timestamps (stored as UTC) and JSON kept as text. ``bots/records/migrations.py`` creates and
upgrades these tables; change them only together with a new migration there.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

calls = Table(
    "calls",
    metadata,
    Column("call_id", String(128), primary_key=True),
    Column("bot", String(128), nullable=False),
    Column("flow", String(512)),
    Column("stream_id", String(128)),
    Column("from_number", String(64)),
    Column("to_number", String(64)),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("ended_at", DateTime(timezone=True)),
    Column("outcome", String(32)),
    Column("error", Text),
    Column("recording_path", String(1024)),
    Column("recording_expires_at", DateTime(timezone=True)),
    Column("unanswered_turns", Integer, nullable=False, default=0, server_default="0"),
    Column("holding_lines", Integer, nullable=False, default=0, server_default="0"),
    Column("turn_retries", Integer, nullable=False, default=0, server_default="0"),
    Index("ix_calls_started_at", "started_at"),
    Index("ix_calls_bot", "bot"),
)

turns = Table(
    "turns",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("call_id", String(128), ForeignKey("calls.call_id", ondelete="CASCADE"), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("role", String(8), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("ended_at", DateTime(timezone=True)),
    Column("text", Text),
    Column("audio_ms", Float),
    Column("latency_ms", Float),
    Column("interrupted", Boolean, nullable=False, default=False),
    UniqueConstraint("call_id", "seq", name="uq_turns_call_seq"),
    Index("ix_turns_started_at", "started_at"),
)

tool_calls = Table(
    "tool_calls",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("call_id", String(128), ForeignKey("calls.call_id", ondelete="CASCADE"), nullable=False),
    Column("tool_call_id", String(128), nullable=False),
    Column("name", String(128), nullable=False),
    Column("arguments", Text),
    Column("result", Text),
    Column("error", Text),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("ended_at", DateTime(timezone=True)),
    UniqueConstraint("call_id", "tool_call_id", name="uq_tool_calls_call_tool"),
)

schema_version = Table(
    "stepcall_schema_version",
    MetaData(),
    Column("version", Integer, primary_key=True),
    Column("description", String(256), nullable=False),
    Column("applied_at", DateTime(timezone=True), nullable=False),
)
