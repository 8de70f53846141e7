"""TwilioCallControl: hang-up and cold/warm transfer as REST requests on the live call."""

from __future__ import annotations

from urllib.parse import parse_qs, urlparse
from xml.etree import ElementTree

from bots.profile import BotProfile
from bots.registry import BotRegistry
from bots.server import create_app
from bots.twilio.call_control import NO_ANSWER_MESSAGE, TwilioCallControl
from bots.twilio.config import TwilioConfig
from bots.twilio.rest import open_rest_client
from stepcall.settings import Settings

CALL_SID = "CA" + "c" * 32


def _update_path(fake) -> str:
    return f"/2010-04-01/Accounts/{fake.config().account_sid}/Calls/{CALL_SID}.json"


async def test_hang_up_completes_the_call_once(fake_twilio):
    async with open_rest_client(fake_twilio.config()) as client:
        control = TwilioCallControl(CALL_SID, client, fake_twilio.config())
        await control.hang_up("caller said goodbye")
        await control.hang_up("again")  # idempotent: no second request
    [req] = fake_twilio.requests
    assert (req.method, req.path) == ("POST", _update_path(fake_twilio))
    assert req.form == {"Status": ["completed"]}
    assert req.auth == (fake_twilio.config().account_sid, fake_twilio.config().auth_token)
    assert control.ended and control.events == ["hang_up:caller said goodbye"]


async def test_hang_up_of_a_call_twilio_already_ended_is_not_an_error(fake_twilio):
    fake_twilio.fail_next = (400, 21220, "Call is not in-progress. Cannot redirect.")
    async with open_rest_client(fake_twilio.config()) as client:
        control = TwilioCallControl(CALL_SID, client, fake_twilio.config())
        await control.hang_up()
    assert control.ended and len(fake_twilio.requests) == 1


async def test_cold_transfer_redirects_the_call_to_dial(fake_twilio):
    async with open_rest_client(fake_twilio.config()) as client:
        control = TwilioCallControl(CALL_SID, client, fake_twilio.config())
        result = await control.transfer("+15557654321")
    assert result.ok, result.detail
    [req] = fake_twilio.requests
    assert req.path == _update_path(fake_twilio) and set(req.form) == {"Twiml"}
    root = ElementTree.fromstring(req.field("Twiml"))
    dial = root.find("Dial")
    assert dial is not None and dial.get("timeout") == "30"
    number = dial.find("Number")
    assert number.text == "+15557654321" and number.get("url") is None
    assert root.find("Say").text == NO_ANSWER_MESSAGE and root.find("Hangup") is not None
    assert control.events == ["transfer:cold:+15557654321"]


async def test_warm_transfer_whispers_to_the_human_first(fake_twilio):
    config = fake_twilio.config()
    async with open_rest_client(config) as client:
        control = TwilioCallControl(CALL_SID, client, config)
        result = await control.transfer(
            "+15557654321", warm=True, whisper="Caller Ada wants a refund."
        )
    assert result.ok
    number = ElementTree.fromstring(fake_twilio.requests[0].field("Twiml")).find("Dial/Number")
    url = urlparse(number.get("url"))
    assert f"{url.scheme}://{url.netloc}{url.path}" == "https://bots.example.com/twilio/whisper"
    assert parse_qs(url.query) == {"text": ["Caller Ada wants a refund."]}
    assert control.events == ["transfer:warm:+15557654321"]


async def test_transfer_to_a_sip_uri_uses_sip_noun(fake_twilio):
    async with open_rest_client(fake_twilio.config()) as client:
        control = TwilioCallControl(CALL_SID, client, fake_twilio.config())
        assert (await control.transfer("sip:desk@pbx.example.com")).ok
    sip = ElementTree.fromstring(fake_twilio.requests[0].field("Twiml")).find("Dial/Sip")
    assert sip.text == "sip:desk@pbx.example.com"


async def test_transfer_refuses_bad_numbers_without_calling_twilio(fake_twilio):
    async with open_rest_client(fake_twilio.config()) as client:
        control = TwilioCallControl(CALL_SID, client, fake_twilio.config())
        result = await control.transfer("555-1234")
    assert not result.ok and "555-1234" in result.detail
    assert fake_twilio.requests == [] and control.events == []


async def test_transfer_reports_twilio_errors(fake_twilio):
    fake_twilio.fail_next = (400, 21220, "Call is not in-progress. Cannot redirect.")
    async with open_rest_client(fake_twilio.config()) as client:
        control = TwilioCallControl(CALL_SID, client, fake_twilio.config())
        result = await control.transfer("+15557654321")
    assert not result.ok and "not in-progress" in result.detail
    assert control.events == []


async def test_server_gives_each_call_a_twilio_call_control_when_credentials_are_set(fake_twilio):
    settings = Settings(public_url="https://bots.example.com")
    app = create_app(settings, BotRegistry.single(BotProfile()), twilio=fake_twilio.config())
    control = app.state.twilio_rest.call_control(CALL_SID)
    assert isinstance(control, TwilioCallControl) and control.call_id == CALL_SID
    await control.hang_up()
    assert fake_twilio.requests[0].path == _update_path(fake_twilio)
    await app.state.twilio_rest.close()
    bare = create_app(settings, BotRegistry.single(BotProfile()),
                      twilio=TwilioConfig(base_url=settings.base_url))
    assert bare.state.twilio_rest.call_control(CALL_SID) is None
