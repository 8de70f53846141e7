"""Every route Twilio calls refuses a request without a valid ``X-Twilio-Signature`` (403)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from twilio.request_validator import RequestValidator

from bots.profile import BotProfile
from bots.registry import BotRegistry
from bots.server import create_app
from stepcall.settings import Settings

AUTH = "tw-auth-token"
BASE = "https://bots.example.com"
FORMS = {
    "/twilio/voice": {"CallSid": "CA" + "1" * 32, "From": "+15550001111", "To": "+15550002222"},
    "/twilio/status": {"CallSid": "CA" + "1" * 32, "CallStatus": "completed"},
    "/twilio/whisper?text=Hello": {"CallSid": "CA" + "1" * 32},
}


@pytest.fixture
def client() -> TestClient:
    settings = Settings(public_url=BASE, twilio_auth_token=AUTH)
    return TestClient(create_app(settings, BotRegistry.single(BotProfile(name="front"))))


def _sign(path: str, form: dict, token: str = AUTH) -> str:
    return RequestValidator(token).compute_signature(BASE + path, form)


@pytest.mark.parametrize("path", list(FORMS))
def test_unsigned_forged_and_tampered_webhooks_are_refused(client, path):
    form = FORMS[path]
    assert client.post(path, data=form).status_code == 403
    headers = {"X-Twilio-Signature": "forged"}
    assert client.post(path, data=form, headers=headers).status_code == 403
    wrong_key = {"X-Twilio-Signature": _sign(path, form, "another-account")}
    assert client.post(path, data=form, headers=wrong_key).status_code == 403
    signed = {"X-Twilio-Signature": _sign(path, form)}
    tampered = {**form, "CallSid": "CA" + "9" * 32}
    assert client.post(path, data=tampered, headers=signed).status_code == 403
    other_query = path.split("?")[0] + "?text=Evil&bot=front"
    assert client.post(other_query, data=form, headers=signed).status_code == 403
    assert client.post(path, data=form, headers=signed).status_code in (200, 204)


def test_refusal_is_logged_with_the_call_id(client):
    from loguru import logger

    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), level="WARNING")
    try:
        client.post("/twilio/voice", data=FORMS["/twilio/voice"])
    finally:
        logger.remove(sink)
    assert any("rejected unsigned/invalid Twilio webhook" in line and "CA" + "1" * 32 in line
               for line in lines), lines
