"""PhoneSerializer: Pipecat's Twilio serializer with a short path for the caller's audio.

Twilio sends a ``media`` message every 20 ms of the call. Pipecat's serializer turns each into an
``InputAudioRawFrame``, and Pipecat then formats that frame into a string on every hop between
processors, for a trace log line that is off (``logger.trace(f"Pushing {frame} ...")``): the
frame's ``__str__`` (name, pts, size, sample count, rate) ran three or four times per 20 ms of
every call. Here caller audio arrives as :class:`CallerAudioFrame`, an ``InputAudioRawFrame``
whose string is its name, decoded in one pass when the pipeline runs at Twilio's own 8 kHz (no
resampler: mu-law to PCM only), stamped with when it reached this host
(:class:`~bots.twilio.stream_clock.StreamClock`, from the message's stream timestamp: a frame that
waited in an unread socket keeps the time it came). Everything else (other rates, DTMF, marks,
the bot's audio out) is Pipecat's.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import time

from pipecat.audio.utils import audioop  # the stdlib's, or audioop-lts on Python 3.13+
from pipecat.frames.frames import Frame
from pipecat.serializers.twilio import TwilioFrameSerializer

from bots.twilio.stream_clock import StreamClock
from pipeline.call_audio.caller_frame import CallerAudioFrame

__all__ = ["CallerAudioFrame", "PhoneSerializer"]


class PhoneSerializer(TwilioFrameSerializer):
    """Twilio Media Streams serializer; ``media`` at 8 kHz becomes a :class:`CallerAudioFrame`."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        #: Caller frames decoded on the short path (tests, diagnostics).
        self.fast_frames = 0
        self.clock = StreamClock()

    async def deserialize(self, data: str | bytes) -> Frame | None:
        """A ``media`` message at the pipeline's own rate in one pass; the rest as Pipecat."""
        if self._sample_rate != self._twilio_sample_rate:
            return await super().deserialize(data)
        try:
            message = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return await super().deserialize(data)  # Pipecat logs it and drops it
        if not isinstance(message, dict) or message.get("event") != "media":
            return await super().deserialize(data)
        media = message.get("media")
        payload = media.get("payload") if isinstance(media, dict) else None
        if not payload:
            return None
        try:
            ulaw = base64.b64decode(payload)
        except (binascii.Error, ValueError):
            return None
        pcm = audioop.ulaw2lin(ulaw, 2)
        if not pcm:
            return None
        self.fast_frames += 1
        try:
            stream_ms = float(media.get("timestamp"))
        except (TypeError, ValueError):
            stream_ms = math.nan
        # no usable stamp: the frame counts as fresh
        came = self.clock.arrival(stream_ms, time.monotonic()) if math.isfinite(stream_ms) else None
        return CallerAudioFrame(
            audio=pcm, sample_rate=self._sample_rate, num_channels=1, captured_at=came
        )
