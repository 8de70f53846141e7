"""Outbound calls: ask Twilio to dial a number and connect the answered call to a bot.

Twilio creates the call, and when it is answered fetches our voice webhook
``/twilio/voice?bot=NAME`` (signed like every webhook), which answers the same
``<Connect><Stream>`` TwiML as an inbound call, with a stream token bound to the new call SID.
Status callbacks go to ``/twilio/status``.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlencode

from twilio.rest import Client

from bots.twilio.config import TwilioConfig
from bots.twilio.numbers import check_e164

RING_TIMEOUT_SECS = 30


@dataclass(frozen=True)
class OutboundCallRequest:
    """Who to call, from which number, with which bot."""

    to: str
    bot: str
    from_number: str

    def validated(self) -> OutboundCallRequest:
        """A copy with checked numbers; ValueError naming the bad field."""
        if not self.bot:
            raise ValueError("an outbound call needs a bot (flow) name")
        return OutboundCallRequest(
            to=check_e164(self.to, "to"),
            bot=self.bot,
            from_number=check_e164(self.from_number, "from"),
        )


@dataclass(frozen=True)
class OutboundCall:
    """The call Twilio created."""

    call_sid: str
    status: str
    to: str
    from_number: str
    bot: str


def answer_url(config: TwilioConfig, bot: str) -> str:
    """The voice webhook Twilio fetches when the callee answers."""
    return config.url("/twilio/voice") + "?" + urlencode({"bot": bot})


async def place_outbound_call(
    client: Client, config: TwilioConfig, request: OutboundCallRequest
) -> OutboundCall:
    """Create the call through the REST API; raises ``TwilioRestException`` on API errors."""
    req = request.validated()
    call = await client.calls.create_async(
        to=req.to,
        from_=req.from_number,
        url=answer_url(config, req.bot),
        method="POST",
        status_callback=config.url("/twilio/status"),
        status_callback_method="POST",
        status_callback_event=list(config.status_events),
        timeout=RING_TIMEOUT_SECS,
    )
    return OutboundCall(
        call_sid=str(call.sid),
        status=str(call.status or "queued"),
        to=req.to,
        from_number=req.from_number,
        bot=req.bot,
    )
