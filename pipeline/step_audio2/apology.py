"""The cached apology a call plays when the model service is gone (never leave a caller in silence).

The prompt is synthesized once per (text, sample rate) with the local speech engine (flite via
``stepcall.audio.speech.synthesize``) and kept as PCM16; call :func:`warm_apology` at start-up so
the first failure does not wait for synthesis. Without any speech engine a short, soft two-tone
chime is used instead, so the caller still hears that something happened.

:class:`FailurePolicy` says what happens after the apology: end the call or transfer it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from loguru import logger

DEFAULT_APOLOGY = (
    "I'm sorry, we're having technical difficulties right now. Please call back in a few minutes."
)


@dataclass(frozen=True)
class FailurePolicy:
    """What the call does once the model service is lost for good (after the apology).

    Parameters:
        action: ``"end"`` (hang up) or ``"transfer"`` (hand the caller to ``transfer_to``).
        transfer_to: E.164 number or SIP URI for ``"transfer"``.
        text: What the apology says.
    """

    action: str = "end"
    transfer_to: str | None = None
    text: str = DEFAULT_APOLOGY

    def __post_init__(self) -> None:
        if self.action not in ("end", "transfer"):
            raise ValueError(
                f"FailurePolicy.action must be 'end' or 'transfer', got {self.action!r}"
            )
        if self.action == "transfer" and not self.transfer_to:
            raise ValueError("FailurePolicy.action 'transfer' needs transfer_to")


def _chime(sample_rate: int) -> bytes:
    t = np.arange(int(0.25 * sample_rate)) / sample_rate
    env = np.sin(np.pi * t / t[-1]) ** 2
    tones = [0.3 * env * np.sin(2 * np.pi * f * t) for f in (660.0, 440.0)]
    audio = np.concatenate([tones[0], np.zeros(int(0.05 * sample_rate)), tones[1]])
    return (audio * 32767).astype(np.int16).tobytes()


@functools.lru_cache(maxsize=8)
def apology_pcm(sample_rate: int, text: str = DEFAULT_APOLOGY) -> bytes:
    """PCM16 mono at ``sample_rate`` of ``text`` (synthesized on first use, then cached)."""
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    try:
        from stepcall.audio.speech import synthesize

        pcm = synthesize(text, rate=sample_rate)
        return np.asarray(pcm, dtype=np.int16).tobytes()
    except Exception as e:  # no speech engine: a chime is better than silence
        logger.warning(f"cannot synthesize the apology prompt ({e}); using a chime instead")
        return _chime(sample_rate)


def warm_apology(sample_rate: int, text: str = DEFAULT_APOLOGY) -> int:
    """Synthesize and cache the apology now (start-up); returns its length in bytes."""
    return len(apology_pcm(sample_rate, text))
