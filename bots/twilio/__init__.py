"""Twilio on the bot side: REST client, outbound calls, stream tokens, call control, status.

Everything that reaches Twilio's cloud goes through the official ``twilio`` library, built by
:func:`bots.twilio.rest.rest_client` (its API base URL can point at a local fake in tests).
"""

from __future__ import annotations

from bots.twilio.call_control import TwilioCallControl, transfer_twiml
from bots.twilio.config import TwilioConfig
from bots.twilio.outbound import OutboundCall, OutboundCallRequest, place_outbound_call
from bots.twilio.rest import TwilioNotConfiguredError, rest_client
from bots.twilio.status import CallStatusEvent, CallStatusStore, InMemoryCallStatusStore
from bots.twilio.stream_auth import StreamAuth, StreamAuthResult

__all__ = [
    "CallStatusEvent", "CallStatusStore", "InMemoryCallStatusStore", "OutboundCall",
    "OutboundCallRequest", "StreamAuth", "StreamAuthResult", "TwilioCallControl", "TwilioConfig",
    "TwilioNotConfiguredError", "place_outbound_call", "rest_client", "transfer_twiml",
]
