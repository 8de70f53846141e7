"""Signed Twilio webhooks: status callbacks (stored per call), outbound answer, warm-transfer whisper."""

from __future__ import annotations

from fastapi.testclient import TestClient
from twilio.request_validator import RequestValidator

from bots.profile import BotProfile
from bots.registry import BotRegistry
from bots.server import create_app
from bots.twilio.config import TwilioConfig
from bots.twilio.status import CallStatusEvent, InMemoryCallStatusStore
from stepcall.settings import Settings

BASE = "https://bots.example.com"
TOKEN = "tw-token"
API_TOKEN = "calls-api-token"
SID = "CA" + "d" * 32


def _app():
    settings = Settings(public_url=BASE)
    registry = BotRegistry({"front": BotProfile(name="front"), "sales": BotProfile(name="sales")}, {}, "front")
    config = TwilioConfig(base_url=BASE, account_sid="AC" + "a" * 32, auth_token=TOKEN, api_token=API_TOKEN)
    return create_app(settings, registry, twilio=config)


def _signed(path: str, form: dict) -> dict:
    return {"X-Twilio-Signature": RequestValidator(TOKEN).compute_signature(BASE + path, form)}


def _status(status: str, seq: int, **extra) -> dict:
    return {"CallSid": SID, "CallStatus": status, "SequenceNumber": str(seq),
            "Direction": "outbound-api", "From": "+15559990000", "To": "+15551230000", **extra}


def test_status_callbacks_are_validated_and_stored_in_order():
    app = _app()
    with TestClient(app) as client:
        assert client.post("/twilio/status", data=_status("ringing", 1)).status_code == 403
        for form in (_status("ringing", 1), _status("completed", 3, CallDuration="42"),
                     _status("in-progress", 2)):
            r = client.post("/twilio/status", data=form, headers=_signed("/twilio/status", form))
            assert r.status_code == 204, r.text
        missing = {"CallSid": SID}
        assert client.post("/twilio/status", data=missing, headers=_signed("/twilio/status", missing)).status_code == 400
        assert client.get(f"/calls/{SID}").status_code == 401
        body = client.get(f"/calls/{SID}", headers={"Authorization": f"Bearer {API_TOKEN}"}).json()
        unknown = client.get("/calls/CAnope", headers={"Authorization": f"Bearer {API_TOKEN}"})
    assert [e["status"] for e in body["events"]] == ["ringing", "in-progress", "completed"]
    assert body["status"] == "completed" and body["events"][-1]["duration_secs"] == 42
    assert unknown.status_code == 404


async def test_in_memory_store_forgets_the_oldest_calls():
    store = InMemoryCallStatusStore(max_calls=2)
    for sid in ("CA1", "CA2", "CA3"):
        await store.record(CallStatusEvent.from_form({"CallSid": sid, "CallStatus": "completed"}))
    assert await store.events("CA1") == []
    latest = await store.latest("CA3")
    assert latest is not None and latest.terminal and latest.call_sid == "CA3"


def test_outbound_answer_webhook_uses_the_bot_named_in_the_signed_url():
    app = _app()
    form = {"CallSid": SID, "From": "+15559990000", "To": "+15551230000", "Direction": "outbound-api"}
    with TestClient(app) as client:
        r = client.post("/twilio/voice?bot=sales", data=form, headers=_signed("/twilio/voice?bot=sales", form))
        # The same signature does not cover another bot.
        forged = client.post("/twilio/voice?bot=front", data=form, headers=_signed("/twilio/voice?bot=sales", form))
        unknown = client.post("/twilio/voice?bot=x", data=form, headers=_signed("/twilio/voice?bot=x", form))
    assert r.status_code == 200 and '<Parameter name="bot" value="sales" />' in r.text
    assert '<Parameter name="auth" value="' in r.text
    assert forged.status_code == 403 and unknown.status_code == 404


def test_whisper_says_the_text_to_the_human():
    app = _app()
    form = {"CallSid": "CA" + "e" * 32}
    path = "/twilio/whisper?text=Caller+Ada+wants+a+refund."
    with TestClient(app) as client:
        r = client.post(path, data=form, headers=_signed(path, form))
        assert client.post(path, data=form).status_code == 403
    assert r.status_code == 200 and "<Say>Caller Ada wants a refund.</Say>" in r.text
