"""RecordWriter: call-record writes off the event loop, committed as they happen.

The call path only enqueues (``submit`` never blocks and never raises on a database error).
One daemon thread drains the queue: whatever arrived within ``linger_secs`` (50 ms) of the
first waiting write is written in one transaction and committed. In a batch, an upsert of a
turn or tool call supersedes the earlier ones of the same row (each carries the row's whole
state), so a bot turn's text deltas cost one statement, not one each. The writer's Python holds
the interpreter lock that the calls' event loop needs: at 50 calls it used ~8 % of a core,
one transaction and a statement per event. A server killed mid-call therefore keeps
everything up to its last few milliseconds (SQLite in WAL mode, or PostgreSQL). A batch that
fails is retried one write at a time so a single bad write loses only itself.

Database unavailable (PostgreSQL down, SQLite locked or unwritable: SQLAlchemy's
``OperationalError``/``InterfaceError``): nothing is dropped. The writes stay buffered in order
(at most ``max_pending``; beyond that the oldest are dropped and counted in ``lost``) and are
retried with backoff until the database answers again, then flushed. ``close`` keeps trying
until its timeout and logs how many writes it could not save.
"""

from __future__ import annotations

import copy
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

from loguru import logger
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

#: The writes a writer queues (``CallStore.apply`` runs each by name).
WRITE_OPS = (
    "start_call", "save_turn", "save_tool_call", "end_call", "set_recording", "set_counters"
)


class WriteTarget(Protocol):
    """What the writer writes into (:class:`~bots.records.store.CallStore`)."""

    engine: Engine

    def apply(self, conn: Connection, op: str, *args: Any) -> None:
        """Run the write ``op`` on an open connection."""

#: Most writes committed together.
MAX_BATCH = 256
#: Most writes buffered while the database is unavailable.
MAX_PENDING = 100_000


@dataclass
class _Flush:
    done: threading.Event = field(default_factory=threading.Event)


_STOP = object()


class _Unavailable(Exception):
    """The database cannot be reached; the writes must wait."""


def _is_unavailable(error: BaseException) -> bool:
    if isinstance(error, (OperationalError, InterfaceError)):
        return True
    return isinstance(error, DBAPIError) and bool(error.connection_invalidated)


class RecordWriter:
    """A background thread that applies queued call-record writes to a store (a ``WriteTarget``)."""

    def __init__(
        self,
        store: WriteTarget,
        *,
        max_pending: int = MAX_PENDING,
        retry_min_secs: float = 0.2,
        retry_max_secs: float = 5.0,
        linger_secs: float = 0.05,
    ) -> None:
        """Start the thread."""
        self.store = store
        self.linger_secs = linger_secs
        self.written = 0
        self.superseded = 0  # upserts replaced by a later one of the same row in their batch
        self.failed = 0  # bad writes (constraint violations): dropped one by one
        self.lost = 0  # writes dropped because the buffer overflowed or close gave up
        self.unavailable_since: float | None = None  # monotonic time the database went away
        self.max_pending = max_pending
        self.retry_min_secs = retry_min_secs
        self.retry_max_secs = retry_max_secs
        self._pending: deque[tuple[str, tuple[Any, ...]]] = deque()
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._closed = False
        self._close_deadline: float | None = None
        self._thread = threading.Thread(target=self._run, name="call-record-writer", daemon=True)
        self._thread.start()

    @property
    def buffered(self) -> int:
        """Writes waiting for the database (non-zero only while it is unavailable)."""
        return len(self._pending)

    @property
    def database_available(self) -> bool:
        """False while writes fail because the database cannot be reached."""
        return self.unavailable_since is None

    def submit(self, op: str, *args: Any) -> None:
        """Queue the write ``op`` (see ``CallStore.apply``); records are copied, so the caller
        may keep mutating its own."""
        if op not in WRITE_OPS:
            raise ValueError(f"unknown call-record write {op!r}: expected one of {WRITE_OPS}")
        if self._closed:
            logger.warning(f"call-record writer closed: dropping {op}")
            return
        self._queue.put((op, tuple(copy.copy(a) for a in args)))

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything submitted so far is committed (False on timeout, e.g. while
        the database is unavailable)."""
        if not self._thread.is_alive():
            return self._queue.empty() and not self._pending
        marker = _Flush()
        self._queue.put(marker)
        return marker.done.wait(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued (retrying an unavailable database until ``timeout``), then stop
        the thread."""
        if self._closed:
            return
        self._closed = True
        self._close_deadline = time.monotonic() + max(0.0, timeout - 0.5)
        self._queue.put(_STOP)
        self._thread.join(timeout)

    # -- the thread --------------------------------------------------------------------------

    def _drain(self, item: Any, markers: list[_Flush]) -> bool:
        """Move ``item`` and everything queued behind it into the pending writes; True on stop."""
        stop = False
        while True:
            if item is _STOP:
                stop = True
            elif isinstance(item, _Flush):
                markers.append(item)
            else:
                self._pending.append(item)
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
        overflow = len(self._pending) - self.max_pending
        if overflow > 0:
            for _ in range(overflow):
                self._pending.popleft()
            self.lost += overflow
            logger.error(
                f"call-record buffer full ({self.max_pending} writes while the database is "
                f"unavailable): dropped the {overflow} oldest"
            )
        return stop

    def _drain_ready(self, markers: list[_Flush]) -> bool:
        """Move whatever is queued now into the pending writes; True on stop."""
        try:
            item = self._queue.get_nowait()
        except queue.Empty:
            return False
        return self._drain(item, markers)

    def _run(self) -> None:
        markers: list[_Flush] = []
        delay = self.retry_min_secs
        stop = False
        while True:
            if not stop and not self._pending:
                stop = self._drain(self._queue.get(), markers)
                if not (stop or markers) and self.linger_secs > 0:
                    time.sleep(self.linger_secs)  # let the writes of the moment gather
                    stop = self._drain_ready(markers) or stop
            elif not stop:  # database down: keep taking writes until the next retry is due
                retry_at = time.monotonic() + delay
                while not stop and (left := retry_at - time.monotonic()) > 0:
                    try:
                        stop = self._drain(self._queue.get(timeout=left), markers)
                    except queue.Empty:
                        break
            try:
                self._write_pending()
            except _Unavailable as e:
                self._went_down(e)
                if stop:
                    if self._close_deadline is None or time.monotonic() >= self._close_deadline:
                        self._give_up()
                        break
                    time.sleep(min(delay, 0.5))
                delay = min(delay * 2, self.retry_max_secs)
                continue
            delay = self.retry_min_secs
            self._came_back()
            for marker in markers:
                marker.done.set()
            markers.clear()
            if stop:
                break
        for marker in markers:
            marker.done.set()

    def _went_down(self, error: BaseException) -> None:
        if self.unavailable_since is None:
            self.unavailable_since = time.monotonic()
            logger.error(
                f"call-record database unavailable ({str(error).splitlines()[0][:200]}): "
                f"buffering {len(self._pending)} writes and retrying"
            )

    def _came_back(self) -> None:
        if self.unavailable_since is not None:
            down = time.monotonic() - self.unavailable_since
            self.unavailable_since = None
            logger.warning(f"call-record database back after {down:.1f} s: buffered writes saved")

    def _give_up(self) -> None:
        if self._pending:
            self.lost += len(self._pending)
            logger.error(
                f"call-record writer closing with the database unavailable: "
                f"{len(self._pending)} writes not saved"
            )
            self._pending.clear()

    def _write_pending(self) -> None:
        """Commit the pending writes in batches; raises :class:`_Unavailable` (keeping what is
        left pending) when the database cannot be reached."""
        while self._pending:
            taken = min(MAX_BATCH, len(self._pending))
            batch = _latest_upserts([self._pending[i] for i in range(taken)])
            self.superseded += taken - len(batch)
            self._write(batch)
            for _ in range(taken):
                self._pending.popleft()

    def _write(self, batch: list[tuple[str, tuple[Any, ...]]]) -> None:
        try:
            with self.store.engine.begin() as conn:
                for op, args in batch:
                    self.store.apply(conn, op, *args)
            self.written += len(batch)
            return
        except Exception as e:
            if _is_unavailable(e):
                raise _Unavailable(str(e)) from e
            if len(batch) == 1:
                self.failed += 1
                logger.error(f"call-record write {batch[0][0]} failed: {e}")
                return
            logger.warning(f"call-record batch of {len(batch)} failed ({e}); retrying one by one")
        for item in batch:
            self._write([item])


def _row_key(op: str, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """The row an upsert writes whole (None for other writes)."""
    if op == "save_turn":
        return (op, args[0].call_id, args[0].seq)
    if op == "save_tool_call":
        return (op, args[0].call_id, args[0].tool_call_id)
    if op == "set_counters":
        return (op, args[0])
    return None


def _latest_upserts(batch: list[tuple[str, tuple[Any, ...]]]) -> list[tuple[str, tuple[Any, ...]]]:
    """``batch`` without the upserts a later one of the same row replaces (order kept)."""
    last: dict[tuple[Any, ...], int] = {}
    for i, (op, args) in enumerate(batch):
        key = _row_key(op, args)
        if key is not None:
            last[key] = i
    return [
        item
        for i, item in enumerate(batch)
        if (key := _row_key(*item)) is None or last[key] == i
    ]
