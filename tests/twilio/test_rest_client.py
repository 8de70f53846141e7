"""rest_client: the official twilio Client, pointed at our configured API host."""

from __future__ import annotations

import pytest

from bots.twilio.config import TwilioConfig
from bots.twilio.rest import TwilioNotConfiguredError, open_rest_client, rest_client


def test_without_credentials_is_a_clear_error():
    with pytest.raises(TwilioNotConfiguredError, match="TWILIO_ACCOUNT_SID"):
        rest_client(TwilioConfig(base_url="https://x"))


async def test_requests_go_to_the_configured_api_host_with_basic_auth(fake_twilio, monkeypatch):
    monkeypatch.setenv("TWILIO_EDGE", "sydney")  # must not rewrite a custom API host
    config = fake_twilio.config()
    async with open_rest_client(config) as client:
        call = await client.calls("CA" + "b" * 32).update_async(status="completed")
    assert call.status == "completed"
    [req] = fake_twilio.requests
    assert req.method == "POST"
    assert req.path == f"/2010-04-01/Accounts/{config.account_sid}/Calls/{'CA' + 'b' * 32}.json"
    assert req.auth == (config.account_sid, config.auth_token)
    assert req.form == {"Status": ["completed"]}
    assert req.headers["user-agent"].startswith("twilio-python/")
