"""The call-record store against a real PostgreSQL server: a private cluster started for the
test (initdb + pg_ctl in a temp folder, as the ``postgres`` user when we are root).

Skipped, with the reason, when PostgreSQL is not installed (Debian: ``apt-get install -y
postgresql``) or the cluster cannot be started.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest

from bots.records.models import CallRecord, ToolCallRecord, TurnRecord, utcnow
from bots.records.observer import CallRecordObserver
from bots.records.store import CallFilter, CallStore
from tests.support.pg_cluster import running_cluster


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    """URL of a throw-away PostgreSQL cluster (trust auth on 127.0.0.1)."""
    with running_cluster() as cluster:
        yield cluster.url


def test_postgres_store_round_trip(pg_url):
    store = CallStore.open(pg_url)
    try:
        assert store.dialect == "postgresql"
        again = CallStore.open(pg_url)  # a second server: migrations already applied
        again.close()
        t0 = utcnow() - timedelta(minutes=5)
        store.start_call(CallRecord("PG1", "pizza", t0, from_number="+1555", to_number="+1666"))
        store.save_turn(
            TurnRecord("PG1", 1, "user", t0, ended_at=t0 + timedelta(seconds=2), audio_ms=1800.0)
        )
        store.save_turn(
            TurnRecord(
                "PG1",
                2,
                "bot",
                t0 + timedelta(seconds=3),
                text="Hi ü",
                latency_ms=512.5,
                interrupted=True,
            )
        )
        store.save_tool_call(
            ToolCallRecord(
                "PG1", "t1", "order", {"size": "L"}, t0, result={"ok": True}, ended_at=t0
            )
        )
        store.end_call("PG1", "transferred")
        call = store.get_call("PG1")
        assert call.outcome == "transferred" and call.started_at == t0
        assert [(t.role, t.text, t.interrupted) for t in call.turns] == [
            ("user", None, False),
            ("bot", "Hi ü", True),
        ]
        assert call.tool_calls[0].arguments == {"size": "L"}
        assert call.tool_calls[0].result == {"ok": True}
        assert [c.call_id for c in store.list_calls(CallFilter(number="666"))] == ["PG1"]
        assert [p.latency_ms for p in store.latency_points()] == [512.5]
    finally:
        store.close()


async def test_postgres_observer_writes_through_the_background_writer(pg_url):
    from pipecat.frames.frames import (
        BotStartedSpeakingFrame,
        BotStoppedSpeakingFrame,
        TTSTextFrame,
        UserStartedSpeakingFrame,
        UserStoppedSpeakingFrame,
    )
    from pipecat.processors.filters.identity_filter import IdentityFilter
    from pipecat.tests.utils import SleepFrame, run_test

    store = CallStore.open(pg_url)
    try:
        obs = CallRecordObserver(store, "PG-obs", bot="front_desk")
        frames = [
            UserStartedSpeakingFrame(),
            SleepFrame(sleep=0.05),
            UserStoppedSpeakingFrame(),
            TTSTextFrame("Hello there.", text_type="sentence"),
            BotStartedSpeakingFrame(),
            BotStoppedSpeakingFrame(),
        ]
        await run_test(IdentityFilter(), frames_to_send=frames, observers=[obs])
        assert store.writer.flush()
        call = store.get_call("PG-obs")
        assert call.outcome == "completed"
        assert [t.text for t in call.turns] == [None, "Hello there."]
        assert call.turns[1].latency_ms is not None
    finally:
        store.close()
