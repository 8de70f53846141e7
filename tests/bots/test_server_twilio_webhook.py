"""The Twilio voice webhook: TwiML <Connect><Stream>, signature validation, busy answer."""

from fastapi.testclient import TestClient
from twilio.request_validator import RequestValidator

from bots.profile import BotProfile
from bots.registry import BotRegistry
from bots.server import create_app
from stepcall.settings import Settings

FORM = {"CallSid": "CA" + "1" * 32, "From": "+15550001111", "To": "+15550002222"}


def _app(**kw):
    settings = Settings(public_url="https://bots.example.com", **kw)
    registry = BotRegistry(
        {"front": BotProfile(name="front"), "sales": BotProfile(name="sales")},
        {"+15550002222": "sales"},
        "front",
    )
    return create_app(settings, registry), settings


def test_twiml_routes_by_called_number():
    app, _ = _app()
    r = TestClient(app).post("/twilio/voice", data=FORM)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/xml")
    assert '<Connect><Stream url="wss://bots.example.com/twilio/stream">' in r.text
    assert '<Parameter name="bot" value="sales" />' in r.text
    other = TestClient(app).post("/twilio/voice", data={**FORM, "To": "+15559999999"})
    assert '<Parameter name="bot" value="front" />' in other.text


def test_signature_required_when_token_configured():
    app, settings = _app(twilio_auth_token="tw-token")
    client = TestClient(app)
    assert client.post("/twilio/voice", data=FORM).status_code == 403
    bad = client.post("/twilio/voice", data=FORM, headers={"X-Twilio-Signature": "forged"})
    assert bad.status_code == 403
    url = settings.base_url + "/twilio/voice"
    sig = RequestValidator("tw-token").compute_signature(url, FORM)
    ok = client.post("/twilio/voice", data=FORM, headers={"X-Twilio-Signature": sig})
    assert ok.status_code == 200 and "<Stream" in ok.text


def test_busy_when_call_limit_reached():
    app, _ = _app(max_calls=0)
    r = TestClient(app).post("/twilio/voice", data=FORM)
    assert "<Say>" in r.text and "<Hangup" in r.text and "<Stream" not in r.text


def test_stream_refuses_socket_without_start_message():
    app, _ = _app()
    with TestClient(app).websocket_connect("/twilio/stream") as ws:
        ws.send_text('{"event": "connected", "protocol": "Call", "version": "1.0.0"}')
        ws.send_text("not json")
        closed = ws.receive()
    assert closed["type"] == "websocket.close" and closed["code"] == 1008
    assert app.state.calls.active == 0


def test_healthz_lists_bots():
    app, _ = _app()
    body = TestClient(app).get("/healthz").json()
    assert body["status"] == "ok" and body["bots"] == ["front", "sales"]
