"""Replaying the conversation so far into a new model session (after a reconnect).

A new model session starts with the persona and tools only. :func:`replay_conversation` gives it
what the call's Pipecat context holds: instructions (system/developer) as system text, the
caller's turns that have a transcript as human text, the bot's own turns through
:func:`replay_assistant_line` and tool calls and results as system notes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, Protocol


class TextSink(Protocol):
    """What history is replayed into (``ModelServiceClient.append_text``)."""

    async def append_text(self, text: str, role: str = "human") -> None:
        """A text message into the history."""


def message_text(content: Any) -> str:
    """The text of a context message's content (a string or a list of OpenAI content parts)."""
    if isinstance(content, str):
        return content.strip()
    if isinstance(content, list):
        parts = [
            str(p.get("text", ""))
            for p in content
            if isinstance(p, dict) and p.get("type") == "text"
        ]
        return " ".join(p.strip() for p in parts if p.strip())
    return ""


async def replay_assistant_line(sink: TextSink, text: str) -> None:
    """What the bot said earlier in the call, into a new session: the bot's own text turn
    (``input_text.append`` role ``assistant``)."""
    await sink.append_text(text, "assistant")


async def replay_conversation(sink: TextSink, messages: Iterable[Any]) -> int:
    """Send ``messages`` (Pipecat context messages, OpenAI format) to ``sink``; how many went."""
    sent = 0
    for message in messages:
        if not isinstance(message, dict):
            continue  # provider-specific messages: nothing the model service reads
        role = message.get("role")
        text = message_text(message.get("content"))
        if role in ("system", "developer") and text:
            await sink.append_text(text, "system")
        elif role == "user" and text:
            await sink.append_text(text, "human")
        elif role == "assistant":
            if text:
                await replay_assistant_line(sink, text)
            for call in message.get("tool_calls") or []:
                fn = call.get("function") or {}
                await sink.append_text(
                    f"Earlier in this call you called the tool {fn.get('name')} with "
                    f"{fn.get('arguments') or '{}'}.",
                    "system",
                )
                sent += 1
            if not text:
                continue
        elif role == "tool":
            content = message.get("content")
            out = content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)
            await sink.append_text(f"The tool returned: {out}", "system")
        else:
            continue
        sent += 1
    return sent
