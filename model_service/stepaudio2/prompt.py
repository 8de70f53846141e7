"""Step-Audio 2 prompt builder: chat messages → token ids plus where each audio chunk goes.

Format (no BOS): every turn is ``<|BOT|>{role}\\n{content}<|EOT|>``; roles ``system``,
``tool_json_schemas``, ``human``, ``assistant``, ``input`` (tool result). Each 16 kHz audio chunk
(at most 25 s) in a human turn becomes ``<audio_start>`` + N × ``<audio_patch>`` + ``<audio_end>``
with N = ``mel.audio_token_count(mel_frames)``; audio parts come before the text of the turn. A
spoken reply is requested by ending with ``<|BOT|>assistant\\n<tts_start>``, a text reply with
``<|BOT|>assistant\\n``. Text segments are tokenised separately and concatenated; user text never
turns into special tokens.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from model_service.stepaudio2 import mel as _mel
from model_service.stepaudio2.tokenizer import TOOL_CALL, TOOL_CALL_END, StepAudio2Tokenizer

#: StepFun's instruction appended to tool results in the official examples ("summarise the
#: retrieved results colloquially and answer the user's question briefly").
STEPFUN_SUMMARY_SUFFIX = "\n\n\n请用口语化形式总结检索结果，简短地回答用户的问题。"
#: An English equivalent of ``STEPFUN_SUMMARY_SUFFIX``.
SUMMARY_SUFFIX_EN = (
    "\n\n\nPlease summarise the result conversationally and answer the user's question briefly."
)
#: Audio codes per second of speech (CosyVoice2 S3 tokens, 25 Hz).
CODES_PER_SECOND = 25

ReplyMode = Literal["speech", "text", "none"]


# --------------------------------------------------------------------------- messages
@dataclass(frozen=True)
class TextPart:
    """Text inside a human turn."""

    text: str


@dataclass(frozen=True)
class AudioPart:
    """Audio inside a human turn: a 16 kHz mono float32 waveform, or a precomputed mel.

    A waveform longer than 25 s is split into 25 s chunks (one ``<audio_start>`` block each).
    A precomputed ``mel`` (``[128, T]``, from ``mel.log_mel_spectrogram``) is one chunk and must
    fit the encoder (``T <= mel.MAX_MEL_FRAMES``).
    """

    wav: np.ndarray | None = None
    mel: Any = None

    def __post_init__(self) -> None:
        if (self.wav is None) == (self.mel is None):
            raise ValueError("AudioPart needs exactly one of wav= or mel=")


@dataclass(frozen=True)
class SystemMessage:
    """The system turn (persona, voice, style, date; see ``system_prompt``)."""

    text: str
    role: str = field(default="system", init=False)


@dataclass(frozen=True)
class ToolSchemasMessage:
    """Tool definitions: the OpenAI list ``[{"type": "function", "function": {...}}]``."""

    tools: list[dict[str, Any]]
    role: str = field(default="tool_json_schemas", init=False)


@dataclass(frozen=True)
class HumanMessage:
    """A user turn: text and/or audio parts (audio is always rendered before text)."""

    parts: Sequence[TextPart | AudioPart | str]
    role: str = field(default="human", init=False)

    def __post_init__(self) -> None:
        if isinstance(self.parts, str | TextPart | AudioPart):  # a single part
            object.__setattr__(self, "parts", [self.parts])


@dataclass(frozen=True)
class AssistantMessage:
    """An assistant turn from history.

    Either ``ids``: the exact generated ids of a spoken turn (everything after ``<tts_start>``;
    a trailing stop id is dropped), replayed verbatim as ``<tts_start>`` + ids + ``<|EOT|>``;
    or ``text`` (plus optional ``tool_calls`` as ``(name, arguments)`` pairs) for a text turn.
    """

    text: str | None = None
    ids: Sequence[int] | None = None
    tool_calls: Sequence[tuple[str, dict[str, Any]]] = ()
    role: str = field(default="assistant", init=False)

    def __post_init__(self) -> None:
        if (self.text is None) == (self.ids is None):
            raise ValueError("AssistantMessage needs exactly one of text= or ids=")
        if self.ids is not None and self.tool_calls:
            raise ValueError("AssistantMessage(ids=...) already contains its tool calls")


@dataclass(frozen=True)
class InputMessage:
    """A tool result, rendered as ``<|BOT|>input\\n{result}{suffix}<|EOT|>``.

    ``suffix`` is optional, e.g. ``STEPFUN_SUMMARY_SUFFIX``.
    """

    result: str
    suffix: str = ""
    role: str = field(default="input", init=False)


Message = SystemMessage | ToolSchemasMessage | HumanMessage | AssistantMessage | InputMessage


@dataclass(frozen=True)
class AudioSlot:
    """Where one audio chunk's ``<audio_patch>`` run sits in ``Prompt.ids``.

    ``start`` is the index of the first patch (``<audio_start>`` is at ``start - 1``),
    ``n_patches`` the run length; ``wav`` (16 kHz float32 chunk) or ``mel`` is the audio to
    encode; ``mel_frames`` is its mel length ``T``.
    """

    start: int
    n_patches: int
    mel_frames: int
    wav: np.ndarray | None = None
    mel: Any = None

    @property
    def stop(self) -> int:
        """Index one past the last patch."""
        return self.start + self.n_patches

    def load_mel(self) -> Any:
        """The chunk's log-mel ``[128, T]``: the precomputed one, or computed from ``wav``."""
        if self.mel is not None:
            return self.mel
        return _mel.log_mel_spectrogram(self.wav)


@dataclass
class Prompt:
    """Token ids of a whole prompt plus its audio chunks, in order of appearance."""

    ids: list[int]
    audios: list[AudioSlot]

    @property
    def patch_positions(self) -> list[int]:
        """Indices of every ``<audio_patch>`` in ``ids`` (all chunks, in order)."""
        return [i for slot in self.audios for i in range(slot.start, slot.stop)]

    def mels(self) -> list[Any]:
        """Log-mel ``[128, T]`` of every chunk, in order (computed from waveforms if needed)."""
        return [slot.load_mel() for slot in self.audios]


# --------------------------------------------------------------------------- system prompt
def system_prompt(
    persona: str,
    voice_desc: str | None = None,
    style: str | None = None,
    date: _dt.date | str | None = None,
    tools: bool = False,
) -> str:
    """Compose a system prompt in the official style.

    ``persona``: who the assistant is and what it does. ``voice_desc``: e.g. ``"a calm female
    voice"`` → "Please talk to the user in a calm female voice." ``style``: extra speaking-style
    instructions. ``date``: a date (rendered "Today is 2025-08-29, Friday.") or a ready string.
    ``tools``: add the sentence telling the model it may call the provided tools.
    """
    lines = [persona.strip()]
    if tools:
        lines.append(
            "You can call tools to help the user: based on the user's needs and the context, "
            "decide on your own whether to call one of the tools provided by the system."
        )
    if date is not None:
        if isinstance(date, _dt.date):
            lines.append(f"Today is {date:%Y-%m-%d}, {date:%A}.")
        else:
            lines.append(f"Today is {date.strip()}.")
    if style:
        lines.append(style.strip())
    if voice_desc:
        voice = voice_desc.strip().rstrip(".")
        lines.append(f"Please talk to the user in {voice}.")
    return " ".join(line for line in lines if line)


# --------------------------------------------------------------------------- builder
class PromptBuilder:
    """Renders ``Message`` lists into a ``Prompt`` for one tokenizer.

    ``audio_token_count`` maps mel frames to the patch count (default: ``mel.audio_token_count``,
    the HF formula); ``max_chunk_secs`` is the waveform chunk length (official 25 s);
    ``audio_text_separator`` goes between a turn's audio blocks and its text ("" as in the HF
    path; the vLLM chat path uses "\\n").
    """

    def __init__(
        self,
        tokenizer: StepAudio2Tokenizer,
        audio_token_count: Callable[[int], int] = _mel.audio_token_count,
        max_chunk_secs: float = _mel.MAX_CHUNK_SECS,
        audio_text_separator: str = "",
    ) -> None:
        self.tok = tokenizer
        self.audio_token_count = audio_token_count
        self.max_chunk_secs = max_chunk_secs
        self.audio_text_separator = audio_text_separator

    def build(self, messages: Sequence[Message], reply: ReplyMode = "speech") -> Prompt:
        """Render ``messages`` and, unless ``reply == "none"``, the assistant generation prefix."""
        ids: list[int] = []
        audios: list[AudioSlot] = []
        for index, msg in enumerate(messages):
            try:
                self._render(msg, ids, audios)
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"message {index} ({type(msg).__name__}): {exc}") from exc
        ids.extend(self.generation_prefix(reply))
        return Prompt(ids, audios)

    def generation_prefix(self, reply: ReplyMode = "speech") -> list[int]:
        """``<|BOT|>assistant\\n`` (+ ``<tts_start>`` for speech); empty for ``"none"``."""
        if reply == "none":
            return []
        if reply not in ("speech", "text"):
            raise ValueError(f"reply must be 'speech', 'text' or 'none', got {reply!r}")
        out = [self.tok.ids.bot, *self.tok.encode("assistant\n")]
        if reply == "speech":
            out.append(self.tok.ids.tts_start)
        return out

    # ----------------------------------------------------------------- per role
    def _render(self, msg: Message, ids: list[int], audios: list[AudioSlot]) -> None:
        sp = self.tok.ids
        if isinstance(msg, SystemMessage):
            ids += self._text_turn("system", msg.text)
        elif isinstance(msg, ToolSchemasMessage):
            ids += self._text_turn("tool_json_schemas", json.dumps(msg.tools, ensure_ascii=False))
        elif isinstance(msg, InputMessage):
            ids += self._text_turn("input", msg.result + msg.suffix)
        elif isinstance(msg, HumanMessage):
            self._human(msg, ids, audios)
        elif isinstance(msg, AssistantMessage):
            if msg.ids is not None:
                body = [int(i) for i in msg.ids]
                if body and body[0] == sp.tts_start:
                    body = body[1:]
                if body and body[-1] in self.tok.stop_ids:
                    body = body[:-1]
                ids += [sp.bot, *self.tok.encode("assistant\n"), sp.tts_start, *body, sp.eot]
            else:
                ids += [sp.bot, *self.tok.encode("assistant\n" + (msg.text or ""))]
                for name, arguments in msg.tool_calls:
                    ids += self.tool_call_ids(name, arguments)
                ids.append(sp.eot)
        else:
            raise TypeError(f"unknown message type {type(msg).__name__}")

    def _text_turn(self, role: str, content: str) -> list[int]:
        return [self.tok.ids.bot, *self.tok.encode(f"{role}\n{content}"), self.tok.ids.eot]

    def _human(self, msg: HumanMessage, ids: list[int], audios: list[AudioSlot]) -> None:
        sp = self.tok.ids
        texts: list[str] = []
        audio_parts: list[AudioPart] = []
        for part in msg.parts:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, TextPart):
                texts.append(part.text)
            elif isinstance(part, AudioPart):
                audio_parts.append(part)
            else:
                raise TypeError(f"unknown human part type {type(part).__name__}")
        if not texts and not audio_parts:
            raise ValueError("human message has no parts")
        if not audio_parts:  # one text segment, tokenised like the reference template
            ids += self._text_turn("human", "".join(texts))
            return
        ids += [sp.bot, *self.tok.encode("human\n")]
        for part in audio_parts:
            for slot_audio in self._chunks(part):
                wav, mel_in, frames = slot_audio
                n = int(self.audio_token_count(frames))
                if n < 1:
                    raise ValueError(f"audio chunk too short: {frames} mel frames give {n} patches")
                ids.append(sp.audio_start)
                audios.append(AudioSlot(len(ids), n, frames, wav=wav, mel=mel_in))
                ids.extend([sp.audio_patch] * n)
                ids.append(sp.audio_end)
        text = "".join(texts)
        if text:
            ids += self.tok.encode(self.audio_text_separator + text)
        elif self.audio_text_separator:
            ids += self.tok.encode(self.audio_text_separator)
        ids.append(sp.eot)

    def _chunks(self, part: AudioPart) -> list[tuple[np.ndarray | None, Any, int]]:
        if part.mel is not None:
            shape = tuple(part.mel.shape)
            if len(shape) != 2:
                raise ValueError(f"mel must have shape [n_mels, T], got {shape}")
            frames = int(shape[-1])
            if frames > _mel.MAX_MEL_FRAMES:
                raise ValueError(
                    f"precomputed mel has {frames} frames (> {_mel.MAX_MEL_FRAMES}); "
                    "pass the waveform so it can be split, or split it first"
                )
            return [(None, part.mel, frames)]
        wav = np.asarray(part.wav, dtype=np.float32)
        if wav.ndim != 1:
            raise ValueError(f"audio wav must be mono [samples], got shape {wav.shape}")
        if wav.shape[0] == 0:
            raise ValueError("audio wav is empty")
        return [
            (chunk, None, _mel.mel_frame_count(chunk.shape[0]))
            for chunk in _mel.split_audio(wav, self.max_chunk_secs)
        ]

    # ----------------------------------------------------------------- tool calls
    def tool_call_ids(self, name: str, arguments: dict[str, Any]) -> list[int]:
        """``<tool_call>function\\n{name}\\n{json}</tool_call>`` (markers as specials if any)."""
        body = f"function\n{name}\n{json.dumps(arguments, ensure_ascii=False)}"
        sp = self.tok.ids
        if sp.tool_call is not None and sp.tool_call_end is not None:
            return [sp.tool_call, *self.tok.encode(body), sp.tool_call_end]
        return self.tok.encode(f"{TOOL_CALL}{body}{TOOL_CALL_END}")


def build_prompt(
    tokenizer: StepAudio2Tokenizer, messages: Sequence[Message], reply: ReplyMode = "speech"
) -> Prompt:
    """One-shot ``PromptBuilder(tokenizer).build(messages, reply)``."""
    return PromptBuilder(tokenizer).build(messages, reply)


# --------------------------------------------------------------------------- barge-in
def codes_for_ms(heard_ms: float) -> int:
    """Audio codes covering ``heard_ms`` of played speech (25 codes per second, floored)."""
    return max(0, int(heard_ms * CODES_PER_SECOND // 1000))


def truncate_assistant_ids(
    ids: Sequence[int], heard_codes: int, tokenizer: StepAudio2Tokenizer
) -> list[int]:
    """Cut a generated TA4 turn down to what the user heard (barge-in).

    Keeps the ids up to and including the ``heard_codes``-th valid audio code (pad codes don't
    count; text tokens of kept groups stay), drops the rest, and closes with ``<tts_end>``. If
    every code was heard the turn is kept whole (minus a trailing stop id), with ``<tts_end>``
    appended only if generation never reached it. A leading ``<tts_start>`` is preserved.
    The result is meant for ``AssistantMessage(ids=...)``.
    """
    if heard_codes < 0:
        raise ValueError(f"heard_codes must be >= 0, got {heard_codes}")
    sp = tokenizer.ids
    body = [int(i) for i in ids]
    if body and body[-1] in tokenizer.stop_ids:
        body = body[:-1]
    lo, hi = sp.audio_offset, sp.audio_offset + tokenizer.n_audio_codes
    audio_positions = [i for i, tid in enumerate(body) if lo <= tid < hi]
    if heard_codes >= len(audio_positions):  # everything was heard
        return body if sp.tts_end in body else [*body, sp.tts_end]
    cut = 0 if heard_codes == 0 else audio_positions[heard_codes - 1] + 1
    kept = body[:cut]
    if heard_codes == 0 and body and body[0] == sp.tts_start:
        kept = [sp.tts_start]
    if sp.tts_end in kept:  # the cut lies after <tts_end> (cannot happen for audio, but be safe)
        return kept
    return [*kept, sp.tts_end]


__all__ = [
    "AssistantMessage",
    "AudioPart",
    "AudioSlot",
    "CODES_PER_SECOND",
    "HumanMessage",
    "InputMessage",
    "Message",
    "Prompt",
    "PromptBuilder",
    "STEPFUN_SUMMARY_SUFFIX",
    "SUMMARY_SUFFIX_EN",
    "SystemMessage",
    "TextPart",
    "ToolSchemasMessage",
    "build_prompt",
    "codes_for_ms",
    "system_prompt",
    "truncate_assistant_ids",
]
