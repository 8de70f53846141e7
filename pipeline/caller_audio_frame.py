"""CallerAudioFrame: the caller's audio as an ``InputAudioRawFrame`` that prints as its name.

Pipecat formats every frame it pushes into a string, for a trace log line that is off
(``logger.trace(f"Pushing {frame} ...")`` in ``FrameProcessor``): an audio frame's ``__str__``
(name, pts, source, size, sample count, rate) ran three or four times per 20 ms of every call.
The phone inputs (:mod:`bots.twilio.serializer`, :mod:`pipeline.loopback_phone`) make these.
"""

from __future__ import annotations

from pipecat.frames.frames import InputAudioRawFrame


class CallerAudioFrame(InputAudioRawFrame):
    """The caller's audio: one phone frame, or two joined while the caller is quiet."""

    def __str__(self) -> str:
        return self.name
