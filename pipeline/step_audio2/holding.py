"""The holding line: what the caller hears when the model is slow to answer ("One moment, please.").

:class:`~pipeline.step_audio2.service.StepAudio2Service` plays it once per response when no bot
audio has come within ``holding_line_secs`` of ``response.create``. Its PCM (PCM16 mono at the
pipeline rate) comes from a :data:`HoldingAudio` provider; :func:`flite_holding_audio` is the
default one (the local speech engine, synthesized once and cached like the apology). A provider
that renders the line in the bot's own voice (the model service) can replace it; one that
returns None plays nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from pipeline.step_audio2.spoken_prompt import spoken_prompt_pcm

DEFAULT_HOLDING_LINE = "One moment, please."

#: Returns the holding line's PCM16 at the pipeline rate (None: play nothing this time).
HoldingAudio = Callable[[], Awaitable[bytes | None]]


def holding_line_pcm(sample_rate: int, text: str = DEFAULT_HOLDING_LINE) -> bytes:
    """PCM16 mono at ``sample_rate`` of ``text`` (synthesized on first use, then cached)."""
    return spoken_prompt_pcm(text, sample_rate)


def flite_holding_audio(sample_rate: int, text: str = DEFAULT_HOLDING_LINE) -> HoldingAudio:
    """The default provider: ``text`` by the local speech engine, synthesized off the event loop
    on first use and cached (a chime when no speech engine is installed)."""

    async def provide() -> bytes | None:
        return await asyncio.to_thread(holding_line_pcm, sample_rate, text)

    return provide


def warm_holding_line(sample_rate: int, text: str = DEFAULT_HOLDING_LINE) -> int:
    """Synthesize and cache the default holding line now (start-up); its length in bytes."""
    return len(holding_line_pcm(sample_rate, text))
