"""``/twilio/stream`` starts a pipeline only for a stream whose token matches its call and bot:
no token, a forged one, another call's, another bot's, or an expired one is refused (1008)
before any pipeline is built."""

from __future__ import annotations

import json
import time

from fastapi.testclient import TestClient

from bots.profile import BotProfile
from bots.registry import BotRegistry
from bots.server import create_app
from bots.twilio.stream_auth import DEFAULT_MAX_AGE_SECS, StreamAuth
from stepcall.settings import Settings

SID = "CA" + "4" * 32
SECRET = "stream-secret"


def _start(params: dict) -> str:
    return json.dumps({
        "event": "start", "streamSid": "MZ" + "4" * 32,
        "start": {"streamSid": "MZ" + "4" * 32, "callSid": SID, "customParameters": params},
    })


def _close_code(app, params: dict) -> int:
    with TestClient(app).websocket_connect("/twilio/stream") as ws:
        ws.send_text(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        ws.send_text(_start(params))
        closed = ws.receive()
    assert closed["type"] == "websocket.close"
    return closed["code"]


def test_every_wrong_token_is_refused_before_a_pipeline():
    registry = BotRegistry(
        {"front": BotProfile(name="front"), "sales": BotProfile(name="sales")}, {}, "front"
    )
    app = create_app(Settings(public_url="https://x", stream_secret=SECRET), registry)
    auth = StreamAuth(SECRET)
    expired = auth.issue(SID, "front", now=time.time() - DEFAULT_MAX_AGE_SECS - 5)
    cases = {
        "none": {"bot": "front"},
        "forged": {"bot": "front", "auth": "1700000000.AAAA"},
        "malformed": {"bot": "front", "auth": "garbage"},
        "other call": {"bot": "front", "auth": auth.issue("CA" + "5" * 32, "front")},
        "other bot": {"bot": "sales", "auth": auth.issue(SID, "front")},
        "other secret": {"bot": "front", "auth": StreamAuth("nope").issue(SID, "front")},
        "expired": {"bot": "front", "auth": expired},
    }
    for name, params in cases.items():
        assert _close_code(app, params) == 1008, name
    assert app.state.calls.total == 0 and app.state.calls.active == 0
