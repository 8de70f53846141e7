"""TwilioCallControl: hang up or transfer a live Twilio call through the REST API.

- Hang-up: ``calls(sid).update(status="completed")``.
- Cold transfer: the live call gets new TwiML, ``<Dial><Number>`` (or ``<Sip>``); Twilio stops the
  media stream (our pipeline ends) and bridges the caller to the human.
- Warm transfer: the same ``<Dial>``, but the ``<Number url=...>`` attribute makes Twilio play a
  *whisper* to the human when they pick up, before the caller is connected (Twilio fetches
  ``/twilio/whisper?text=...`` from us; it answers ``<Say>``). The caller meanwhile hears ringing.
- If nobody answers (``RING_TIMEOUT_SECS``) the caller hears an apology and the call ends.
"""

from __future__ import annotations

from urllib.parse import urlencode

from loguru import logger
from twilio.base.exceptions import TwilioRestException
from twilio.rest import Client
from twilio.twiml.voice_response import Dial, Hangup, Say, VoiceResponse

from bots.twilio.config import TwilioConfig
from bots.twilio.numbers import is_e164, is_sip_uri
from pipeline.flows.call_control import CallControl, TransferResult

RING_TIMEOUT_SECS = 30
DEFAULT_WHISPER = "Incoming transfer from the voice assistant."
NO_ANSWER_MESSAGE = "Sorry, nobody is available to take your call right now. Goodbye."
# Twilio error codes meaning the call is already over.
_CALL_GONE = {20404, 21220}


def whisper_url(config: TwilioConfig, text: str) -> str:
    """Our URL that answers ``<Say>text</Say>`` to the human before a warm transfer connects."""
    return config.url("/twilio/whisper") + "?" + urlencode({"text": text})


def whisper_twiml(text: str) -> str:
    """TwiML played to the human who picks up a warm transfer."""
    response = VoiceResponse()
    response.say(text or DEFAULT_WHISPER)
    return str(response)


def transfer_twiml(to: str, *, whisper_to: str | None = None) -> str:
    """TwiML that bridges the caller to ``to`` (E.164 or SIP URI).

    ``whisper_to``: URL of TwiML played to the human before bridging (warm transfer).
    """
    response = VoiceResponse()
    dial = Dial(timeout=RING_TIMEOUT_SECS)
    extra = {"url": whisper_to} if whisper_to else {}
    if is_sip_uri(to):
        dial.sip(to, **extra)
    else:
        dial.number(to, **extra)
    response.append(dial)
    response.append(Say(NO_ANSWER_MESSAGE))
    response.append(Hangup())
    return str(response)


class TwilioCallControl(CallControl):
    """Controls one live Twilio call (``call_id`` is its CallSid) through the REST API."""

    def __init__(self, call_id: str, client: Client, config: TwilioConfig) -> None:
        """``client``: a REST client from :func:`bots.twilio.rest.rest_client`."""
        super().__init__(call_id=call_id)
        self.client = client
        self.config = config
        self.ended = False

    async def hang_up(self, reason: str = "completed") -> None:
        """End the call (idempotent; a call Twilio already ended is not an error)."""
        if self.ended:
            return
        log = logger.bind(call_id=self.call_id)
        try:
            await self.client.calls(self.call_id).update_async(status="completed")
        except TwilioRestException as e:
            if e.code not in _CALL_GONE and e.status != 404:
                raise
            log.info(f"hang-up: call already ended ({e.code})")
        self.ended = True
        self.events.append(f"hang_up:{reason}")
        log.info(f"bot hung up ({reason})")

    async def transfer(
        self, to: str, *, warm: bool = False, whisper: str | None = None
    ) -> TransferResult:
        """Bridge the caller to a human; warm = the human first hears ``whisper``."""
        log = logger.bind(call_id=self.call_id)
        target = (to or "").strip()
        if not (is_e164(target) or is_sip_uri(target)):
            return TransferResult(False, f"cannot transfer to {to!r}: not an E.164 number or SIP URI")
        if self.ended:
            return TransferResult(False, "the call has already ended")
        url = whisper_url(self.config, whisper or DEFAULT_WHISPER) if warm else None
        kind = "warm" if warm else "cold"
        try:
            await self.client.calls(self.call_id).update_async(
                twiml=transfer_twiml(target, whisper_to=url)
            )
        except TwilioRestException as e:
            log.warning(f"{kind} transfer to {target} failed: {e.code} {e.msg}")
            return TransferResult(False, f"Twilio refused the transfer: {e.msg}")
        self.events.append(f"transfer:{kind}:{target}")
        log.info(f"{kind} transfer to {target}")
        return TransferResult(True, f"{kind} transfer to {target} started")
