"""``stepcall dial``: place a real outbound phone call through Twilio to a bot.

The bot server (``stepcall serve``) must be running at ``STEPCALL_PUBLIC_URL`` with the same flow:
Twilio fetches ``/twilio/voice?bot=NAME`` from it when the callee answers.
"""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import asdict
from pathlib import Path

from twilio.base.exceptions import TwilioRestException

from bots.twilio.config import TwilioConfig
from bots.twilio.outbound import OutboundCall, OutboundCallRequest, place_outbound_call
from bots.twilio.rest import TwilioNotConfiguredError, open_rest_client
from stepcall.settings import Settings


def resolve_flow(flow: str) -> tuple[str, tuple[str, ...]]:
    """(bot name, the flow's phone numbers) for a flow YAML path, or (name, ()) for a bot name."""
    path = Path(flow)
    if path.suffix in (".yaml", ".yml") or path.exists():
        from pipeline.flows.format import load_flow

        spec = load_flow(path)  # FlowValidationError lists file:line problems
        return spec.bot.name, tuple(spec.phone_numbers)
    return flow, ()


async def dial(config: TwilioConfig, request: OutboundCallRequest) -> OutboundCall:
    """Place one outbound call."""
    async with open_rest_client(config) as client:
        return await place_outbound_call(client, config, request)


def dial_command(to: str, flow: str, from_number: str | None, settings: Settings, as_json: bool) -> int:
    """Run ``stepcall dial``; returns the exit status (0 placed, 1 Twilio refused, 2 bad input)."""
    config = TwilioConfig.from_settings(settings)
    try:
        bot, numbers = resolve_flow(flow)
    except Exception as e:  # FlowValidationError and unreadable files
        print(f"stepcall dial: {e}", file=sys.stderr)
        return 2
    caller_id = from_number or (numbers[0] if numbers else None) or config.from_number
    if not caller_id:
        print("stepcall dial: no caller ID: give --from, list phone_numbers in the flow, "
              "or set TWILIO_FROM_NUMBER", file=sys.stderr)
        return 2
    if not config.base_url.startswith("https://"):
        print(f"stepcall dial: warning: Twilio must reach the bot server at {config.base_url}; "
              "set STEPCALL_PUBLIC_URL to its public https URL", file=sys.stderr)
    try:
        call = asyncio.run(dial(config, OutboundCallRequest(to=to, bot=bot, from_number=caller_id)))
    except (ValueError, TwilioNotConfiguredError) as e:
        print(f"stepcall dial: {e}", file=sys.stderr)
        return 2
    except TwilioRestException as e:
        print(f"stepcall dial: Twilio refused the call ({e.code}): {e.msg}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(asdict(call), indent=2))
    else:
        print(f"calling {call.to} from {call.from_number} with bot {call.bot}: "
              f"call {call.call_sid} ({call.status})")
    return 0
