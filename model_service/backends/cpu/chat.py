"""The CPU backend's conversation: a text chat history rendered as a ChatML prompt.

``ChatHistory`` holds what a call has said as plain text turns (the user's turns are Whisper
transcripts), the tool calls awaiting a result, the loop guard streak and what is needed to cut
the latest reply to what the caller heard on barge-in: each spoken sentence and the length of
its audio. ``render_chatml`` writes the Qwen2.5 / SmolLM2 chat format, including Qwen's tool
block in the system turn, ``<tool_call>`` blocks in assistant turns and ``<tool_response>``
turns for results.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from model_service.backends.cpu.text import cut_text_at_fraction
from model_service.backends.responses import PendingToolCall


@dataclass
class ChatTurn:
    """One message: ``role`` is system, user, assistant or tool."""

    role: str
    content: str


@dataclass
class SpokenSentence:
    """A sentence of the latest reply and how long its audio is (ms; None: not voiced yet)."""

    text: str
    audio_ms: float | None = None


@dataclass
class _LastReply:
    index: int
    sentences: list[SpokenSentence]
    tool_blocks: list[str] = field(default_factory=list)
    call_ids: list[str] = field(default_factory=list)


def tool_call_block(name: str, arguments: dict[str, Any]) -> str:
    """How a tool call is written back into an assistant turn (Qwen's format)."""
    payload = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
    return f"<tool_call>\n{payload}\n</tool_call>"


class ChatHistory:
    """One call's text history plus tool-call and barge-in bookkeeping."""

    def __init__(self) -> None:
        self.turns: list[ChatTurn] = []
        self.pending_calls: dict[str, PendingToolCall] = {}
        self.tool_call_streak = 0
        self._last: _LastReply | None = None

    # ----------------------------------------------------------------- user side
    def add_user(self, text: str) -> None:
        if not isinstance(text, str) or not text.strip():
            raise ValueError("a user turn needs non-empty text")
        self.turns.append(ChatTurn("user", text.strip()))
        self.tool_call_streak = 0

    def add_text(self, text: str, role: str = "human") -> None:
        """A text message: ``human`` (DTMF digits, typed text), ``system`` (instructions) or
        ``assistant`` (a bot turn said outside a response, e.g. a pre-rendered greeting)."""
        if not isinstance(text, str) or not text:
            raise ValueError("text must be a non-empty string")
        if role == "human":
            self.add_user(text)
        elif role == "system":
            self.turns.append(ChatTurn("system", text))
        elif role == "assistant":
            # the bot's own turn (e.g. a pre-rendered greeting it played): not a reply barge-in
            # can cut, so it is not the latest reply
            self.turns.append(ChatTurn("assistant", text))
        else:
            raise ValueError(f"role must be 'human', 'system' or 'assistant', got {role!r}")

    # ----------------------------------------------------------------- assistant side
    def add_reply(
        self,
        sentences: Sequence[SpokenSentence],
        calls: Sequence[PendingToolCall] = (),
        *,
        tool_call_attempted: bool = False,
        at: int | None = None,
    ) -> None:
        """Record a reply: its spoken sentences and the tool calls it made.

        ``at``: the history length the prompt was built from, so a user turn committed while
        the reply was generated lands after it.
        """
        blocks = [tool_call_block(c.name, c.arguments) for c in calls]
        index = len(self.turns) if at is None else max(0, min(at, len(self.turns)))
        last = _LastReply(index, list(sentences), blocks, [c.call_id for c in calls])
        self.turns.insert(index, ChatTurn("assistant", self._render_reply(last.sentences, blocks)))
        for c in calls:
            self.pending_calls[c.call_id] = c
        attempted = bool(calls) or tool_call_attempted
        self.tool_call_streak = self.tool_call_streak + 1 if attempted else 0
        self._last = last

    @staticmethod
    def _render_reply(sentences: Sequence[SpokenSentence], blocks: Sequence[str]) -> str:
        spoken = " ".join(s.text for s in sentences if s.text).strip()
        return "\n".join([p for p in [spoken, *blocks] if p])

    def truncate_last_reply(self, heard_ms: float) -> str | None:
        """Barge-in: keep only what the caller heard of the latest reply.

        Whole sentences whose audio ended before ``heard_ms`` stay; the sentence playing at
        ``heard_ms`` is cut at the same fraction of its words; later ones go. Tool calls still
        pending stay (the caller already has them). Returns the kept text (None: no reply yet).
        """
        last = self._last
        if last is None:
            return None
        kept: list[SpokenSentence] = []
        if heard_ms == float("inf"):
            kept = list(last.sentences)
        else:
            t = 0.0
            for s in last.sentences:
                if s.audio_ms is None or heard_ms <= t:
                    break
                if heard_ms >= t + s.audio_ms:
                    kept.append(s)
                    t += s.audio_ms
                    continue
                part = cut_text_at_fraction(s.text, (heard_ms - t) / max(s.audio_ms, 1e-6))
                if part:
                    kept.append(SpokenSentence(part + " ...", heard_ms - t))
                break
        blocks = [b for b, cid in zip(last.tool_blocks, last.call_ids, strict=False)
                  if cid in self.pending_calls]
        text = self._render_reply(kept, blocks)
        self.turns[last.index] = ChatTurn("assistant", text)
        last.sentences = kept
        return text

    def last_reply_text(self) -> str | None:
        if self._last is None:
            return None
        return self.turns[self._last.index].content

    # ----------------------------------------------------------------- tools
    def add_tool_result(self, call_id: str, output: str) -> PendingToolCall:
        call = self.pending_calls.pop(call_id, None)
        if call is None:
            known = ", ".join(sorted(self.pending_calls)) or "none"
            raise ValueError(f"unknown tool call_id {call_id!r} (pending: {known})")
        if not isinstance(output, str):
            raise ValueError(f"tool output for {call_id!r} must be a string")
        self.turns.append(ChatTurn("tool", output))
        return call

    # ----------------------------------------------------------------- context budget
    def drop_oldest(self, n: int) -> None:
        if n <= 0:
            return
        n = min(n, len(self.turns))
        del self.turns[:n]
        if self._last is not None:
            self._last.index -= n
            if self._last.index < 0:
                self._last = None


def normalize_tools(tools: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI-style ``{"type": "function", "function": {...}}`` entries (bare functions wrapped)."""
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise ValueError(f"tool #{i} must be an object, got {type(tool).__name__}")
        fn = tool.get("function", tool)
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise ValueError(f"tool #{i} has no function name: {tool!r}")
        out.append({"type": "function", "function": fn})
    return out


def tool_names(tools: Sequence[dict[str, Any]]) -> set[str]:
    return {t["function"]["name"] for t in normalize_tools(tools)}


def tools_system_block(tools: Sequence[dict[str, Any]]) -> str:
    """The tool instructions Qwen2.5 was trained with, appended to the system turn."""
    lines = "\n".join(json.dumps(t, ensure_ascii=False) for t in normalize_tools(tools))
    return (
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n"
        f"<tools>\n{lines}\n</tools>\n\n"
        "For each function call, return a json object with function name and arguments "
        "within <tool_call></tool_call> XML tags:\n<tool_call>\n"
        '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
    )


def render_chatml(
    system: str,
    turns: Sequence[ChatTurn],
    tools: Sequence[dict[str, Any]] = (),
    instructions: str | None = None,
    tool_rules: str = "",
    closing: str = "",
) -> str:
    """The prompt text, ending with an open assistant turn.

    ``tool_rules`` (only with tools) goes after the tool block, where small models heed it most;
    ``closing`` ends the system turn, after everything else (the facts a small model must not
    get wrong).
    """
    sys_text = system.strip()
    if tools:
        block = tools_system_block(tools)
        if tool_rules:
            block = f"{block}\n\n{tool_rules.strip()}"
        sys_text = f"{sys_text}\n\n{block}" if sys_text else block
    if closing.strip():
        sys_text = f"{sys_text}\n\n{closing.strip()}" if sys_text else closing.strip()
    parts = [f"<|im_start|>system\n{sys_text}<|im_end|>\n"] if sys_text else []
    i = 0
    while i < len(turns):
        turn = turns[i]
        if turn.role == "tool":
            # consecutive tool results share one user turn, as in Qwen's template
            results = []
            while i < len(turns) and turns[i].role == "tool":
                results.append(f"<tool_response>\n{turns[i].content}\n</tool_response>")
                i += 1
            parts.append("<|im_start|>user\n" + "\n".join(results) + "<|im_end|>\n")
            continue
        parts.append(f"<|im_start|>{turn.role}\n{turn.content}<|im_end|>\n")
        i += 1
    if instructions:
        parts.append(f"<|im_start|>system\n{instructions}<|im_end|>\n")
    parts.append("<|im_start|>assistant\n")
    return "".join(parts)


__all__ = [
    "ChatHistory",
    "ChatTurn",
    "SpokenSentence",
    "normalize_tools",
    "render_chatml",
    "tool_call_block",
    "tool_names",
    "tools_system_block",
]
