"""The cached apology a call plays when the model service is gone (never leave a caller in silence).

The prompt is synthesized once per (text, sample rate) with the local speech engine and kept as
PCM16 (``pipeline.step_audio2.spoken_prompt``, shared with the holding line); call
:func:`warm_apology` at start-up so the first failure does not wait for synthesis. Without any speech engine a short, soft two-tone
chime is used instead, so the caller still hears that something happened.

:class:`FailurePolicy` says what happens after the apology: end the call or transfer it.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.step_audio2.spoken_prompt import spoken_prompt_pcm

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


def apology_pcm(sample_rate: int, text: str = DEFAULT_APOLOGY) -> bytes:
    """PCM16 mono at ``sample_rate`` of ``text`` (synthesized on first use, then cached)."""
    return spoken_prompt_pcm(text, sample_rate)


def warm_apology(sample_rate: int, text: str = DEFAULT_APOLOGY) -> int:
    """Synthesize and cache the apology now (start-up); returns its length in bytes."""
    return len(apology_pcm(sample_rate, text))
