"""Short spoken prompts the bot plays without the model (the apology, the holding line).

:func:`spoken_prompt_pcm` synthesizes a text once per (text, sample rate) with the local speech
engine (flite via ``stepcall.audio.speech.synthesize``) and keeps it as PCM16. Without any
speech engine a short, soft two-tone chime stands in, so the caller still hears that something
happened. Synthesis blocks: call it off the event loop (``asyncio.to_thread``) or at start-up.
"""

from __future__ import annotations

import functools

import numpy as np
from loguru import logger


def chime_pcm(sample_rate: int) -> bytes:
    """A soft two-tone chime (0.55 s), PCM16 mono at ``sample_rate``."""
    t = np.arange(int(0.25 * sample_rate)) / sample_rate
    env = np.sin(np.pi * t / t[-1]) ** 2
    tones = [0.3 * env * np.sin(2 * np.pi * f * t) for f in (660.0, 440.0)]
    audio = np.concatenate([tones[0], np.zeros(int(0.05 * sample_rate)), tones[1]])
    return (audio * 32767).astype(np.int16).tobytes()


@functools.lru_cache(maxsize=16)
def spoken_prompt_pcm(text: str, sample_rate: int) -> bytes:
    """PCM16 mono at ``sample_rate`` of ``text`` (synthesized on first use, then cached)."""
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    try:
        from stepcall.audio.speech import synthesize

        pcm = synthesize(text, rate=sample_rate)
        return np.asarray(pcm, dtype=np.int16).tobytes()
    except Exception as e:  # no speech engine: a chime is better than silence
        logger.warning(f"cannot synthesize the prompt {text!r} ({e}); using a chime instead")
        return chime_pcm(sample_rate)
