"""Decoding settings: the one type every backend and the reference generator decode with.

A session's settings are the backend defaults with the client's ``session.start`` overrides on
top (:func:`resolve`; the wire's all-optional :class:`stepcall.protocol.Sampling`, where unset
means "the backend's default"). :data:`GREEDY` is what transcripts and equality tests decode
with.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from stepcall import protocol


@dataclass
class SamplingParams:
    """Decoding settings; temperature 0 means greedy."""

    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 0
    repetition_penalty: float = 1.05
    seed: int | None = None
    max_tokens: int = 2048


#: Plain greedy decoding: no temperature, no top-p / top-k cut, no repetition penalty.
GREEDY = SamplingParams(temperature=0.0, top_p=1.0, top_k=0, repetition_penalty=1.0)


def greedy(**changes: object) -> SamplingParams:
    """:data:`GREEDY` with some fields changed (``greedy(temperature=1.0, top_k=2)``)."""
    return replace(GREEDY, **changes)


def resolve(overrides: protocol.Sampling | None, max_tokens: int | None = None) -> SamplingParams:
    """The backend defaults with a session's overrides (``None`` fields keep the default)."""
    sampling = SamplingParams()
    if overrides is not None:
        sampling = replace(sampling, **overrides.model_dump(exclude_none=True))
    if max_tokens is not None:
        sampling = replace(sampling, max_tokens=max_tokens)
    return sampling
