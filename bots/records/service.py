"""CallRecords: the bot server's call records, metrics and dashboard in one object.

Wiring (``bots/server.py``)::

    records = CallRecords.from_settings(settings)      # None when STEPCALL_DATABASE_URL=none
    if records:
        records.mount(app)                              # /dashboard…, /metrics
    # lifespan: records.start_purge_task() after startup; await records.aclose() at shutdown

Per call (``twilio_stream`` around ``run_twilio_call``)::

    observer = records.observer(call, profile, call_control=control)
    try:
        await run_twilio_call(websocket, call, profile, settings,
                              call_control=control, observers=[observer])
    except Exception as e:
        observer.set_outcome("error", str(e))
        raise
    finally:
        await observer.finish()

Settings read (``stepcall/settings.py``): ``database_url`` (``STEPCALL_DATABASE_URL``, default
``sqlite:///var/calls.db`` from the environment; unset in code or ``none`` turns records off),
``dashboard_token`` (``STEPCALL_DASHBOARD_TOKEN``; no token = dashboard off),
``recordings_dir`` (``STEPCALL_RECORDINGS_DIR``, default ``var/recordings``).
Per bot: ``profile.record_audio`` / ``profile.recording_retention_days`` (see
:class:`~bots.records.models.RecordingPolicy`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from loguru import logger

from bots.metrics import BotMetrics, add_metrics_route
from bots.records.models import RecordingPolicy
from bots.records.store import CallStore, purge_expired_recordings

DEFAULT_RECORDINGS_DIR = "var/recordings"
#: How often expired recordings are purged.
PURGE_INTERVAL_SECS = 3600.0


class CallRecords:
    """One per bot-server process: the store, the metrics, the recordings folder."""

    def __init__(
        self,
        store: CallStore,
        *,
        settings: Any = None,
        metrics: BotMetrics | None = None,
        recordings_dir: str | Path = DEFAULT_RECORDINGS_DIR,
    ) -> None:
        self.store = store
        self.settings = settings
        self.metrics = metrics or BotMetrics()
        self.recordings_dir = Path(recordings_dir)
        self._purge_task: asyncio.Task | None = None

    @classmethod
    def from_settings(cls, settings: Any) -> CallRecords | None:
        """Open the store named by ``settings.database_url`` (None when unset or ``none``)."""
        url = getattr(settings, "database_url", None)
        if not url or url.strip().lower() in ("none", "off", "disabled"):
            logger.warning("call records are disabled (STEPCALL_DATABASE_URL=none)")
            return None
        recordings = getattr(settings, "recordings_dir", None) or DEFAULT_RECORDINGS_DIR
        return cls(CallStore.open(url), settings=settings, recordings_dir=recordings)

    def mount(self, app: FastAPI, *, dashboard_token: str | None = None) -> None:
        """Add ``/metrics`` and the dashboard routes to ``app``."""
        from bots.records.dashboard import add_dashboard_routes

        add_metrics_route(app, self.metrics)
        add_dashboard_routes(app, self.settings, self.store, token=dashboard_token)

    def observer(self, call: Any, profile: Any, *, call_control: Any = None, **kwargs: Any) -> Any:
        """A :class:`~bots.records.observer.CallRecordObserver` for one call.

        ``call`` is a ``bots.call.CallInfo`` (``call_id``, ``stream_sid``, numbers); ``profile``
        a ``BotProfile`` (name, source flow, recording policy).
        """
        from bots.records.observer import CallRecordObserver

        return CallRecordObserver(
            self.store,
            call.call_id,
            bot=getattr(profile, "name", "default"),
            flow=getattr(profile, "source", None),
            from_number=getattr(call, "from_number", None),
            to_number=getattr(call, "to_number", None),
            stream_id=getattr(call, "stream_sid", None),
            metrics=self.metrics,
            recording=RecordingPolicy.from_profile(profile),
            recordings_dir=self.recordings_dir,
            call_control=call_control,
            **kwargs,
        )

    async def purge_once(self) -> list[str]:
        """Delete expired recordings now (off the event loop)."""
        return await asyncio.to_thread(purge_expired_recordings, self.store)

    def start_purge_task(self, interval_secs: float = PURGE_INTERVAL_SECS) -> asyncio.Task:
        """Purge expired recordings now and every ``interval_secs`` (call inside the loop)."""

        async def loop() -> None:
            while True:
                try:
                    await self.purge_once()
                except Exception as e:  # keep purging later; never take the server down
                    logger.error(f"recording purge failed: {e}")
                await asyncio.sleep(interval_secs)

        self._purge_task = asyncio.get_running_loop().create_task(loop(), name="recording-purge")
        return self._purge_task

    async def aclose(self) -> None:
        """Stop the purge task and close the store (flushes pending writes)."""
        if self._purge_task is not None:
            self._purge_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._purge_task
            self._purge_task = None
        await asyncio.to_thread(self.store.close)


@contextlib.asynccontextmanager
async def recorded_call(observer: Any | None, log: Any = logger) -> AsyncIterator[None]:
    """Run one call under its record's observer (``None``: no records).

    A failure marks the record ``error`` with the exception and propagates; the record is closed
    in every case, and a failure to save it is only logged (it never ends a call badly).
    """
    try:
        yield
    except Exception as e:
        if observer is not None:
            observer.set_outcome("error", str(e))
        raise
    finally:
        if observer is not None:
            try:
                await observer.finish()
            except Exception:
                log.exception("could not save the call record")
