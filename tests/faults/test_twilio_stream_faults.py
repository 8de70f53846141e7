"""Twilio media-stream faults on a real bot server: network drop, idle stream, over-long call,
garbage frames mid-call.

In-process on loopback: ``bots.server.create_app`` served by uvicorn, the canned model service
(answers at once with a tone) standing in for the GPU, call records in a temp SQLite database,
and a raw Twilio-protocol client (``TwilioMessageBuilder``) that can misbehave.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import numpy as np
from websockets.asyncio.client import ClientConnection, connect

from bots.profile import BotProfile
from bots.records.service import CallRecords
from bots.records.store import CallStore
from bots.registry import BotRegistry
from bots.server import create_app
from harness.callers.twilio_messages import StreamIdentity, TwilioMessageBuilder
from harness.canned_model_service import CannedModelService
from model_service.server import serving
from stepcall.settings import Settings


def tone_pcm(secs: float = 1.0, rate: int = 8000, hz: float = 440.0) -> bytes:
    """PCM16 mono tone: what the canned model service says."""
    t = np.arange(int(secs * rate)) / rate
    return (np.sin(2 * np.pi * hz * t) * 8000).astype("<i2").tobytes()


@dataclass
class Served:
    app: object
    stream_url: str
    http_url: str
    records: CallRecords
    canned: CannedModelService


@contextlib.asynccontextmanager
async def bot_server(tmp_path, **settings_kw) -> AsyncIterator[Served]:
    """A bot server (bot speaks first) on loopback with the canned model service and records."""
    canned = CannedModelService(tone_pcm(0.6), text="hello")
    async with canned.serving() as model_url:
        settings = Settings(model_url=model_url, **settings_kw)
        records = CallRecords(CallStore.open(f"sqlite:///{tmp_path}/calls.db"))
        profile = BotProfile(name="front", bot_speaks_first=True, smart_turn=False)
        app = create_app(settings, BotRegistry.single(profile), records=records)
        async with serving(app) as url:
            base = url.removesuffix("/v1/session")
            yield Served(app, base + "/twilio/stream", base.replace("ws://", "http://"),
                         records, canned)


async def _open_call(url: str) -> tuple[ClientConnection, TwilioMessageBuilder]:
    ws = await connect(url, compression=None)
    builder = TwilioMessageBuilder(StreamIdentity())
    await ws.send(json.dumps(builder.connected()))
    await ws.send(json.dumps(builder.start({"bot": "front"})))
    return ws, builder


async def _media(ws: ClientConnection, builder: TwilioMessageBuilder, frames: int, i0: int = 0):
    for i in range(i0, i0 + frames):
        msg = builder.media(i + 1, i * 20, b"\xff" * 160)
        await ws.send(json.dumps(msg))
        await asyncio.sleep(0.02)


async def _bot_media(ws: ClientConnection, secs: float = 10.0) -> int:
    """Read until the bot sends audio; returns how many media messages arrived."""
    got = 0
    async with asyncio.timeout(secs):
        while got == 0:
            msg = json.loads(await ws.recv())
            if msg.get("event") == "media":
                got += 1
    return got


async def _record(served: Served, call_id: str, secs: float = 15.0):
    for _ in range(int(secs / 0.1)):
        record = await asyncio.to_thread(served.records.store.get_call, call_id)
        if record is not None and record.outcome:
            return record
        await asyncio.sleep(0.1)
    raise AssertionError(f"no closed record for {call_id}")


async def _until_no_calls(served: Served, secs: float = 15.0) -> None:
    for _ in range(int(secs / 0.05)):
        if not served.app.state.calls.active:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{served.app.state.calls.active} calls still active after {secs} s")


async def _healthy(served: Served) -> dict:
    async with httpx.AsyncClient(base_url=served.http_url) as http:
        r = await http.get("/healthz")
    assert r.status_code == 200
    return r.json()


async def test_network_drop_mid_call_ends_the_call_and_the_record_says_so(tmp_path):
    async with bot_server(tmp_path) as served:
        ws, builder = await _open_call(served.stream_url)
        feeder = asyncio.create_task(_media(ws, builder, 200))
        assert await _bot_media(ws) >= 1  # the call is up: the greeting is playing
        feeder.cancel()
        ws.transport.abort()  # the TCP connection dies: no stop message, no close handshake
        await _until_no_calls(served)
        record = await _record(served, builder.identity.call_sid)
        assert (await _healthy(served))["active_calls"] == 0
    assert record.outcome == "error"
    assert "without a stop message" in (record.error or ""), record.error


async def test_caller_hang_up_with_stop_is_a_normal_end(tmp_path):
    async with bot_server(tmp_path) as served:
        ws, builder = await _open_call(served.stream_url)
        feeder = asyncio.create_task(_media(ws, builder, 200))
        await _bot_media(ws)
        feeder.cancel()
        await ws.send(json.dumps(builder.stop()))
        await ws.close()
        await _until_no_calls(served)
        record = await _record(served, builder.identity.call_sid)
    assert record.outcome == "caller_hung_up" and not record.error


async def test_idle_media_stream_is_ended(tmp_path):
    async with bot_server(tmp_path, stream_idle_secs=1.0) as served:
        ws, builder = await _open_call(served.stream_url)
        await _media(ws, builder, 10)  # then silence on the wire: a dead stream
        assert served.app.state.calls.active == 1
        await _until_no_calls(served, secs=10)
        record = await _record(served, builder.identity.call_sid)
        with contextlib.suppress(Exception):
            await ws.close()
    assert record.outcome == "error" and "stream idle" in (record.error or ""), record.error


async def test_call_longer_than_the_limit_is_ended(tmp_path):
    async with bot_server(tmp_path, max_call_secs=2.0) as served:
        started = asyncio.get_running_loop().time()
        ws, builder = await _open_call(served.stream_url)
        feeder = asyncio.create_task(_media(ws, builder, 400))
        await _bot_media(ws)  # the call is up
        await _until_no_calls(served, secs=10)
        elapsed = asyncio.get_running_loop().time() - started
        feeder.cancel()
        record = await _record(served, builder.identity.call_sid)
        with contextlib.suppress(Exception):
            await ws.close()
    assert 1.5 < elapsed < 6, elapsed
    assert "2 s limit" in (record.error or ""), record.error


GARBAGE = [
    "not json",
    "[1, 2, 3]",
    "42",
    '{"event": 5}',
    '{"event": "media"}',
    '{"event": "media", "media": "x"}',
    '{"event": "media", "media": {"payload": 7}}',
    '{"event": "media", "media": {"payload": "!!!not base64!!!"}}',
    '{"event": "media", "media": {"payload": "' + "A" * 60000 + '"}}',
    '{"event": "dtmf", "dtmf": {"digit": ["1"]}}',
    '{"event": "start", "start": {"callSid": "CA2", "streamSid": "MZ2"}}',
    '{"event": "bogus"}',
    "{" * 5000,
    "x" * 70_000,
]


async def test_garbage_frames_mid_call_are_dropped_and_the_call_goes_on(tmp_path):
    async with bot_server(tmp_path) as served:
        ws, builder = await _open_call(served.stream_url)
        await _media(ws, builder, 5)
        for frame in GARBAGE:
            await ws.send(frame)
        await ws.send(b"\x00\x01binary")
        feeder = asyncio.create_task(_media(ws, builder, 200, 5))
        assert await _bot_media(ws) >= 1  # still talking after the garbage
        assert served.app.state.calls.active == 1
        feeder.cancel()
        await ws.send(json.dumps(builder.stop()))
        await ws.close()
        await _until_no_calls(served)
        record = await _record(served, builder.identity.call_sid)
    assert record.outcome == "caller_hung_up" and not record.error


async def _closed_before_start(tmp_path, caplog, first: list[dict], drop: bool) -> list[str]:
    """Open the stream, send ``first`` (Twilio messages), close (``drop``: drop the TCP
    connection with no close frame, as a caller's network does); the server's warning lines
    about media streams meanwhile. No traceback may reach uvicorn's log (its handlers do not
    propagate to the root logger, so caplog's handler goes on ``uvicorn`` itself)."""
    import logging

    from loguru import logger

    warnings: list[str] = []
    uvicorn_log = logging.getLogger("uvicorn")  # its handlers are set when the server starts
    async with bot_server(tmp_path) as served:
        uvicorn_log.addHandler(caplog.handler)
        sink = logger.add(lambda m: warnings.append(str(m)), level="WARNING",
                          filter=lambda r: "media stream" in r["message"])
        try:
            ws = await connect(served.stream_url, compression=None)
            for message in first:
                await ws.send(json.dumps(message))
            if drop:
                ws.transport.abort()
            else:
                await ws.close()
            await asyncio.sleep(0.5)  # the server reads the close and logs
        finally:
            logger.remove(sink)
            uvicorn_log.removeHandler(caplog.handler)
    text = caplog.text
    assert "Exception in ASGI application" not in text and "Traceback" not in text, text
    return warnings


async def test_stream_closed_before_start_logs_one_warning_and_no_traceback(tmp_path, caplog):
    builder = TwilioMessageBuilder(StreamIdentity())
    for first, drop in (([builder.connected()], True), ([], True), ([builder.connected()], False),
                        ([], False)):
        caplog.clear()
        warnings = await _closed_before_start(tmp_path, caplog, first, drop)
        assert len(warnings) == 1, warnings
        assert "media stream refused: socket closed before the start message" in warnings[0]
