"""Call records: models, the SQL store (SQLite/PostgreSQL) with migrations, the background writer.

Wiring (bot server): ``store = CallStore.open(url)`` once per process; per call, a
``bots.records.observer.CallRecordObserver(store, call_id, ...)`` on the worker; the
dashboard (``bots/records/dashboard.py``) reads the same store; ``store.close()`` at shutdown.
"""

from __future__ import annotations

from bots.records.models import (
    OUTCOMES,
    CallRecord,
    RecordingPolicy,
    ToolCallRecord,
    TurnRecord,
)
from bots.records.store import (
    DEFAULT_DATABASE_URL,
    CallFilter,
    CallStore,
    LatencyPoint,
    purge_expired_recordings,
)
from bots.records.writer import RecordWriter

__all__ = [
    "DEFAULT_DATABASE_URL",
    "OUTCOMES",
    "CallFilter",
    "CallRecord",
    "CallStore",
    "LatencyPoint",
    "RecordWriter",
    "RecordingPolicy",
    "ToolCallRecord",
    "TurnRecord",
    "purge_expired_recordings",
]
