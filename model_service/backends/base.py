"""The interface every model-service backend implements (reference, vllm, cpu).

The server (``model_service/server.py``) owns the WebSocket, the protocol and resampling to the
client's rates; a backend owns the model and one conversation per session. Audio crosses this
boundary as float32 mono numpy arrays: user audio at 16 kHz in, bot audio at 24 kHz out.
CPU/GPU-heavy work must run off the event loop (executor threads or the engine's own loop).
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from model_service.sampling import SamplingParams

INPUT_RATE = 16000  # user audio rate a backend receives
OUTPUT_RATE = 24000  # bot audio rate a backend produces


@dataclass
class SessionConfig:
    """What a session knows about its call: persona, voice, style, tools."""

    call_id: str = ""
    system_prompt: str = ""
    voice: str | None = None
    style: str | None = None
    tools: list[dict[str, Any]] = field(default_factory=list)
    sampling: SamplingParams = field(default_factory=SamplingParams)
    #: Keep what is needed to transcribe committed user turns (``take_transcripts``).
    input_transcription: bool = False


@dataclass
class TextDelta:
    """Text the bot speaks (the TA4 text stream)."""

    text: str


@dataclass
class AudioChunk:
    """Bot audio, float32 mono at ``OUTPUT_RATE``."""

    pcm: np.ndarray


@dataclass
class ToolCallEvent:
    """The model called a tool; the response ends after it."""

    call_id: str
    name: str
    arguments: dict[str, Any]


@dataclass
class ResponseError:
    """A non-fatal problem inside a response (e.g. malformed tool-call JSON)."""

    code: str
    message: str


@dataclass
class ResponseTimings:
    """Milliseconds from the response request to each milestone (None if not reached)."""

    queue_ms: float | None = None
    prefill_ms: float | None = None
    first_code_ms: float | None = None
    first_audio_ms: float | None = None
    total_ms: float | None = None


@dataclass
class ResponseDone:
    """End of a response."""

    status: str  # completed | cancelled | tool_call | error
    text: str = ""
    audio_ms: float = 0.0
    timings: ResponseTimings = field(default_factory=ResponseTimings)
    prompt_tokens: int = 0
    completion_tokens: int = 0


BackendEvent = TextDelta | AudioChunk | ToolCallEvent | ResponseError | ResponseDone


class BackendSession(abc.ABC):
    """One call's conversation inside a backend."""

    @abc.abstractmethod
    async def append_audio(self, pcm16k: np.ndarray) -> None:
        """Append user audio (float32, 16 kHz) to the open user turn, while the user speaks."""

    @abc.abstractmethod
    async def clear_audio(self) -> None:
        """Drop the uncommitted user audio."""

    @abc.abstractmethod
    async def commit(self) -> None:
        """Close the user turn: its audio becomes a human message in the history."""

    @abc.abstractmethod
    async def append_text(self, text: str, role: str = "human") -> None:
        """Add a text message (DTMF digits, flow instructions) to the history."""

    @abc.abstractmethod
    def respond(self, instructions: str | None = None) -> AsyncIterator[BackendEvent]:
        """Generate a reply; yields events and ends with exactly one ``ResponseDone``."""

    @abc.abstractmethod
    async def cancel(self, heard_ms: float | None = None) -> None:
        """Stop the running response; keep only what the caller heard in the history."""

    @abc.abstractmethod
    async def add_tool_result(self, call_id: str, output: str) -> None:
        """Record a tool result (the next ``respond`` uses it)."""

    @abc.abstractmethod
    async def update(self, config: SessionConfig) -> None:
        """Change persona, voice, style or tools mid-call."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Free everything the session holds."""

    async def take_transcripts(self) -> list[str]:
        """Text of the user turns committed since the last call, in commit order.

        Only asked when the session was opened with ``input_transcription``. A backend that
        cannot transcribe returns ``[]`` (the default); one that can returns one string per
        committed turn ("" when nothing intelligible was said); it takes the pending turns
        before its first ``await``. Called between responses, so the work never delays a reply.
        """
        return []


class SpeechUnsupported(Exception):
    """The backend cannot render text as speech (``Backend.render_speech``)."""


class Backend(abc.ABC):
    """A loaded model that serves many sessions."""

    name: str = "base"
    model_name: str = ""

    @abc.abstractmethod
    async def open_session(self, config: SessionConfig) -> BackendSession:
        """Create a session (admission control is the server's job)."""

    async def render_speech(
        self, text: str, *, voice: str | None = None, style: str | None = None
    ) -> np.ndarray:
        """``text`` spoken verbatim in ``voice`` (and ``style`` where the backend has styles):
        float32 mono at ``OUTPUT_RATE``. A greeting or holding line rendered once and cached by
        the server (``POST /v1/speech``). Heavy work runs off the event loop.

        Raises ``SpeechUnsupported`` when the backend cannot speak (the default), ``ValueError``
        for input it refuses (e.g. an unknown voice).
        """
        raise SpeechUnsupported(f"the {self.name} backend cannot render speech")

    def failure(self) -> str | None:
        """Why this backend can no longer serve (e.g. its engine process died), else None.

        The server answers ``/readyz`` 503 with this reason and ends the process non-zero.
        """
        return None

    async def close(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Release the model."""
