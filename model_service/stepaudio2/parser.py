"""Incremental parser for Step-Audio 2 output: TA4 text/audio interleaving and tool calls.

A spoken answer is ``<tts_start>`` then groups ``[1 text token, 4 audio tokens]`` (text slot
``<tts_pad>`` once the text runs out, audio slot ``<audio_6561>`` once the audio runs out), then
``<tts_end>``, optionally plain text such as a tool call, then ``<|EOT|>``. A text answer is plain
text then ``<|EOT|>``. ``TA4Parser`` turns generated ids, one at a time, into events:

* ``TextDelta(text)``: complete characters only (a UTF-8 character split across byte-level tokens
  is held back until complete); ``<tts_pad>`` removed; text inside a tool call never appears here;
* ``AudioCodes(codes)``: codes ``id - audio_offset``; the pad code 6561 is dropped;
* ``ToolCall(name, arguments, raw)`` for ``<tool_call>function\\n{name}\\n{json}</tool_call>``
  (markers as special tokens or as plain text);
* ``ToolCallError(raw, message)`` for a malformed call (the parser never raises on model output);
* ``EndOfTurn()`` on ``<|EOT|>`` or another stop id.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from model_service.stepaudio2.tokenizer import TOOL_CALL, TOOL_CALL_END, StepAudio2Tokenizer

_REPLACEMENT = "\ufffd"
# A multi-byte character spans at most 4 byte-level tokens; hold at most this many undecodable
# tokens before giving up and emitting the replacement character.
_MAX_HELD_TOKENS = 6


@dataclass(frozen=True)
class TextDelta:
    """New text from the model (spoken transcript in TA4, or the whole answer in text mode)."""

    text: str


@dataclass(frozen=True)
class AudioCodes:
    """Speech codes (0..6560, 25 Hz) for token2wav, in generation order."""

    codes: list[int]


@dataclass(frozen=True)
class ToolCall:
    """A well-formed tool call: function ``name`` with JSON-object ``arguments``."""

    name: str
    arguments: dict[str, Any]
    raw: str


@dataclass(frozen=True)
class ToolCallError:
    """A tool call the model got wrong; ``raw`` is the body between the markers."""

    raw: str
    message: str


@dataclass(frozen=True)
class EndOfTurn:
    """The model ended its turn (``<|EOT|>`` or an eos id)."""


Event = TextDelta | AudioCodes | ToolCall | ToolCallError | EndOfTurn


def parse_tool_call_body(raw: str) -> ToolCall | ToolCallError:
    """Parse the text between ``<tool_call>`` and ``</tool_call>``.

    Expected ``function\\n{name}\\n{json arguments}``; a JSON object ``{"name":..,
    "arguments":..}`` (Qwen style) is accepted too. Empty arguments mean ``{}``.
    """
    body = raw.strip()
    if body.startswith("{"):
        try:
            obj = json.loads(body)
        except json.JSONDecodeError as exc:
            return ToolCallError(raw, f"tool call is not valid JSON: {exc}")
        name = obj.get("name") if isinstance(obj, dict) else None
        if not isinstance(name, str) or not name.strip():
            return ToolCallError(raw, "tool call has no function name")
        args = obj.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except json.JSONDecodeError as exc:
                return ToolCallError(raw, f"tool call arguments are not valid JSON: {exc}")
        if not isinstance(args, dict):
            return ToolCallError(raw, "tool call arguments are not a JSON object")
        return ToolCall(name.strip(), args, raw)

    if body.startswith("function"):
        body = body[len("function") :]
    body = body.lstrip()
    name, _, args_text = body.partition("\n")
    name = name.strip()
    if not name or name.startswith("{"):
        return ToolCallError(raw, "tool call has no function name")
    args_text = args_text.strip()
    if not args_text:
        return ToolCall(name, {}, raw)
    try:
        args = json.loads(args_text)
    except json.JSONDecodeError as exc:
        return ToolCallError(raw, f"arguments of tool {name!r} are not valid JSON: {exc}")
    if not isinstance(args, dict):
        return ToolCallError(raw, f"arguments of tool {name!r} are not a JSON object")
    return ToolCall(name, args, raw)


class _Detokenizer:
    """Incremental text decoding that only releases complete characters.

    Uses the prefix/read-offset scheme: the delta is ``decode(window + new) - decode(window)``,
    which keeps tokenizer-dependent spacing right, and is held while it ends in U+FFFD (an
    incomplete UTF-8 sequence).
    """

    def __init__(self, tok: StepAudio2Tokenizer) -> None:
        self._tok = tok
        self._ids: list[int] = []
        self._prefix = 0
        self._read = 0

    def push(self, token_id: int) -> str:
        self._ids.append(token_id)
        return self._step(final=False)

    def flush(self) -> str:
        out = self._step(final=True)
        self._ids.clear()
        self._prefix = self._read = 0
        return out

    def _step(self, final: bool) -> str:
        if self._read >= len(self._ids):
            return ""
        prefix_text = self._tok.decode(self._ids[self._prefix : self._read])
        new_text = self._tok.decode(self._ids[self._prefix :])
        held = len(self._ids) - self._read
        if not final and new_text.endswith(_REPLACEMENT) and held < _MAX_HELD_TOKENS:
            return ""
        if len(new_text) <= len(prefix_text) and not final:
            return ""
        delta = new_text[len(prefix_text) :]
        self._prefix = self._read
        self._read = len(self._ids)
        # Keep the decode window short: drop ids no longer needed as context.
        if self._prefix > 0:
            del self._ids[: self._prefix]
            self._read -= self._prefix
            self._prefix = 0
        return delta


class _TextRouter:
    """Splits decoded text into spoken/visible text and tool-call bodies.

    Recognises the plain-text markers ``<tool_call>`` / ``</tool_call>``, even when split across
    deltas (a possible marker prefix at the end of the text is held back).
    """

    def __init__(self) -> None:
        self.in_call = False
        self._pending = ""  # visible text that may be the start of "<tool_call>"
        self._body: list[str] = []

    def feed(self, text: str) -> list[Event]:
        events: list[Event] = []
        buf = self._pending + text
        self._pending = ""
        while buf:
            if self.in_call:
                joined = "".join(self._body) + buf
                idx = joined.find(TOOL_CALL_END)
                if idx < 0:
                    self._body = [joined]
                    return events
                events.append(parse_tool_call_body(joined[:idx]))
                self._body = []
                self.in_call = False
                buf = joined[idx + len(TOOL_CALL_END) :]
                continue
            idx = buf.find(TOOL_CALL)
            if idx >= 0:
                if idx:
                    events.append(TextDelta(buf[:idx]))
                self.in_call = True
                self._body = []
                buf = buf[idx + len(TOOL_CALL) :]
                continue
            keep = _marker_prefix_len(buf, TOOL_CALL)
            if keep:
                self._pending = buf[-keep:]
                buf = buf[:-keep]
            if buf:
                events.append(TextDelta(buf))
            break
        return events

    def open_call(self) -> list[Event]:
        events = self.flush(final=False)
        if self.in_call:
            # A second opener inside an unterminated call: report the first, start afresh.
            events.append(ToolCallError("".join(self._body), "tool call not closed"))
        self.in_call = True
        self._body = []
        return events

    def close_call(self) -> list[Event]:
        if not self.in_call:
            return [ToolCallError("", f"{TOOL_CALL_END} without {TOOL_CALL}")]
        raw = "".join(self._body)
        self.in_call = False
        self._body = []
        return [parse_tool_call_body(raw)]

    def flush(self, final: bool = True) -> list[Event]:
        events: list[Event] = []
        if self._pending:
            events.append(TextDelta(self._pending))
            self._pending = ""
        if final and self.in_call:
            raw = "".join(self._body)
            self.in_call = False
            self._body = []
            parsed = parse_tool_call_body(raw)
            if isinstance(parsed, ToolCall):
                events.append(parsed)
            else:
                events.append(ToolCallError(raw, f"tool call not closed ({parsed.message})"))
        return events


def _marker_prefix_len(text: str, marker: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``marker``."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0


class TA4Parser:
    """Streaming parser of one generated turn; ``feed`` each id, then ``finish``.

    After ``EndOfTurn`` further ids are ignored until ``reset()``.
    """

    def __init__(self, tokenizer: StepAudio2Tokenizer) -> None:
        self.tok = tokenizer
        ids = tokenizer.ids
        self._offset = ids.audio_offset
        self._n_codes = tokenizer.n_audio_codes
        self._stop = tokenizer.stop_ids
        self._skip = {ids.tts_pad, ids.tts_start, ids.tts_end, ids.bot, ids.audio_start,
                      ids.audio_end, ids.audio_patch}
        self._other_specials = tokenizer.special_added_ids
        self._call_open = ids.tool_call
        self._call_close = ids.tool_call_end
        self.reset()

    def reset(self) -> None:
        """Forget all state; ready for a new turn."""
        self._detok = _Detokenizer(self.tok)
        self._router = _TextRouter()
        self.ended = False
        self.in_tts = False

    def feed(self, token_id: int) -> list[Event]:
        """Consume one generated id; return the events it completes (possibly none)."""
        if self.ended:
            return []
        tid = int(token_id)
        if self._offset <= tid < self._offset + self._n_codes + 1:
            code = tid - self._offset
            return [AudioCodes([code])] if code < self._n_codes else []
        if tid in self._stop:
            events = self._flush_text(final=True)
            events.append(EndOfTurn())
            self.ended = True
            return events
        if self._call_open is not None and tid == self._call_open:
            return self._flush_text(final=False) + self._router.open_call()
        if self._call_close is not None and tid == self._call_close:
            return self._flush_text(final=False) + self._router.close_call()
        if tid in self._skip:
            if tid == self.tok.ids.tts_start:
                self.in_tts = True
            elif tid == self.tok.ids.tts_end:
                self.in_tts = False
            return []
        if tid in self._other_specials:
            return []  # e.g. <|im_start|>: control tokens the model should not emit here
        return self._router.feed(self._detok.push(tid))

    def finish(self) -> list[Event]:
        """Flush held text and any unterminated tool call (generation stopped or was cut)."""
        if self.ended:
            return []
        self.ended = True
        return self._flush_text(final=True)

    def _flush_text(self, final: bool) -> list[Event]:
        events = self._router.feed(self._detok.flush())
        return events + self._router.flush(final=final) if final else events

    # ----------------------------------------------------------------- non-streaming
    def parse(self, ids: Iterable[int]) -> list[Event]:
        """Parse a whole id list (fresh state); adjacent text/audio events are merged."""
        self.reset()
        events: list[Event] = []
        for tid in ids:
            events.extend(self.feed(tid))
        events.extend(self.finish())
        return coalesce(events)


def parse(tokenizer: StepAudio2Tokenizer, ids: Iterable[int]) -> list[Event]:
    """Non-streaming parse of a generated turn (see ``TA4Parser.parse``)."""
    return TA4Parser(tokenizer).parse(ids)


def coalesce(events: Iterable[Event]) -> list[Event]:
    """Merge adjacent ``TextDelta``s and adjacent ``AudioCodes``; drop empty text."""
    out: list[Event] = []
    for ev in events:
        if isinstance(ev, TextDelta):
            if not ev.text:
                continue
            if out and isinstance(out[-1], TextDelta):
                out[-1] = TextDelta(out[-1].text + ev.text)
                continue
        elif isinstance(ev, AudioCodes):
            if not ev.codes:
                continue
            if out and isinstance(out[-1], AudioCodes):
                out[-1] = AudioCodes(out[-1].codes + ev.codes)
                continue
        out.append(ev)
    return out


__all__ = [
    "AudioCodes",
    "EndOfTurn",
    "Event",
    "TA4Parser",
    "TextDelta",
    "ToolCall",
    "ToolCallError",
    "coalesce",
    "parse",
    "parse_tool_call_body",
]
