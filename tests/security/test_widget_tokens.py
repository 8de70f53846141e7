"""Widget call tokens: with ``STEPCALL_WIDGET_SECRET`` the offer endpoint refuses offers without a
valid, unexpired token for the bot (401); tokens are minted behind the API bearer token or by
``stepcall widget-token``. Without a secret the endpoint stays open (dev) and says so in the log.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from fastapi.testclient import TestClient
from loguru import logger

from bots.profile import BotProfile
from bots.registry import BotRegistry
from bots.server import create_app
from bots.webrtc.tokens import WidgetTokens
from stepcall.settings import Settings

#: The smallest offer that passes our SDP check (aiortc then refuses it: no ICE).
AUDIO_SDP = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"

SECRET = "widget-secret"
API = "api-token"


def _app(**kw):
    registry = BotRegistry(
        {"front": BotProfile(name="front"), "sales": BotProfile(name="sales")}, {}, "front"
    )
    settings = Settings(widget_secret=SECRET, api_token=API, max_calls=0, **kw)
    return create_app(settings, registry)


def _offer(client: TestClient, bot: str, token: str | None):
    data = {"bot": bot} if token is None else {"bot": bot, "token": token}
    return client.post("/webrtc/offer", json={"sdp": AUDIO_SDP, "type": "offer", "request_data": data})


def test_offers_need_a_valid_token_for_the_bot():
    client = TestClient(_app(webrtc_offers_per_minute=0))
    tokens = WidgetTokens(SECRET)
    front = tokens.issue("front")
    cases = {
        "no token": None,
        "garbage": "garbage",
        "forged": f"{int(time.time()) + 60}.abc.AAAA",
        "other bot": tokens.issue("sales"),
        "other secret": WidgetTokens("other").issue("front"),
        "expired": tokens.issue("front", ttl_secs=1, now=time.time() - 10),
    }
    for name, token in cases.items():
        r = _offer(client, "front", token)
        assert r.status_code == 401, (name, r.text)
        assert "token" in r.json()["error"]
    # a valid token passes the gate (and then meets the call limit: max_calls=0)
    r = _offer(client, "front", front)
    assert r.status_code == 503 and "busy" in r.json()["error"]
    assert client.app.state.calls.active == 0


def test_token_endpoint_needs_the_api_bearer_and_mints_working_tokens():
    client = TestClient(_app(webrtc_offers_per_minute=0))
    assert client.post("/webrtc/token", json={"bot": "front"}).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert client.post("/webrtc/token", json={"bot": "front"}, headers=wrong).status_code == 401
    ok = {"Authorization": f"Bearer {API}"}
    r = client.post("/webrtc/token", json={"bot": "sales", "ttl_secs": 60}, headers=ok)
    assert r.status_code == 200
    body = r.json()
    assert body["bot"] == "sales" and 0 < body["expires_at"] - time.time() <= 61
    assert _offer(client, "sales", body["token"]).status_code == 503  # past the token gate
    assert _offer(client, "front", body["token"]).status_code == 401  # bound to its bot
    bad = client.post("/webrtc/token", json={"bot": "front", "ttl_secs": 10**9}, headers=ok)
    assert bad.status_code == 400


def test_cli_mints_a_token_and_refuses_without_a_secret(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "STEPCALL_WIDGET_SECRET": SECRET}
    run = subprocess.run([sys.executable, "-m", "bots.cli", "widget-token", "front", "--ttl", "30"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert run.returncode == 0, run.stderr
    assert WidgetTokens(SECRET).check("front", run.stdout.strip()).ok
    off = subprocess.run([sys.executable, "-m", "bots.cli", "widget-token", "front"],
                         capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"}, timeout=60)
    assert off.returncode == 2 and "STEPCALL_WIDGET_SECRET" in off.stderr


def test_without_a_secret_offers_are_open_and_a_warning_is_logged():
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), level="WARNING")
    try:
        app = create_app(Settings(max_calls=0), BotRegistry.single(BotProfile(name="front")))
    finally:
        logger.remove(sink)
    assert any("STEPCALL_WIDGET_SECRET not set" in line for line in lines)
    r = _offer(TestClient(app), "front", None)
    assert r.status_code == 503  # no token needed; only the call limit stops it
    assert TestClient(app).post("/webrtc/token", json={}).status_code == 404


@pytest.mark.parametrize("ttl", [0, -5, 10**9])
def test_bad_lifetimes_are_refused(ttl):
    with pytest.raises(ValueError, match="STEPCALL_WIDGET_TOKEN_TTL_SECS"):
        WidgetTokens(SECRET, ttl_secs=ttl)
