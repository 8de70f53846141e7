"""Per-session conversation bookkeeping for Step-Audio 2 backends.

``Conversation`` owns what a call has said so far as ``prompt.Message`` objects: the human turns
(audio as precomputed mel chunks, text), the assistant turns as the exact generated ids, tool
results as ``input`` turns. It also tracks the tool calls awaiting a result, the loop guard
(consecutive tool-call responses without user input) and barge-in truncation of the latest
assistant turn. ``UserAudioBuffer`` collects the open user turn's 16 kHz audio and computes the
mel of every finished 25 s chunk while the user is still speaking, so ``commit`` only has to
process the last piece.

Nothing here touches the model: it is plain, synchronous state; the backend decides which
thread calls what.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from model_service.backends.responses import PendingToolCall
from model_service.stepaudio2 import mel as _mel
from model_service.stepaudio2.prompt import (
    AssistantMessage,
    AudioPart,
    HumanMessage,
    InputMessage,
    Message,
    SystemMessage,
    TextPart,
    ToolSchemasMessage,
    codes_for_ms,
    truncate_assistant_ids,
)
from model_service.stepaudio2.tokenizer import StepAudio2Tokenizer

SAMPLE_RATE = _mel.SAMPLE_RATE


class UserAudioBuffer:
    """The open user turn's audio (16 kHz float32), chunked exactly like ``mel.split_audio``.

    A 25 s chunk is final once at least 1 s more audio follows it (``split_audio`` merges a
    shorter tail into the previous chunk), so its mel is computed at that point; ``finish``
    turns the rest into mel chunks. The chunking equals ``split_audio`` on the whole turn.
    """

    def __init__(self, max_chunk_secs: float = _mel.MAX_CHUNK_SECS) -> None:
        self.chunk_samples = int(round(max_chunk_secs * SAMPLE_RATE))
        self._pieces: list[np.ndarray] = []
        self._pending = 0  # samples in self._pieces
        self._mels: list[torch.Tensor] = []  # finished chunks
        self.total_samples = 0

    def completes_chunk(self, n_samples: int) -> bool:
        """Whether appending ``n_samples`` more would finish a 25 s chunk (mel work to do)."""
        return self._pending + n_samples >= self.chunk_samples + SAMPLE_RATE

    @property
    def duration_ms(self) -> float:
        """Milliseconds of audio in the open turn."""
        return self.total_samples * 1000.0 / SAMPLE_RATE

    def append(self, pcm16k: np.ndarray) -> None:
        """Add audio; computes the mel of any 25 s chunk that became final (CPU work)."""
        arr = np.asarray(pcm16k)
        if arr.ndim != 1:
            raise ValueError(f"user audio must be mono [samples], got shape {arr.shape}")
        if arr.dtype == np.int16:
            arr = arr.astype(np.float32) / 32768.0
        arr = arr.astype(np.float32, copy=False)
        if arr.size == 0:
            return
        self._pieces.append(arr.copy())
        self._pending += arr.shape[0]
        self.total_samples += arr.shape[0]
        while self._pending >= self.chunk_samples + SAMPLE_RATE:
            joined = np.concatenate(self._pieces)
            self._mels.append(_mel.log_mel_spectrogram(joined[: self.chunk_samples]))
            rest = joined[self.chunk_samples :]
            self._pieces = [rest]
            self._pending = rest.shape[0]

    def clear(self) -> None:
        """Drop everything."""
        self._pieces = []
        self._pending = 0
        self._mels = []
        self.total_samples = 0

    def finish(self) -> list[torch.Tensor]:
        """Mel chunks ``[128, T]`` of the whole turn (empty if no audio); clears the buffer."""
        mels = list(self._mels)
        if self._pending:
            rest = np.concatenate(self._pieces)
            mels += [_mel.log_mel_spectrogram(c) for c in _mel.split_audio(rest)]
        self.clear()
        return mels


@dataclass
class _LastReply:
    """The most recent assistant turn: where it sits in the history and its full ids."""

    index: int
    ids: list[int]
    call_ids: list[str] = field(default_factory=list)


class Conversation:
    """One call's history (``messages``) plus tool-call and barge-in bookkeeping.

    ``system`` is the composed system prompt and ``tools`` the OpenAI tool list; they are not
    part of ``messages`` and are rendered first by ``prompt_messages``.
    """

    def __init__(self, tokenizer: StepAudio2Tokenizer, tool_result_suffix: str = "") -> None:
        self.tok = tokenizer
        self.tool_result_suffix = tool_result_suffix
        self.messages: list[Message] = []
        self.pending_calls: dict[str, PendingToolCall] = {}
        self.tool_call_streak = 0  # consecutive tool-call responses without user input
        self._last: _LastReply | None = None

    # ----------------------------------------------------------------- user side
    def add_user_audio(self, mels: Sequence[torch.Tensor], text: str = "") -> None:
        """A human turn of precomputed mel chunks (and optional text)."""
        parts: list[Any] = [AudioPart(mel=m) for m in mels]
        if text:
            parts.append(TextPart(text))
        if not parts:
            raise ValueError("a user turn needs audio or text")
        self.messages.append(HumanMessage(parts))
        self.tool_call_streak = 0

    def add_text(self, text: str, role: str = "human") -> None:
        """A text turn: ``human`` (e.g. DTMF digits), ``system`` (flow instructions) or
        ``assistant`` (the bot's own words, e.g. the pre-rendered greeting it played)."""
        if not isinstance(text, str) or not text:
            raise ValueError("text must be a non-empty string")
        if role == "human":
            self.messages.append(HumanMessage([TextPart(text)]))
            self.tool_call_streak = 0
        elif role == "system":
            self.messages.append(SystemMessage(text))
        elif role == "assistant":
            # a text-only assistant turn: the bot said it outside a response (a pre-rendered
            # greeting); the next reply continues after it
            self.messages.append(AssistantMessage(text=text))
        else:
            raise ValueError(f"role must be 'human', 'system' or 'assistant', got {role!r}")

    # ----------------------------------------------------------------- assistant side
    def add_reply(
        self,
        ids: Sequence[int],
        tool_calls: Sequence[PendingToolCall] = (),
        tool_call_attempted: bool = False,
        at: int | None = None,
    ) -> None:
        """Record a generated spoken turn (exact ids after ``<tts_start>``) and its tool calls.

        ``tool_call_attempted``: the model tried a call that was refused (loop guard, bad call);
        it still counts towards ``tool_call_streak`` so the guard stays on until user input.
        ``at``: history position (the length of the history the prompt was built from), so a
        user turn committed while the reply was generated lands after the reply.
        """
        body = [int(i) for i in ids]
        if body and body[-1] in self.tok.stop_ids:
            body = body[:-1]
        index = len(self.messages) if at is None else max(0, min(at, len(self.messages)))
        self.messages.insert(index, AssistantMessage(ids=body))
        for call in tool_calls:
            self.pending_calls[call.call_id] = call
        attempted = bool(tool_calls) or tool_call_attempted
        self.tool_call_streak = self.tool_call_streak + 1 if attempted else 0
        self._last = _LastReply(index, body, [c.call_id for c in tool_calls])

    def truncate_last_reply(self, heard_ms: float) -> list[int] | None:
        """Barge-in: cut the latest assistant turn to the first ``heard_ms`` of its audio.

        Returns the kept ids, or None when there is no assistant turn yet. The latest reply
        stays the target even after a user turn was added (the caller may barge in after the
        turn was committed). Tool calls still pending keep their call text.
        """
        if self._last is None:
            return None
        ids = self._last.ids
        heard = codes_for_ms(heard_ms) if heard_ms != float("inf") else len(ids)
        kept = truncate_assistant_ids(ids, heard, self.tok)
        tts_end = self.tok.ids.tts_end
        pending = [c for c in self._last.call_ids if c in self.pending_calls]
        if pending and tts_end in ids and kept and kept[-1] == tts_end:
            # The caller already has these tool calls: keep the text after <tts_end> (the calls)
            # so their results still make sense; only the spoken part is cut.
            kept = kept + ids[ids.index(tts_end) + 1 :]
        self.messages[self._last.index] = AssistantMessage(ids=kept)
        return kept

    def last_reply_ids(self) -> list[int] | None:
        """Ids of the latest assistant turn as stored in the history (None if none)."""
        if self._last is None:
            return None
        msg = self.messages[self._last.index]
        assert isinstance(msg, AssistantMessage) and msg.ids is not None
        return list(msg.ids)

    # ----------------------------------------------------------------- context budget
    def drop_oldest(self, n: int) -> None:
        """Forget the ``n`` oldest history messages (context-length budget)."""
        if n <= 0:
            return
        n = min(n, len(self.messages))
        del self.messages[:n]
        if self._last is not None:
            self._last.index -= n
            if self._last.index < 0:
                self._last = None

    # ----------------------------------------------------------------- tools
    def add_tool_result(self, call_id: str, output: str) -> PendingToolCall:
        """The result of a pending call becomes an ``input`` turn; unknown ids raise ValueError."""
        call = self.pending_calls.pop(call_id, None)
        if call is None:
            known = ", ".join(sorted(self.pending_calls)) or "none"
            raise ValueError(f"unknown tool call_id {call_id!r} (pending: {known})")
        if not isinstance(output, str):
            raise ValueError(f"tool output for {call_id!r} must be a string")
        self.messages.append(InputMessage(output, suffix=self.tool_result_suffix))
        return call

    # ----------------------------------------------------------------- rendering
    def prompt_messages(
        self, system: str, tools: Sequence[dict[str, Any]], instructions: str | None = None
    ) -> list[Message]:
        """System turn, tools turn, history, then one-shot ``instructions`` as a system turn."""
        out: list[Message] = []
        if system:
            out.append(SystemMessage(system))
        if tools:
            out.append(ToolSchemasMessage(list(tools)))
        out.extend(self.messages)
        if instructions:
            out.append(SystemMessage(instructions))
        return out
