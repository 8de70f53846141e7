"""RecordWriter: call-record writes off the event loop, committed as they happen.

The call path only enqueues (``submit`` never blocks and never raises on a database error).
One daemon thread drains the queue: whatever is waiting is written in one transaction and
committed, typically within milliseconds of the event. A server killed mid-call therefore keeps
everything up to its last few milliseconds (SQLite in WAL mode, or PostgreSQL). A batch that
fails is retried one write at a time so a single bad write loses only itself.
"""

from __future__ import annotations

import copy
import queue
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from loguru import logger

from bots.records.store import WRITE_OPS

if TYPE_CHECKING:
    from bots.records.store import CallStore

#: Most writes committed together.
MAX_BATCH = 256


@dataclass
class _Flush:
    done: threading.Event = field(default_factory=threading.Event)


_STOP = object()


class RecordWriter:
    """A background thread that applies queued call-record writes to a :class:`CallStore`."""

    def __init__(self, store: CallStore) -> None:
        """Start the thread."""
        self.store = store
        self.written = 0
        self.failed = 0
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="call-record-writer", daemon=True)
        self._thread.start()

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
        """Wait until everything submitted so far is committed (False on timeout)."""
        if not self._thread.is_alive():
            return self._queue.empty()
        marker = _Flush()
        self._queue.put(marker)
        return marker.done.wait(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop the thread."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            batch: list[tuple[str, tuple[Any, ...]]] = []
            markers: list[_Flush] = []
            stop = False
            while True:
                if item is _STOP:
                    stop = True
                elif isinstance(item, _Flush):
                    markers.append(item)
                else:
                    batch.append(item)
                if stop or len(batch) >= MAX_BATCH:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if batch:
                self._write(batch)
            for marker in markers:
                marker.done.set()
            if stop:
                return

    def _write(self, batch: list[tuple[str, tuple[Any, ...]]]) -> None:
        try:
            with self.store.engine.begin() as conn:
                for op, args in batch:
                    self.store.apply(conn, op, *args)
            self.written += len(batch)
            return
        except Exception as e:
            if len(batch) == 1:
                self.failed += 1
                logger.error(f"call-record write {batch[0][0]} failed: {e}")
                return
            logger.warning(f"call-record batch of {len(batch)} failed ({e}); retrying one by one")
        for item in batch:
            self._write([item])
