"""TwilioMarkProcessor: sends a Twilio ``mark`` after each bot response's audio.

Twilio echoes a mark back once everything queued before it has played, which tells the server
(and our caller simulator) when the caller actually finished hearing a response. The mark is an
``OutputTransportMessageFrame``, so the output transport sends it in order, after the audio.
"""

from __future__ import annotations

from pipecat.frames.frames import Frame, OutputTransportMessageFrame, TTSStoppedFrame
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor


class TwilioMarkProcessor(FrameProcessor):
    """Appends ``{"event": "mark", ...}`` behind every ``TTSStoppedFrame``."""

    def __init__(self, stream_sid: str, **kwargs) -> None:
        """Create the processor for one Twilio media stream (direct mode: it only appends a
        message behind a frame, so it needs no queue and task of its own)."""
        kwargs.setdefault("enable_direct_mode", True)
        super().__init__(**kwargs)
        self._stream_sid = stream_sid
        self._count = 0

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Pass frames on; add a mark after each response's last audio."""
        await super().process_frame(frame, direction)
        await self.push_frame(frame, direction)
        if isinstance(frame, TTSStoppedFrame) and direction == FrameDirection.DOWNSTREAM:
            self._count += 1
            mark = {
                "event": "mark",
                "streamSid": self._stream_sid,
                "mark": {"name": f"response-{self._count}"},
            }
            await self.push_frame(OutputTransportMessageFrame(message=mark))
