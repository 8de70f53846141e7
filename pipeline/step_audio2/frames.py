"""Frames the Step-Audio 2 service understands beyond Pipecat's own."""

from __future__ import annotations

from dataclasses import dataclass

from pipecat.frames.frames import DataFrame


@dataclass
class SpeakLineFrame(DataFrame):
    """Say ``text`` word for word now (a verbatim greeting).

    ``pcm``: the line already rendered in the bot's voice (PCM16 mono at ``sample_rate``,
    from :class:`pipeline.step_audio2.spoken_lines.SpokenLines`); the service plays it at once
    and records it as the bot's turn, in the Pipecat context and the model session. ``None``:
    not rendered (the model service cannot, or not in time): the model is asked to say it.
    """

    text: str
    pcm: bytes | None = None
    sample_rate: int = 8000

    def __str__(self) -> str:
        audio = f"{len(self.pcm) // 2} samples" if self.pcm is not None else "not rendered"
        return f"{self.name}(text: {self.text[:40]!r}, {audio})"


@dataclass
class HoldingLineFrame(DataFrame):
    """The holding line ("One moment, please.") has gone out; the answer follows it.

    Pushed by the service right behind the holding line's audio, in order with it (dropped with
    it on a barge-in), so a transport can tell the caller's side that the bot is holding: the
    Twilio call sends a ``holding-N`` mark (``bots/twilio/marks.py``)."""
