"""Invalid WebRTC offers get a clear 400 and hold no call slot (nor a model session)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from bots.profile import BotProfile
from bots.registry import BotRegistry
from bots.server import create_app
from stepcall.settings import Settings


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"sdp": "v=0", "type": "offer"}, "m=audio"),  # aiortc would answer this one
        ({"sdp": "hello", "type": "offer"}, "v=0"),
        ({"sdp": "v=0\r\n" + "a=x\r\n" * 10_000, "type": "offer"}, "bytes"),
        ({"sdp": "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n", "type": "offer"}, "could not answer"),
        ({"sdp": "v=0\r\nm=audio 9 RTP/AVP 0\r\na=ice-ufrag:x\r\na=ice-pwd:y\r\n",
          "type": "offer"}, "could not answer"),
        ({"sdp": 5, "type": "offer"}, "sdp"),
        ({"sdp": "v=0", "type": "offer", "request_data": [1]}, "request_data"),
    ],
)
def test_invalid_offer_is_refused_and_holds_nothing(body, fragment):
    app = create_app(Settings(webrtc_offers_per_minute=0), BotRegistry.single(BotProfile()))
    with TestClient(app) as client:
        r = client.post("/webrtc/offer", json=body)
        assert r.status_code == 400, r.text
        assert fragment in r.json()["error"]
        assert app.state.calls.active == 0 and not app.state.webrtc.tasks
