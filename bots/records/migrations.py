"""Schema migrations for the call-record database: a versioned list, applied in order at start-up.

Why not Alembic: our schema is three tables that grow rarely; Alembic would add Mako, an
``alembic.ini``/``env.py``/script-directory layout and a second CLI for operators, and its
autogenerate needs a live database anyway. A table ``stepcall_schema_version`` (one row per
applied migration) plus a Python list of steps does the same job for SQLite and PostgreSQL in
one short module, runs automatically when the store opens, and is tested here.

Adding a change: append ``Migration(N+1, "what", step)`` where ``step(conn)`` issues the DDL
(``conn.execute(text("ALTER TABLE ..."))`` or ``Table.create(conn)``), and update
``bots/records/schema.py`` to match. Never edit a step that has shipped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, inspect, select, text

from bots.records import schema
from bots.records.models import utcnow


@dataclass(frozen=True)
class Migration:
    """One schema change: ``step`` runs inside the migration transaction."""

    version: int
    description: str
    step: Callable[[Connection], None]


def _v1_initial(conn: Connection) -> None:
    for table in (schema.calls, schema.turns, schema.tool_calls):
        table.create(conn, checkfirst=True)


def _v2_call_counters(conn: Connection) -> None:
    # v1 creates the tables as ``schema`` has them now: a fresh database has the columns
    have = {c["name"] for c in inspect(conn).get_columns("calls")}
    for column in ("unanswered_turns", "holding_lines", "turn_retries"):
        if column not in have:
            conn.execute(text(f"ALTER TABLE calls ADD COLUMN {column} INTEGER NOT NULL DEFAULT 0"))


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "calls, turns and tool_calls", _v1_initial),
    Migration(2, "calls: unanswered_turns, holding_lines, turn_retries", _v2_call_counters),
)


def latest_version() -> int:
    """The version the code expects."""
    return MIGRATIONS[-1].version


def current_version(conn: Connection) -> int:
    """The newest applied migration (0 for an empty database)."""
    schema.schema_version.create(conn, checkfirst=True)
    value = conn.execute(
        select(schema.schema_version.c.version)
        .order_by(schema.schema_version.c.version.desc())
        .limit(1)
    ).scalar()
    return int(value or 0)


def migrate(engine: Engine) -> list[int]:
    """Bring the database to :func:`latest_version`; return the versions applied now.

    Safe when several servers start at once on PostgreSQL (a transaction-scoped advisory lock
    serializes them); a SQLite database has one server. A database newer than the code is an
    error.
    """
    applied: list[int] = []
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(7428310)"))
        version = current_version(conn)
        if version > latest_version():
            raise RuntimeError(
                f"call-record database is at schema version {version}, newer than this "
                f"stepcall ({latest_version()}): upgrade stepcall"
            )
        for migration in MIGRATIONS:
            if migration.version <= version:
                continue
            migration.step(conn)
            conn.execute(
                schema.schema_version.insert().values(
                    version=migration.version,
                    description=migration.description,
                    applied_at=utcnow(),
                )
            )
            applied.append(migration.version)
    return applied
