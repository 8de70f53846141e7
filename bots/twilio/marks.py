"""TwilioMarkProcessor: sends a Twilio ``mark`` after each bot response's audio.

Twilio echoes a mark back once everything queued before it has played, which tells the server
(and our caller simulator) when the caller actually finished hearing a response. The mark is an
``OutputTransportMessageFrame``, so the output transport sends it in order, after the audio.

A holding line ("One moment, please.") gets a ``holding-N`` mark behind its audio
(:class:`~pipeline.step_audio2.frames.HoldingLineFrame`): the answer is still to come, and the
far side can tell the bot is holding, not done (our caller simulator waits on, as a caller who
heard the line does).
"""

from __future__ import annotations

from pipecat.frames.frames import Frame, OutputTransportMessageFrame, TTSStoppedFrame
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from pipeline.step_audio2.frames import HoldingLineFrame

#: Mark names: ``response-N`` after the N-th response's audio, ``holding-N`` after the N-th
#: holding line's (its answer still to come).
RESPONSE_MARK = "response-"
HOLDING_MARK = "holding-"


class TwilioMarkProcessor(FrameProcessor):
    """Appends ``{"event": "mark", ...}`` behind every ``TTSStoppedFrame`` (``response-N``) and
    every holding line (``holding-N``)."""

    def __init__(self, stream_sid: str, **kwargs) -> None:
        """Create the processor for one Twilio media stream (direct mode: it only appends a
        message behind a frame, so it needs no queue and task of its own)."""
        kwargs.setdefault("enable_direct_mode", True)
        super().__init__(**kwargs)
        self._stream_sid = stream_sid
        self._count = 0
        self._holding = 0

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Pass frames on; add a mark after each response's last audio."""
        await super().process_frame(frame, direction)
        await self.push_frame(frame, direction)
        if direction != FrameDirection.DOWNSTREAM:
            return
        if isinstance(frame, TTSStoppedFrame):
            self._count += 1
            await self._mark(f"{RESPONSE_MARK}{self._count}")
        elif isinstance(frame, HoldingLineFrame):
            self._holding += 1
            await self._mark(f"{HOLDING_MARK}{self._holding}")

    async def _mark(self, name: str) -> None:
        mark = {"event": "mark", "streamSid": self._stream_sid, "mark": {"name": name}}
        await self.push_frame(OutputTransportMessageFrame(message=mark))
