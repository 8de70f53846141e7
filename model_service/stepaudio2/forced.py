"""Forced TA4 decoding: Step-Audio 2 speaks a given text verbatim (``render_speech``).

A spoken turn after ``<tts_start>`` is groups of ``[1 text token, 4 audio tokens]`` (see
``parser.py``). ``ForcedSpeech`` fixes every text slot to the text's own token ids (then
``<tts_pad>`` once they run out) and leaves the model only the audio slots, restricted to real
audio codes. After the text, each group starts with the model's choice between ``<tts_pad>``
(more audio) and ``<tts_end>`` (done), for at most ``max_pad_groups`` groups; then ``<tts_end>``
and the end of turn are forced.

``allowed(generated)`` is the constraint for the next token given the ids generated so far
(after ``<tts_start>``): an ``int`` (forced), a ``range`` or a set of ids (the model picks among
them), or None once the render is complete. It is a pure function of ``generated``, so the
reference ``Generator`` (its ``forced`` hook) and the vLLM rounds share it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from model_service.stepaudio2.tokenizer import N_AUDIO_CODES, StepAudio2Tokenizer

#: Audio slots per TA4 group (one text token, then this many audio tokens).
AUDIO_PER_GROUP = 4


def default_pad_groups(n_text: int) -> int:
    """How many ``<tts_pad>`` groups a render of ``n_text`` text tokens may add (TA4 text runs
    ahead of its audio; 4 codes are 160 ms, so a few groups finish the last words)."""
    return max(8, min(64, n_text))


@dataclass(frozen=True)
class ForcedSpeech:
    """The slot constraints of one verbatim render (see the module docstring)."""

    text_ids: tuple[int, ...]
    tts_pad: int
    tts_end: int
    eot: int
    audio: range
    max_pad_groups: int

    @classmethod
    def for_text(
        cls, tok: StepAudio2Tokenizer, text: str, max_pad_groups: int | None = None
    ) -> ForcedSpeech:
        ids = tuple(int(i) for i in tok.encode(text))
        if not ids:
            raise ValueError("nothing to say: the text has no tokens")
        sp = tok.ids
        return cls(
            text_ids=ids,
            tts_pad=sp.tts_pad,
            tts_end=sp.tts_end,
            eot=sp.eot,
            # real codes only: the audio pad code (N_AUDIO_CODES) would leave a gap mid-speech
            audio=range(tok.audio_offset, tok.audio_offset + N_AUDIO_CODES),
            max_pad_groups=default_pad_groups(len(ids)) if max_pad_groups is None else max_pad_groups,
        )

    @property
    def max_tokens(self) -> int:
        """Upper bound of the generated length: every group, ``<tts_end>`` and the end of turn."""
        return (len(self.text_ids) + self.max_pad_groups) * (1 + AUDIO_PER_GROUP) + 2

    def allowed(self, generated: Sequence[int]) -> int | range | frozenset[int] | None:
        """The constraint on the next token after ``generated`` (ids after ``<tts_start>``)."""
        n = len(generated)
        if n and generated[-1] == self.eot:
            return None
        if n and generated[-1] == self.tts_end:
            return self.eot
        group, slot = divmod(n, 1 + AUDIO_PER_GROUP)
        if slot:
            return self.audio
        if group < len(self.text_ids):
            return self.text_ids[group]
        if group - len(self.text_ids) >= self.max_pad_groups:
            return self.tts_end
        return frozenset((self.tts_pad, self.tts_end))

    def run_length(self, generated: Sequence[int]) -> int:
        """How many next tokens share the constraint ``allowed(generated)`` (the rest of a
        group's audio slots; 1 otherwise): the size of one vLLM round."""
        slot = len(generated) % (1 + AUDIO_PER_GROUP)
        if slot and not (generated and generated[-1] in (self.tts_end, self.eot)):
            return 1 + AUDIO_PER_GROUP - slot
        return 1

    def check(self, generated: Sequence[int]) -> None:
        """Raise when ``generated`` breaks the layout (an engine that ignored a constraint)."""
        for i in range(len(generated)):
            want = self.allowed(generated[:i])
            got = generated[i]
            ok = (
                want is not None
                and (got == want if isinstance(want, int) else got in want)
            )
            if not ok:
                raise RuntimeError(f"forced render: token {i} is {got}, expected {want!r}")
        if not generated or generated[-1] != self.eot:
            raise RuntimeError("forced render ended before the end of turn")

    def codes(self, generated: Sequence[int]) -> list[int]:
        """The audio codes of a render (in order)."""
        lo = self.audio.start
        return [t - lo for t in generated if t in self.audio]


__all__ = ["AUDIO_PER_GROUP", "ForcedSpeech", "default_pad_groups"]
