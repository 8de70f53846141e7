"""The calls API and the dashboard refuse callers without their tokens (and are off, not open,
when no token is configured)."""

from __future__ import annotations

from fastapi.testclient import TestClient

from bots.profile import BotProfile
from bots.registry import BotRegistry
from bots.server import create_app
from stepcall.settings import Settings

REGISTRY = BotRegistry.single(BotProfile(name="front"))


def test_calls_api_needs_the_bearer_token():
    off = TestClient(create_app(Settings(), REGISTRY))
    assert off.post("/calls/outbound", json={"to": "+15550001111"}).status_code == 503
    client = TestClient(create_app(Settings(api_token="api-secret"), REGISTRY))
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic api-secret"}):
        r = client.post("/calls/outbound", json={"to": "+15550001111"}, headers=headers)
        assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"
        assert client.get("/calls/CA1", headers=headers).status_code == 401
    ok = {"Authorization": "Bearer api-secret"}
    assert client.get("/calls/CA1", headers=ok).status_code == 404  # past auth: no such call


def test_dashboard_needs_its_token_and_is_off_without_one(tmp_path):
    settings = Settings(database_url=f"sqlite:///{tmp_path}/calls.db", dashboard_token="dash-1")
    with TestClient(create_app(settings, REGISTRY)) as client:
        r = client.get("/dashboard", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/dashboard/login")
        assert client.get("/dashboard?token=nope", follow_redirects=False).status_code == 303
        assert client.get("/dashboard/api/calls/CA1").status_code == 401
        bearer = {"Authorization": "Bearer dash-1"}
        assert client.get("/dashboard", headers=bearer).status_code == 200
    no_token = Settings(database_url=f"sqlite:///{tmp_path}/calls2.db")
    with TestClient(create_app(no_token, REGISTRY)) as client:
        assert client.get("/dashboard").status_code == 503
