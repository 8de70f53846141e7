"""Per-call media-stream tokens: issued in the TwiML, required on the stream's start message."""

from __future__ import annotations

import json
import re

from fastapi.testclient import TestClient

from bots.profile import BotProfile
from bots.registry import BotRegistry
from bots.server import create_app
from bots.twilio.config import TwilioConfig
from bots.twilio.stream_auth import StreamAuth
from stepcall.settings import Settings

SID = "CA" + "f" * 32


def test_token_binds_call_bot_and_time():
    auth = StreamAuth("secret", max_age_secs=600)
    token = auth.issue(SID, "sales", now=1_000_000)
    assert auth.check(SID, "sales", token, now=1_000_010).verified
    assert not auth.check("CA" + "0" * 32, "sales", token, now=1_000_010).ok
    assert not auth.check(SID, "front", token, now=1_000_010).ok
    assert not StreamAuth("other").check(SID, "sales", token, now=1_000_010).ok
    expired = auth.check(SID, "sales", token, now=1_000_000 + 601)
    assert not expired.ok and "expired" in expired.reason
    for bad in (None, "", "garbage", "12.", "x.y"):
        assert not auth.check(SID, "sales", bad, now=1_000_010).ok


def test_dev_mode_accepts_unverified():
    auth = StreamAuth(None)
    assert auth.issue(SID, "sales") is None
    result = auth.check(SID, "sales", None)
    assert result.ok and not result.verified


def _start(params: dict) -> str:
    return json.dumps({
        "event": "start", "sequenceNumber": "1", "streamSid": "MZ" + "1" * 32,
        "start": {"streamSid": "MZ" + "1" * 32, "accountSid": "AC" + "a" * 32, "callSid": SID,
                  "tracks": ["inbound"], "customParameters": params,
                  "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}},
    })


def _app(secret: str | None):
    settings = Settings(public_url="https://bots.example.com")
    config = TwilioConfig(base_url=settings.base_url, stream_secret=secret)
    return create_app(settings, BotRegistry.single(BotProfile(name="front")), twilio=config)


def _closed_code(app, params: dict) -> int:
    with TestClient(app).websocket_connect("/twilio/stream") as ws:
        ws.send_text(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        ws.send_text(_start(params))
        closed = ws.receive()
    assert closed["type"] == "websocket.close"
    return closed["code"]


def test_stream_without_or_with_a_wrong_token_is_refused_before_any_pipeline():
    app = _app("stream-secret")
    other_call = StreamAuth("stream-secret").issue("CA" + "9" * 32, "front")
    for params in ({"bot": "front"}, {"bot": "front", "auth": "1.forged"},
                   {"bot": "front", "auth": other_call}):
        assert _closed_code(app, params) == 1008
    assert app.state.calls.total == 0 and app.state.calls.active == 0


def test_twiml_token_is_the_one_the_stream_needs():
    app = _app("stream-secret")
    with TestClient(app) as client:
        twiml = client.post("/twilio/voice", data={"CallSid": SID, "To": "+15550001111"}).text
    token = re.search(r'<Parameter name="auth" value="([^"]+)" />', twiml).group(1)
    assert app.state.stream_auth.check(SID, "front", token).verified


def test_stream_secret_falls_back_to_the_twilio_auth_token():
    config = TwilioConfig(base_url="https://x", auth_token="tw-token")
    assert config.stream_key == "tw-token"
    assert TwilioConfig(base_url="https://x", auth_token="tw", stream_secret="s").stream_key == "s"
