"""Streaming text helpers for the CPU cascade: tool-call extraction and sentence splitting.

The LLM streams text pieces. ``ToolCallExtractor`` separates what the bot says from Qwen-style
``<tool_call>{json}</tool_call>`` blocks (a tag may be split across pieces). ``SentenceSplitter``
cuts the spoken text into sentences as soon as each one ends, so TTS can start on the first
sentence while the LLM still writes the second. ``speakable`` strips markdown the voice would
otherwise read out.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

OPEN_TAG = "<tool_call>"
CLOSE_TAG = "</tool_call>"


@dataclass
class SpokenText:
    """Text outside tool-call blocks (what the bot says)."""

    text: str


@dataclass
class ParsedToolCall:
    """A complete, well-formed tool call."""

    name: str
    arguments: dict[str, Any]
    raw: str


@dataclass
class BadToolCall:
    """A tool-call block whose JSON could not be used."""

    message: str
    raw: str


ExtractEvent = SpokenText | ParsedToolCall | BadToolCall


def parse_tool_call(body: str) -> ParsedToolCall | BadToolCall:
    """Parse the JSON inside one ``<tool_call>`` block: ``{"name": ..., "arguments": {...}}``."""
    raw = body.strip()
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as e:
        return BadToolCall(f"tool call is not valid JSON ({e.msg} at char {e.pos}): {raw!r}", raw)
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
        return BadToolCall(f"tool call JSON has no string 'name': {raw!r}", raw)
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):  # some models double-encode the arguments
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            return BadToolCall(f"tool call 'arguments' is not a JSON object: {args!r}", raw)
    if args is None:
        args = {}
    if not isinstance(args, dict):
        return BadToolCall(f"tool call 'arguments' must be an object, got {type(args).__name__}", raw)
    return ParsedToolCall(obj["name"], args, raw)


#: Tags small models wrap a call in: Qwen's own, and look-alikes Qwen2.5-1.5B also writes.
CALL_TAGS = {OPEN_TAG: CLOSE_TAG, "<tools>": "</tools>", "<function_call>": "</function_call>"}


def _partial_tag_suffix(text: str, tags: Sequence[str]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of one of ``tags``."""
    best = 0
    for tag in tags:
        for n in range(min(len(tag) - 1, len(text)), best, -1):
            if text.endswith(tag[:n]):
                best = n
                break
    return best


def _json_object_end(text: str) -> int | None:
    """Index just past the JSON object ``text`` starts with, once its braces balance."""
    depth = 0
    in_str = False
    escaped = False
    for i, ch in enumerate(text):
        if in_str:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i + 1
    return None


class ToolCallExtractor:
    """Splits a streamed reply into spoken text and tool-call blocks.

    A call is ``<tool_call>{json}</tool_call>`` (also ``<tools>`` / ``<function_call>``, which
    small models write by mistake), or a bare ``{"name": ..., "arguments": ...}`` object that
    opens the reply. Tags split across pieces are held back until they are certain.
    """

    def __init__(self) -> None:
        self._buf = ""
        self._close: str | None = None  # closing tag of the open call block
        self._bare = False  # inside a bare JSON object at the start of the reply
        self._started = False  # anything but whitespace seen

    def feed(self, piece: str) -> list[ExtractEvent]:
        """Consume one streamed piece; returns what became certain."""
        self._buf += piece
        out: list[ExtractEvent] = []
        while True:
            if self._close is not None:
                end = self._buf.find(self._close)
                if end < 0:
                    return out
                out.append(parse_tool_call(self._buf[:end]))
                self._buf = self._buf[end + len(self._close) :]
                self._close = None
                continue
            if not self._started:
                stripped = self._buf.lstrip()
                if not stripped:
                    return out
                self._started = True
                if stripped.startswith("{"):
                    self._bare = True
                    self._buf = stripped
            if self._bare:
                end = _json_object_end(self._buf)
                if end is None:
                    return out
                body, self._buf = self._buf[:end], self._buf[end:]
                self._bare = False
                out.append(self._bare_call(body))
                continue
            hits = [(self._buf.find(t), t) for t in CALL_TAGS if t in self._buf]
            if hits:
                start, tag = min(hits)
                if start:
                    out.append(SpokenText(self._buf[:start]))
                self._buf = self._buf[start + len(tag) :]
                self._close = CALL_TAGS[tag]
                continue
            keep = _partial_tag_suffix(self._buf, list(CALL_TAGS))
            text = self._buf[: len(self._buf) - keep]
            if text:
                out.append(SpokenText(text))
            self._buf = self._buf[len(self._buf) - keep :]
            return out

    @staticmethod
    def _bare_call(body: str) -> ExtractEvent:
        parsed = parse_tool_call(body)
        if isinstance(parsed, BadToolCall) and "name" not in body:
            return SpokenText(body)  # just braces in speech, not a call
        return parsed

    def finish(self) -> list[ExtractEvent]:
        """End of stream: an unterminated call is parsed as it is (a closing tag may be
        missing when the model stopped right after the JSON); leftover text is spoken."""
        out: list[ExtractEvent] = []
        if self._close is not None or self._bare:
            body = self._buf.strip()
            if body:
                out.append(parse_tool_call(body))
        elif self._buf:
            out.append(SpokenText(self._buf))
        self._buf = ""
        self._close = None
        self._bare = False
        return out


_SENTENCE_END = re.compile(r"[.!?;:…]+[\"')\]]*(?=\s)|\n+")
#: Words ending in a dot that do not end a sentence ("p.m.", "Dr.", "e.g.").
_ABBREVIATION = re.compile(
    r"(?:\b(?:[A-Za-z]\.)+[A-Za-z]?|\b(?:Mr|Mrs|Ms|Dr|St|Jr|Sr|vs|etc|No|approx))\.$"
)


class SentenceSplitter:
    """Accumulates streamed text and hands out whole sentences as soon as they end.

    A sentence ends at ``.``/``!``/``?``/``;``/``:`` followed by whitespace, or at a newline.
    Pieces shorter than ``min_chars`` are joined with the next sentence so the voice does not
    speak single words with pauses between them (the first sentence uses ``first_min_chars``,
    kept small so the first audio comes early; before any sentence has ended, a comma after at
    least ``first_clause_chars`` characters also ends the first piece, and with ``first_words``
    the first piece goes out once it has that many words, punctuation or not).
    """

    def __init__(
        self,
        min_chars: int = 24,
        first_min_chars: int = 8,
        first_clause_chars: int = 20,
        first_words: int = 0,
    ) -> None:
        self.min_chars = min_chars
        self.first_min_chars = first_min_chars
        self.first_clause_chars = first_clause_chars
        self.first_words = first_words
        self._buf = ""
        self._emitted = 0

    def feed(self, text: str) -> list[str]:
        self._buf += text
        out: list[str] = []
        start = 0
        for m in _SENTENCE_END.finditer(self._buf):
            candidate = self._buf[start : m.end()]
            if m.group().startswith(".") and _ABBREVIATION.search(candidate.rstrip("\"')]")):
                continue
            need = self.first_min_chars if self._emitted == 0 and not out else self.min_chars
            if len(candidate.strip()) < need:
                continue
            out.append(candidate.strip())
            start = m.end()
        if self._emitted == 0 and not out and self.first_clause_chars:
            # Nothing finished yet: let the first audio start at a comma of a long clause.
            cut = self._buf.rfind(", ", 0)
            if cut >= self.first_clause_chars:
                out.append(self._buf[: cut + 1].strip())
                start = cut + 2
            elif self.first_words and len(self._buf.split()) > self.first_words:
                # Still no clause: the first ``first_words`` words go out alone (the word after
                # them has begun, so they are complete).
                cut = self._buf.rstrip().rfind(" ")
                out.append(self._buf[:cut].strip())
                start = cut + 1
        self._buf = self._buf[start:]
        self._emitted += len(out)
        return [s for s in out if s]

    def finish(self) -> list[str]:
        rest = self._buf.strip()
        self._buf = ""
        if rest:
            self._emitted += 1
            return [rest]
        return []


_MARKDOWN = re.compile(r"[*_`#>|~]+")
_LIST_BULLET = re.compile(r"^\s*(?:[-•]|\d+[.)])\s+", re.MULTILINE)
_URL = re.compile(r"https?://\S+")


def speakable(text: str) -> str:
    """Text as the voice should read it: no markdown marks, bullets or bare URLs."""
    text = _URL.sub("", text)
    text = _LIST_BULLET.sub("", text)
    text = _MARKDOWN.sub("", text)
    return re.sub(r"\s+", " ", text).strip()


def cut_text_at_fraction(text: str, fraction: float) -> str:
    """The first ``fraction`` of ``text``, rounded down to a whole word (barge-in truncation)."""
    if fraction >= 1.0:
        return text
    if fraction <= 0.0:
        return ""
    n = int(len(text) * fraction)
    cut = text[:n]
    if n < len(text) and not text[n].isspace():
        cut = cut.rsplit(" ", 1)[0] if " " in cut else ""
    return cut.rstrip()


__all__ = [
    "BadToolCall",
    "ParsedToolCall",
    "SentenceSplitter",
    "SpokenText",
    "ToolCallExtractor",
    "cut_text_at_fraction",
    "parse_tool_call",
    "day_facts",
    "speakable",
]


# ------------------------------------------------------------------------------ day ranges
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_DAY_RANGE = re.compile(
    r"\b(" + "|".join(DAYS) + r")s?\s*(?:to|through|until|till|-|–)\s*(" + "|".join(DAYS) + r")s?\b",
    re.IGNORECASE,
)


def _join(names: list[str], word: str) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} {word} {names[-1]}"


def day_facts(text: str) -> str:
    """The open and closed days of ``text``'s weekday ranges ("open Monday to Friday"), spelled
    out, with one worked answer about a closed day; "" when ``text`` has no range (or one
    preceded by "closed").

    Why: Qwen2.5-1.5B reads "open Monday to Friday" in a persona as open on Saturday too
    (measured: "Yes, we are open on Saturdays" in 4-7 of 8 samples at temperature 0.3, also with
    the days listed inline). Days listed as open/closed at the end of the system turn with a
    worked answer brought that to 1 of 6 on Saturday and on Sunday, and kept "yes" on the open
    days (6 of 6). The backend puts this text last in the system turn (after the tool rules),
    where a small model heeds it most."""
    text = text or ""
    open_days: set[str] = set()
    first: str | None = None
    for m in _DAY_RANGE.finditer(text):
        if re.search(r"\bclosed\W+(?:\w+\W+)?$", text[max(0, m.start() - 20) : m.start()], re.I):
            continue
        lo = DAYS.index(m.group(1).capitalize())
        hi = DAYS.index(m.group(2).capitalize())
        open_days.update(DAYS[(lo + i) % 7] for i in range(((hi - lo) % 7) + 1))
        first = first or f"{DAYS[lo]} to {DAYS[hi]}"
    if not open_days:
        return ""
    opened = [d for d in DAYS if d in open_days]
    closed = [d for d in DAYS if d not in open_days]
    if not closed:
        return f"Open days: every day ({_join(opened, 'and')})."
    return (
        f"Open days: {_join(opened, 'and')}. Closed days: {_join(closed, 'and')}.\n"
        f'Example: asked "Are you open on {closed[0]}?", answer "No, sorry, we are closed on '
        f'{closed[0]}; we are open {first}."'
    )
