"""Outbound calls: place_outbound_call and POST /calls/outbound, asserted at the REST edge."""

from __future__ import annotations

from urllib.parse import parse_qs, urlparse

import pytest
from fastapi.testclient import TestClient

from bots.profile import BotProfile
from bots.registry import BotRegistry
from bots.server import create_app
from bots.twilio.outbound import OutboundCallRequest, place_outbound_call
from bots.twilio.rest import open_rest_client
from stepcall.settings import Settings

API_TOKEN = "calls-api-token"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


def _assert_create_request(req, config, *, to: str, from_: str, bot: str) -> None:
    assert req.method == "POST"
    assert req.path == f"/2010-04-01/Accounts/{config.account_sid}/Calls.json"
    assert req.auth == (config.account_sid, config.auth_token)
    assert req.field("To") == to and req.field("From") == from_
    url = urlparse(req.field("Url"))
    assert f"{url.scheme}://{url.netloc}{url.path}" == "https://bots.example.com/twilio/voice"
    assert parse_qs(url.query) == {"bot": [bot]}
    assert req.field("Method") == "POST"
    assert req.field("StatusCallback") == "https://bots.example.com/twilio/status"
    assert req.field("StatusCallbackMethod") == "POST"
    assert req.form["StatusCallbackEvent"] == ["initiated", "ringing", "answered", "completed"]
    assert req.field("Timeout") == "30"


async def test_place_outbound_call_sends_the_exact_create_request(fake_twilio):
    config = fake_twilio.config()
    async with open_rest_client(config) as client:
        call = await place_outbound_call(
            client, config, OutboundCallRequest(to="+15551230000", bot="sales", from_number="+15559990000")
        )
    assert call.call_sid.startswith("CA") and call.status == "queued" and call.bot == "sales"
    [req] = fake_twilio.requests
    _assert_create_request(req, config, to="+15551230000", from_="+15559990000", bot="sales")


@pytest.mark.parametrize("field, value", [("to", "5551230000"), ("from_number", "+1 555 999")])
async def test_bad_numbers_are_refused_before_twilio(fake_twilio, field, value):
    values = {"to": "+15551230000", "bot": "sales", "from_number": "+15559990000", field: value}
    config = fake_twilio.config()
    async with open_rest_client(config) as client:
        with pytest.raises(ValueError, match="E.164"):
            await place_outbound_call(client, config, OutboundCallRequest(**values))
    assert fake_twilio.requests == []


def _client(fake, **config_kw) -> TestClient:
    settings = Settings(public_url="https://bots.example.com")
    registry = BotRegistry(
        {"front": BotProfile(name="front"), "sales": BotProfile(name="sales")}, {}, "front"
    )
    config = fake.config(**{"api_token": API_TOKEN, "from_number": "+15559990000", **config_kw})
    return TestClient(create_app(settings, registry, twilio=config))


def test_endpoint_places_the_call(fake_twilio):
    with _client(fake_twilio) as client:
        r = client.post("/calls/outbound", json={"to": "+15551230000", "bot": "sales"}, headers=AUTH)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["call_sid"].startswith("CA") and body["bot"] == "sales"
    assert body["from"] == "+15559990000" and body["status"] == "queued"
    [req] = fake_twilio.requests
    _assert_create_request(req, fake_twilio.config(), to="+15551230000", from_="+15559990000", bot="sales")


def test_endpoint_needs_the_bearer_token(fake_twilio):
    with _client(fake_twilio) as client:
        assert client.post("/calls/outbound", json={"to": "+15551230000"}).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert client.post("/calls/outbound", json={"to": "+15551230000"}, headers=wrong).status_code == 401
    assert fake_twilio.requests == []


def test_endpoint_disabled_without_api_token(fake_twilio):
    with _client(fake_twilio, api_token=None) as client:
        r = client.post("/calls/outbound", json={"to": "+15551230000"}, headers=AUTH)
    assert r.status_code == 503 and "STEPCALL_API_TOKEN" in r.json()["error"]


def test_endpoint_errors(fake_twilio):
    with _client(fake_twilio) as client:
        bad = client.post("/calls/outbound", json={"to": "12"}, headers=AUTH)
        assert bad.status_code == 400 and "E.164" in bad.json()["error"]
        unknown = client.post("/calls/outbound", json={"to": "+15551230000", "bot": "x"}, headers=AUTH)
        assert unknown.status_code == 404 and "unknown bot 'x'" in unknown.json()["error"]
        assert fake_twilio.requests == []
        fake_twilio.fail_next = (400, 21215, "Geo Permission configuration is not permitting call")
        refused = client.post("/calls/outbound", json={"to": "+15551230000"}, headers=AUTH)
    assert refused.status_code == 502 and refused.json()["twilio_code"] == 21215


def test_endpoint_busy_at_call_limit(fake_twilio):
    settings = Settings(public_url="https://bots.example.com", max_calls=0)
    app = create_app(settings, BotRegistry.single(BotProfile()), twilio=fake_twilio.config(api_token=API_TOKEN))
    with TestClient(app) as client:
        r = client.post("/calls/outbound", json={"to": "+15551230000", "from": "+15559990000"}, headers=AUTH)
    assert r.status_code == 503 and fake_twilio.requests == []
