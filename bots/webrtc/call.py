"""One browser call: the SmallWebRTC transport at 16 kHz around the call pipeline.

Audio: the pipeline runs at 16 kHz in and out. The browser sends Opus at 48 kHz, which the
transport resamples once (PyAV) to 16 kHz, the native rate of Silero VAD, Smart Turn and the
model's audio encoder; the model service returns 16 kHz PCM, which aiortc encodes to Opus.
Browsers cancel echo themselves (``echoCancellation``), so the phone path's echo guard is off.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from pipecat.transports.base_transport import TransportParams
from pipecat.transports.smallwebrtc.connection import SmallWebRTCConnection
from pipecat.transports.smallwebrtc.transport import SmallWebRTCTransport

from bots.call import BROWSER_RATE, CallInfo, CallRunner
from bots.profile import BotProfile
from bots.webrtc.config import CONNECT_TIMEOUT_SECS
from bots.webrtc.transcript import TranscriptRelay
from pipeline.flows.call_control import CallControl, TransferResult
from pipeline.step_audio2.spoken_lines import SpokenLines
from stepcall.settings import Settings

#: Pipeline sample rate of browser calls (in and out).
WEBRTC_RATE = BROWSER_RATE


#: App message the widget sends when the caller hangs up.
HANGUP_MESSAGE = "stepcall-hangup"


class WebRTCCallControl(CallControl):
    """Hang-up for a browser call: tells the widget, then ends the call's pipeline."""

    def __init__(self, call_id: str, end: Callable[[str], Any]) -> None:
        """``end(reason)`` ends the call (may return an awaitable)."""
        super().__init__(call_id)
        self._end = end

    async def hang_up(self, reason: str = "completed") -> None:
        """End the call."""
        self.events.append(f"hang_up:{reason}")
        result = self._end(reason)
        if asyncio.iscoroutine(result):
            await result

    async def transfer(
        self, to: str, *, warm: bool = False, whisper: str | None = None
    ) -> TransferResult:
        """Browser calls cannot be transferred to a phone number."""
        self.events.append(f"transfer_refused:{to}")
        return TransferResult(False, "a browser call cannot be transferred")


async def run_webrtc_call(
    connection: SmallWebRTCConnection,
    call: CallInfo,
    profile: BotProfile,
    settings: Settings,
    *,
    connect_timeout_secs: float = CONNECT_TIMEOUT_SECS,
    observers: list[Any] | None = None,
    lines: SpokenLines | None = None,
) -> None:
    """Run one browser call on a SmallWebRTC connection until either side hangs up.

    ``lines``: the server's rendered lines (the bot's verbatim greeting)."""
    transport = SmallWebRTCTransport(
        webrtc_connection=connection,
        params=TransportParams(
            audio_in_enabled=True,
            audio_out_enabled=True,
            audio_in_sample_rate=WEBRTC_RATE,
            audio_out_sample_rate=WEBRTC_RATE,
        ),
    )
    relay = TranscriptRelay()

    async def end(reason: str) -> None:
        await relay.send("call-ended", {"reason": reason})
        await run.end(f"ending browser call: {reason}")

    control = WebRTCCallControl(call.call_id, end)
    run = CallRunner(
        transport,
        call,
        profile,
        settings,
        sample_rate=WEBRTC_RATE,
        extra_processors=[relay],
        call_control=control,
        echo_guard=False,
        observers=observers,
        lines=lines,
    )
    connected = asyncio.Event()

    @transport.event_handler("on_client_connected")
    async def _on_connected(_transport: Any, _client: Any) -> None:
        connected.set()
        await relay.send("bot-ready", {"bot": profile.name, "call_id": call.call_id})
        await run.caller_connected(f"browser call connected: bot {profile.name}")

    @transport.event_handler("on_client_disconnected")
    async def _on_disconnected(_transport: Any, _client: Any) -> None:
        await run.end("browser peer closed the connection")

    @transport.event_handler("on_app_message")
    async def _on_app_message(_transport: Any, message: Any, _sender: Any) -> None:
        if isinstance(message, dict) and message.get("type") == HANGUP_MESSAGE:
            await run.end("caller hung up")

    async def watch_connect() -> None:
        try:
            await asyncio.wait_for(connected.wait(), connect_timeout_secs)
        except TimeoutError:
            await run.end(f"browser did not connect within {connect_timeout_secs:g} s: dropping")

    watchdog = asyncio.create_task(watch_connect())
    try:
        await run.run()
    finally:
        watchdog.cancel()
        try:
            await connection.disconnect()
        except Exception as e:  # already closed
            run.log.debug(f"disconnect after call: {e}")
    run.log.info("browser call ended")
