"""Limits refuse cleanly and leave the server serving: the concurrent-call limit (TwiML
``<Say>`` + ``<Hangup>`` for phones, a busy message for the widget), the per-IP offer rate limit,
HTTP body and WebSocket frame size caps (bot server and model service), and the model
service's idle-session timeout."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from fastapi.testclient import TestClient
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from bots.profile import BotProfile
from bots.registry import BotRegistry
from bots.server import create_app
from model_service.server import create_app as create_model_app
from model_service.server import serving
from stepcall import protocol as p
from stepcall.settings import Settings

#: The smallest offer that passes our SDP check (aiortc then refuses it: no ICE).
AUDIO_SDP = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"

REGISTRY = BotRegistry.single(BotProfile(name="front"))
START = json.dumps({"type": "session.start", "protocol": 1, "input_sample_rate": 16000,
                    "output_sample_rate": 16000})


def test_full_server_answers_phones_busy_and_the_widget_with_a_message():
    client = TestClient(create_app(Settings(max_calls=0), REGISTRY))
    twiml = client.post("/twilio/voice", data={"CallSid": "CA" + "1" * 32}).text
    assert "<Say>" in twiml and "busy" in twiml and "<Hangup" in twiml and "<Stream" not in twiml
    r = client.post("/webrtc/offer", json={"sdp": AUDIO_SDP, "type": "offer"})
    assert r.status_code == 503 and r.json()["error"] == "all lines are busy; try again later"


def test_media_stream_beyond_the_limit_is_closed_try_again_later():
    client = TestClient(create_app(Settings(max_calls=0), REGISTRY))
    with client.websocket_connect("/twilio/stream") as ws:
        ws.send_text(json.dumps({"event": "start", "start": {
            "callSid": "CA" + "1" * 32, "streamSid": "MZ" + "1" * 32, "customParameters": {}}}))
        closed = ws.receive()
    assert closed["type"] == "websocket.close" and closed["code"] == 1013


def test_offer_rate_limit_per_ip():
    client = TestClient(create_app(Settings(max_calls=0, webrtc_offers_per_minute=2), REGISTRY))
    codes = [client.post("/webrtc/offer", json={"sdp": AUDIO_SDP, "type": "offer"}).status_code
             for _ in range(4)]
    assert codes == [503, 503, 429, 429]


def test_http_body_over_the_cap_is_refused_413():
    client = TestClient(create_app(Settings(max_request_bytes=10_000), REGISTRY))
    big = {"sdp": AUDIO_SDP + "x" * 20_000, "type": "offer"}
    r = client.post("/webrtc/offer", json=big)
    assert r.status_code == 413 and "10000" in r.json()["error"]

    def chunks():  # no Content-Length: counted as it streams in
        for _ in range(30):
            yield b"CallSid=" + b"A" * 1000

    r = client.post("/twilio/voice", content=chunks(),
                    headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 413
    assert client.get("/healthz").status_code == 200


async def test_bot_server_refuses_a_huge_websocket_frame_and_keeps_serving():
    app = create_app(Settings(), REGISTRY)
    async with serving(app, ws_max_size=64 * 1024) as url:
        stream = url.removesuffix("/v1/session") + "/twilio/stream"
        async with connect(stream, max_size=None) as ws:
            await ws.send("x" * (200 * 1024))
            with pytest.raises(ConnectionClosed):
                await ws.recv()
        assert ws.close_code == 1009  # message too big
        async with httpx.AsyncClient(base_url=url.replace("ws://", "http://").removesuffix(
                "/v1/session")) as http:
            assert (await http.get("/healthz")).json()["status"] == "ok"
        assert app.state.calls.active == 0


async def test_model_service_refuses_a_huge_frame_and_keeps_serving(demo_backend):
    app = create_model_app(demo_backend, token=None, max_sessions=2)
    async with serving(app) as url:
        async with connect(url, max_size=None) as other:
            await other.send(START)
            assert isinstance(p.parse_server_event(await other.recv()), p.SessionStarted)
            async with connect(url, max_size=None) as ws:
                await ws.send(START)
                await ws.recv()
                await ws.send(b"\x00" * (5 * 1024 * 1024))
                with pytest.raises(ConnectionClosed):
                    while True:
                        await ws.recv()
            assert ws.close_code == 1009
            # the other session is untouched
            await other.send(json.dumps({"type": "input_text.append", "text": "hi"}))
            await other.send(json.dumps({"type": "session.end"}))
            ended = p.parse_server_event(await other.recv())
            assert isinstance(ended, p.SessionEnded)


async def test_model_service_closes_an_idle_session(demo_backend):
    app = create_model_app(demo_backend, token=None, max_sessions=2, idle_timeout_s=0.5)
    async with serving(app) as url:
        async with connect(url) as ws:
            await ws.send(START)
            assert isinstance(p.parse_server_event(await ws.recv()), p.SessionStarted)
            async with asyncio.timeout(5):
                error = p.parse_server_event(await ws.recv())
                with pytest.raises(ConnectionClosed):
                    await ws.recv()
        assert isinstance(error, p.ErrorEvent) and error.code == p.IDLE_TIMEOUT and error.fatal
        assert app.state.service.active_sessions == 0


async def test_media_stream_without_a_start_message_times_out():
    from bots.twilio.media_stream import MediaStreamError, StreamLimits, read_start

    class Silent:  # a peer that connects and never says anything
        async def receive(self) -> dict:
            await asyncio.Event().wait()
            return {}

    with pytest.raises(MediaStreamError, match="no start message within 0.2 s"):
        await read_start(Silent(), StreamLimits(start_timeout_secs=0.2))


def test_unreachable_database_stops_the_server_at_start_up():
    from sqlalchemy.exc import OperationalError

    unreachable = "postgresql://postgres@127.0.0.1:9/stepcall"  # port 9: nothing listens
    with pytest.raises(OperationalError):
        create_app(Settings(database_url=unreachable), REGISTRY)
