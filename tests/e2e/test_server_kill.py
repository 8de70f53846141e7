"""``kill -9`` of the bot server mid-call leaves a readable partial call record.

Real processes: the session's `stepcall model` (tiny checkpoint) and a second `stepcall serve`
with call records in SQLite; the caller simulator speaks Twilio's Media Streams protocol. Once
the first exchange is in the database, the server gets SIGKILL while the caller is still talking;
the record must hold what was said up to then.
"""

from __future__ import annotations

import asyncio
import os
import signal

import numpy as np
import pytest

from bots.records.store import CallStore
from harness.callers import CallerTurn, CallOptions, run_call
from stepcall.audio.speech import SpeechUnavailableError, synthesize

from .conftest import _start, _stop, _wait_http, free_port

pytestmark = pytest.mark.slow


def _speech(text: str) -> np.ndarray:
    try:
        return synthesize(text, rate=8000)
    except SpeechUnavailableError as e:
        pytest.skip(f"no speech engine: {e}")


async def test_kill_9_mid_call_leaves_a_partial_record(stack, tmp_path):
    db = tmp_path / "calls.db"
    port = free_port()
    env = {
        **os.environ,
        "STEPCALL_PORT": str(port),
        "STEPCALL_MODEL_URL": f"ws://127.0.0.1:{stack.model_port}/v1/session",
        "STEPCALL_FLOWS_DIR": str(tmp_path / "no-flows"),
        "STEPCALL_DATABASE_URL": f"sqlite:///{db}",
        "PYTHONUNBUFFERED": "1",
    }
    for name in ("TWILIO_AUTH_TOKEN", "STEPCALL_STREAM_SECRET"):
        env.pop(name, None)
    web = _start(["serve"], env, tmp_path / "web.log")
    try:
        _wait_http(f"http://127.0.0.1:{port}/healthz", web, timeout=120)
        question = _speech("Hello, what time do you open tomorrow morning?")
        long_talk = np.concatenate([_speech("And another thing, about the parking.")] * 6)
        call = asyncio.create_task(
            run_call(
                f"ws://127.0.0.1:{port}/twilio/stream",
                [CallerTurn(audio=question), CallerTurn(audio=long_talk, expect_reply=False)],
                CallOptions(greeting_wait_secs=0.5, wait_secs=25.0),
            )
        )
        store = CallStore.open(f"sqlite:///{db}")
        record = None
        try:
            for _ in range(300):  # until the first exchange is stored (the bot's turn ended)
                calls = await asyncio.to_thread(store.list_calls)
                if calls:
                    record = await asyncio.to_thread(store.get_call, calls[0].call_id)
                    if any(t.role == "bot" and t.ended_at for t in record.turns):
                        break
                await asyncio.sleep(0.1)
            assert record is not None, web.tail()
            assert not call.done(), "the call ended before the kill"
            os.kill(web.popen.pid, signal.SIGKILL)
            web.popen.wait(timeout=10)
            result = await asyncio.wait_for(call, 30)
            assert result.hung_up_by != "caller" or result.errors  # the bot side vanished
            after = await asyncio.to_thread(store.get_call, record.call_id)
        finally:
            store.close()
    finally:
        _stop(web)
    assert after is not None and after.outcome is None  # never closed: the server died
    roles = [t.role for t in after.turns]
    assert roles[:2] == ["user", "bot"], roles
    assert after.turns[1].text and after.turns[1].latency_ms and after.turns[1].ended_at
    assert after.started_at is not None and after.ended_at is None
