"""Live transcript and call state for the browser widget, sent over the WebRTC data channel.

``TranscriptRelay`` sits between the Step-Audio 2 service and the output transport. It passes
every frame on unchanged and, for the few frames a caller's screen cares about, also sends a
small JSON message to the browser (``OutputTransportMessageUrgentFrame`` → SmallWebRTC
``send_app_message``).

The messages use the shape of RTVI server messages (``{"label": "rtvi-ai", "type": ..., "data":
...}``), so an RTVI client can read them too, but no RTVI handshake is needed:

| type | data | when |
|---|---|---|
| ``bot-ready`` | ``{"bot": name}`` | the pipeline is connected to the browser |
| ``bot-llm-started`` / ``bot-llm-stopped`` | ``{}`` | one bot response begins / ends |
| ``bot-tts-text`` | ``{"text": str}`` | text the bot speaks (in pieces; join them) |
| ``bot-started-speaking`` / ``bot-stopped-speaking`` | ``{}`` | bot audio starts / stops playing |
| ``user-started-speaking`` / ``user-stopped-speaking`` | ``{}`` | the caller's turn starts / ends |
| ``user-transcription`` | ``{"text": str, "final": true}`` | text of the caller's turn, if known |
| ``bot-interrupted`` | ``{}`` | the caller interrupted the bot |
"""

from __future__ import annotations

from typing import Any

from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    Frame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    OutputTransportMessageUrgentFrame,
    TranscriptionFrame,
    TTSTextFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

#: The ``label`` of every message (the RTVI protocol's label).
MESSAGE_LABEL = "rtvi-ai"


def widget_message(kind: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
    """One message for the widget: ``{"label": "rtvi-ai", "type": kind, "data": data}``."""
    if not kind:
        raise ValueError("widget message needs a type")
    return {"label": MESSAGE_LABEL, "type": kind, "data": dict(data or {})}


_STATE_EVENTS: tuple[tuple[type[Frame], str], ...] = (
    (LLMFullResponseStartFrame, "bot-llm-started"),
    (LLMFullResponseEndFrame, "bot-llm-stopped"),
    (BotStartedSpeakingFrame, "bot-started-speaking"),
    (BotStoppedSpeakingFrame, "bot-stopped-speaking"),
    (UserStartedSpeakingFrame, "user-started-speaking"),
    (UserStoppedSpeakingFrame, "user-stopped-speaking"),
    (InterruptionFrame, "bot-interrupted"),
)


class TranscriptRelay(FrameProcessor):
    """Mirrors the bot's spoken text and the call's speaking state to the browser.

    Place it after the speech-to-speech service and before ``transport.output()``. Frames that
    are broadcast in both directions (speaking events) reach it once: bot events come upstream
    from the output transport, user events downstream from the user aggregator.
    """

    def __init__(self, **kwargs: Any) -> None:
        """Create a relay; ``sent`` counts the messages it has sent (for logs and tests)."""
        super().__init__(**kwargs)
        self.sent = 0

    async def send(self, kind: str, data: dict[str, Any] | None = None) -> None:
        """Send one widget message to the browser right away."""
        self.sent += 1
        message = widget_message(kind, data)
        await self.push_frame(OutputTransportMessageUrgentFrame(message=message))

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Pass ``frame`` on; send the widget the message it implies, if any."""
        await super().process_frame(frame, direction)
        await self.push_frame(frame, direction)
        if isinstance(frame, TTSTextFrame):
            if frame.text:
                await self.send("bot-tts-text", {"text": frame.text})
            return
        if isinstance(frame, TranscriptionFrame):
            if frame.text:
                await self.send("user-transcription", {"text": frame.text, "final": True})
            return
        for frame_type, kind in _STATE_EVENTS:
            if isinstance(frame, frame_type):
                await self.send(kind)
                return
