"""Call records: what the store keeps about each call (plain dataclasses, no database types).

A call has turns (the caller's and the bot's, in order) and tool calls. Times are UTC
``datetime``s; durations and latencies are milliseconds. Rows are written while the call runs
(see ``bots/records/writer.py``), so a record may be partial: ``ended_at``/``outcome`` stay None
when the server died mid-call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

#: How a call ended.
OUTCOMES = ("completed", "transferred", "caller_hung_up", "error")
#: Who spoke in a turn.
ROLES = ("user", "bot")


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def check_outcome(outcome: str) -> str:
    """``outcome`` if it is one of :data:`OUTCOMES`; ValueError naming it otherwise."""
    if outcome not in OUTCOMES:
        raise ValueError(f"unknown call outcome {outcome!r}: expected one of {', '.join(OUTCOMES)}")
    return outcome


@dataclass
class TurnRecord:
    """One turn of a call.

    User turns: ``text`` is usually None (speech-to-speech has no transcript), ``audio_ms`` is
    the caller's speech duration. Bot turns: ``text`` is what the bot said (TTS/LLM text),
    ``latency_ms`` is end of the caller's speech → first bot audio, ``interrupted`` marks a
    barge-in.
    """

    call_id: str
    seq: int
    role: str
    started_at: datetime
    ended_at: datetime | None = None
    text: str | None = None
    audio_ms: float | None = None
    latency_ms: float | None = None
    interrupted: bool = False


@dataclass
class ToolCallRecord:
    """One function call the model made, with its arguments and result."""

    call_id: str
    tool_call_id: str
    name: str
    arguments: Any
    started_at: datetime
    result: Any = None
    ended_at: datetime | None = None
    error: str | None = None

    @property
    def duration_ms(self) -> float | None:
        """Handler time in ms (None while running)."""
        if self.ended_at is None:
            return None
        return (self.ended_at - self.started_at).total_seconds() * 1000.0


@dataclass
class CallRecord:
    """One call: identity, numbers, times, outcome, and (when loaded in full) turns and tools."""

    call_id: str
    bot: str
    started_at: datetime
    flow: str | None = None
    stream_id: str | None = None
    from_number: str | None = None
    to_number: str | None = None
    ended_at: datetime | None = None
    outcome: str | None = None
    error: str | None = None
    recording_path: str | None = None
    recording_expires_at: datetime | None = None
    #: Committed caller turns that never got an answer (audio or a tool call) from the bot.
    unanswered_turns: int = 0
    #: Holding lines ("One moment, please.") played while the model was slow to answer.
    holding_lines: int = 0
    #: Caller turns re-sent to a new model session after the connection was lost.
    turn_retries: int = 0
    turns: list[TurnRecord] = field(default_factory=list)
    tool_calls: list[ToolCallRecord] = field(default_factory=list)

    @property
    def duration_secs(self) -> float | None:
        """Call length in seconds (None while running or when the record is partial)."""
        if self.ended_at is None:
            return None
        return (self.ended_at - self.started_at).total_seconds()

    @property
    def latencies_ms(self) -> list[float]:
        """Voice-to-voice latencies of the bot's turns, in order."""
        return [t.latency_ms for t in self.turns if t.role == "bot" and t.latency_ms is not None]


#: The per-call counters of :class:`CallRecord` (columns of the ``calls`` table).
CALL_COUNTERS = ("unanswered_turns", "holding_lines", "turn_retries")


@dataclass(frozen=True)
class RecordingPolicy:
    """Whether a flow's calls are recorded (stereo WAV: caller left, bot right) and for how long.

    Off by default. ``retention_days`` after the call ends, :func:`purge_expired_recordings`
    deletes the file.
    """

    enabled: bool = False
    retention_days: float = 30.0

    def __post_init__(self) -> None:
        if self.retention_days <= 0:
            raise ValueError(f"recording retention_days must be > 0, got {self.retention_days}")

    @classmethod
    def from_profile(cls, profile: Any) -> RecordingPolicy:
        """From a bot profile's ``record_audio`` / ``recording_retention_days`` (when present)."""
        enabled = bool(getattr(profile, "record_audio", False))
        days = getattr(profile, "recording_retention_days", None)
        return cls(enabled=enabled, retention_days=float(days) if days else 30.0)
