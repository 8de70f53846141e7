"""CallerAudioFrame: the caller's audio as an ``InputAudioRawFrame`` that prints as its name and
knows when it arrived.

Pipecat formats every frame it pushes into a string, for a trace log line that is off
(``logger.trace(f"Pushing {frame} ...")`` in ``FrameProcessor``): an audio frame's ``__str__``
(name, pts, source, size, sample count, rate) ran three or four times per 20 ms of every call.
The phone inputs (:mod:`bots.twilio.serializer`, :mod:`harness.loopback_phone`) make these.

``captured_at`` is when the frame's last sample reached this host: the time a processor would
read as "now" had the input taken the frame the moment it came. A phone input that leaves its
socket unread for a while (read pauses, :mod:`pipeline.call_audio.batcher`) hands such frames
over later; processors that line the caller's audio up with the bot's in time (the echo guard)
go by this stamp, not by when they see the frame.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from pipecat.frames.frames import Frame, InputAudioRawFrame


@dataclass
class CallerAudioFrame(InputAudioRawFrame):
    """The caller's audio: one phone frame, or several joined by the input's batching.

    Parameters:
        captured_at: Monotonic time at which the frame's last sample reached this host (None:
            the input does not know; the frame is then taken to be fresh).
    """

    captured_at: float | None = None

    def __str__(self) -> str:
        return self.name


def captured_at(frame: Frame) -> float:
    """When ``frame``'s audio reached this host: its stamp, else now (monotonic)."""
    stamp = getattr(frame, "captured_at", None)
    return time.monotonic() if stamp is None else stamp
