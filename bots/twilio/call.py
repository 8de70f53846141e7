"""One Twilio Media Streams call: the phone transport at 8 kHz around the call pipeline.

``run_twilio_call`` runs an accepted media WebSocket until the call ends; the pipeline itself
is assembled by :mod:`bots.call`.
"""

from __future__ import annotations

from typing import Any

from pipecat.observers.base_observer import BaseObserver
from pipecat.transports.websocket.fastapi import FastAPIWebsocketParams

from bots.call import (
    PHONE_AUDIO_OUT_10MS_CHUNKS,
    PHONE_RATE,
    CallInfo,
    CallRunner,
    batch_caller_audio,
)
from bots.profile import BotProfile
from bots.twilio.marks import TwilioMarkProcessor
from bots.twilio.media_transport import TwilioMediaTransport
from bots.twilio.serializer import PhoneSerializer
from pipeline.flows.call_control import CallControl
from pipeline.step_audio2.spoken_lines import SpokenLines
from stepcall.settings import Settings


def twilio_serializer(
    call: CallInfo,
    profile: BotProfile,
    settings: Settings,
    call_control: CallControl | None = None,
) -> PhoneSerializer:
    """The Twilio Media Streams serializer of one call.

    It hangs the call up through Twilio's REST API when the pipeline ends (credentials needed),
    unless a flow runtime does it through ``call_control`` (with its reason) once the goodbye
    has played: one hang-up per call, never two.
    """
    hang_up = bool(settings.twilio_account_sid and settings.twilio_auth_token)
    if profile.flow is not None and call_control is not None:
        hang_up = False
    return PhoneSerializer(
        stream_sid=call.stream_sid,
        call_sid=call.call_id,
        account_sid=settings.twilio_account_sid,
        auth_token=settings.twilio_auth_token,
        params=PhoneSerializer.InputParams(auto_hang_up=hang_up),
    )


async def run_twilio_call(
    websocket: Any,
    call: CallInfo,
    profile: BotProfile,
    settings: Settings,
    *,
    observers: list[BaseObserver] | None = None,
    call_control: CallControl | None = None,
    lines: SpokenLines | None = None,
) -> None:
    """Run one Twilio Media Streams call on an accepted WebSocket until it ends.

    ``lines``: the server's rendered lines (the bot's verbatim greeting)."""
    serializer = twilio_serializer(call, profile, settings, call_control)
    transport = TwilioMediaTransport(
        websocket=websocket,
        params=FastAPIWebsocketParams(
            audio_in_enabled=True,
            audio_out_enabled=True,
            audio_in_sample_rate=PHONE_RATE,
            audio_out_sample_rate=PHONE_RATE,
            audio_out_10ms_chunks=PHONE_AUDIO_OUT_10MS_CHUNKS,
            add_wav_header=False,
            serializer=serializer,
            allowed_origins=[],  # Twilio's media socket is server-to-server: no Origin header
        ),
        audio_lead_secs=settings.twilio_audio_lead_ms / 1000.0,
    )
    run = CallRunner(
        transport,
        call,
        profile,
        settings,
        extra_processors=[TwilioMarkProcessor(call.stream_sid)],
        call_control=call_control,
        observers=observers,
        lines=lines,
    )
    batch_caller_audio(transport.input(), run.parts)

    @transport.event_handler("on_client_connected")
    async def _on_connected(_transport: Any, _ws: Any) -> None:
        await run.caller_connected(f"call connected: bot {profile.name}, stream {call.stream_sid}")

    @transport.event_handler("on_client_disconnected")
    async def _on_disconnected(_transport: Any, _ws: Any) -> None:
        await run.end("caller hung up")

    await run.run()
    frames_in = transport.input()
    run.log.info(
        f"call ended: {frames_in.audio_frames_pushed} caller audio pushes "
        f"({frames_in.frames_coalesced} fewer than frames received, by batching)"
    )
