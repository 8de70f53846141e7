"""Fuzzing what the bot server does with Twilio media-stream text frames (hypothesis).

Three properties, deterministic (``derandomize``) and bounded:

1. ``check_media_message`` never raises, and every frame it lets through is handled by the
   call's serializer (Pipecat's ``TwilioFrameSerializer``, built by ``bots.call``) ``deserialize`` (the parser of the call's pipeline) without raising.
2. ``read_start`` (the handshake of ``/twilio/stream``) either returns a valid start or raises
   ``MediaStreamError``: nothing else escapes, whatever the first two frames are.
3. On a live server, a call fed arbitrary frames neither crashes the server nor disturbs another
   call running beside it: the bystander keeps hearing the bot and ends normally.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from types import SimpleNamespace

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect

from bots.call import CallInfo
from bots.profile import BotProfile
from bots.registry import BotRegistry
from bots.server import create_app
from bots.twilio.call import twilio_serializer
from bots.twilio.media_stream import (
    MediaStreamError,
    StreamLimits,
    TwilioStart,
    check_media_message,
    read_start,
)
from harness.callers.twilio_messages import StreamIdentity, TwilioMessageBuilder
from harness.canned_model_service import CannedModelService
from model_service.server import serving
from stepcall.settings import Settings

_scalar = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=12),
    st.sampled_from(["media", "start", "stop", "dtmf", "mark", "connected", "", "1"]),
)
_json = st.recursive(
    _scalar,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=10), inner, max_size=3)
    ),
    max_leaves=10,
)
_b64ish = st.one_of(
    st.binary(max_size=400).map(lambda b: base64.b64encode(b).decode()),
    st.text(alphabet="ABCDEFabcdef0123456789+/=-_ !\n", max_size=80),
    st.just(""),
)


@st.composite
def _twilio_like(draw: st.DrawFn) -> str:
    """Twilio-shaped messages with fields dropped, retyped or corrupted."""
    event = draw(st.sampled_from(["media", "dtmf", "mark", "stop", "start", "connected", "x"]))
    body: dict = {"event": event, "sequenceNumber": str(draw(st.integers(0, 99))),
                  "streamSid": "MZ" + "1" * 32}
    if event == "media":
        body["media"] = draw(st.one_of(
            st.fixed_dictionaries({"track": st.just("inbound"), "payload": _b64ish}),
            st.fixed_dictionaries({"payload": _json}),
            _json,
        ))
    elif event == "dtmf":
        body["dtmf"] = draw(st.one_of(st.fixed_dictionaries({"digit": _scalar}), _json))
    elif event == "mark":
        body["mark"] = draw(st.one_of(st.fixed_dictionaries({"name": _scalar}), _json))
    elif event == "start":
        body["start"] = draw(st.one_of(
            st.fixed_dictionaries({
                "callSid": st.one_of(st.just("CA" + "2" * 32), _scalar),
                "streamSid": st.one_of(st.just("MZ" + "2" * 32), _scalar),
                "customParameters": st.one_of(
                    st.dictionaries(st.text(max_size=70), st.one_of(st.text(max_size=20), _json),
                                    max_size=4),
                    _json,
                ),
            }),
            _json,
        ))
    if draw(st.integers(0, 9)) == 0:
        body[draw(st.text(max_size=8))] = draw(_json)
    return json.dumps(body)


_frames = st.one_of(
    _twilio_like(),
    _twilio_like(),
    st.text(max_size=300),
    _json.map(json.dumps),
    st.integers(1, 3000).map(lambda n: "[" * n),
    st.integers(60_000, 80_000).map(lambda n: '{"event":"media","media":{"payload":"' + "A" * n),
)

FUZZ = settings(max_examples=500, derandomize=True, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(_frames)
def test_frames_the_guard_accepts_never_break_the_pipecat_serializer(text: str) -> None:
    reason = check_media_message(text)
    assert reason is None or (isinstance(reason, str) and reason)
    if reason is not None:
        return

    async def deserialize() -> None:
        call = CallInfo(call_id="CA" + "1" * 32, stream_sid="MZ" + "1" * 32)
        serializer = twilio_serializer(call, BotProfile(name="front"), Settings())
        await serializer.setup(SimpleNamespace(audio_in_sample_rate=8000))
        await serializer.deserialize(text)

    asyncio.run(deserialize())


class _Frames:
    """The peer side of a socket: hands out queued ASGI messages, then a disconnect."""

    def __init__(self, frames: list[str | bytes]) -> None:
        self.frames = list(frames)

    async def receive(self) -> dict:
        if not self.frames:
            return {"type": "websocket.disconnect", "code": 1000}
        frame = self.frames.pop(0)
        key = "bytes" if isinstance(frame, bytes) else "text"
        return {"type": "websocket.receive", key: frame}


@FUZZ
@given(st.lists(st.one_of(_frames, st.binary(max_size=20)), max_size=3))
def test_start_handshake_only_refuses_with_media_stream_error(frames: list[str | bytes]) -> None:
    async def handshake() -> TwilioStart | None:
        try:
            return await read_start(_Frames(frames), StreamLimits(start_timeout_secs=1))
        except MediaStreamError as e:
            assert str(e)
            return None

    start = asyncio.run(handshake())
    if start is not None:
        assert start.call_sid and start.stream_sid
        assert all(isinstance(v, str) for v in start.custom_parameters.values())


def _tone() -> bytes:
    t = np.arange(4800) / 8000
    return (np.sin(2 * np.pi * 440 * t) * 8000).astype("<i2").tobytes()


async def _server_scenario(frames: list[str]) -> None:
    canned = CannedModelService(_tone(), text="hello")
    async with canned.serving() as model_url:
        profile = BotProfile(name="front", bot_speaks_first=True, smart_turn=False)
        app = create_app(Settings(model_url=model_url), BotRegistry.single(profile))
        async with serving(app) as url:
            stream = url.removesuffix("/v1/session") + "/twilio/stream"
            bystander = await connect(stream, compression=None)
            b = TwilioMessageBuilder(StreamIdentity())
            await bystander.send(json.dumps(b.connected()))
            await bystander.send(json.dumps(b.start({"bot": "front"})))

            async def speak(n: int) -> None:
                for i in range(n):
                    await bystander.send(json.dumps(b.media(i + 1, i * 20, b"\xff" * 160)))
                    await asyncio.sleep(0.02)

            async def heard_bot() -> bool:
                async with asyncio.timeout(10):
                    while True:
                        msg = json.loads(await bystander.recv())
                        if msg.get("event") == "media":
                            return True

            feeder = asyncio.create_task(speak(500))
            assert await heard_bot()

            attacker = await connect(stream, compression=None, max_size=None)
            a = TwilioMessageBuilder(StreamIdentity())
            await attacker.send(json.dumps(a.connected()))
            await attacker.send(json.dumps(a.start({"bot": "front"})))
            with contextlib.suppress(Exception):
                for frame in frames:
                    await attacker.send(frame)
                await asyncio.sleep(0.3)
                await attacker.close()

            # the bystander's call is untouched: still up, still answered
            assert app.state.calls.active >= 1
            await bystander.send(json.dumps(b.dtmf("1")))
            feeder.cancel()
            await bystander.send(json.dumps(b.stop()))
            await bystander.close()
            for _ in range(200):
                if app.state.calls.active == 0:
                    break
                await asyncio.sleep(0.05)
            assert app.state.calls.active == 0, "a call did not end"
            assert app.state.calls.total == 2


@settings(max_examples=8, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(_frames, min_size=10, max_size=40))
def test_fuzzed_call_does_not_disturb_the_server_or_another_call(frames: list[str]) -> None:
    asyncio.run(_server_scenario(frames))
