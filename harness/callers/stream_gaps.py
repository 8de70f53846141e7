"""Audio underruns in the bot's media stream, measured on the caller's side of a call.

A phone plays the bot's audio in real time from a small jitter buffer. When the bot's stream
falls behind real time by more than that buffer while a response is playing, the caller hears a
gap: an *underrun*. This module replays the arrival times of the bot's ``media`` messages
(``CallResult.bot_media``) through such a playout buffer:

- the stream is cut into responses at each ``mark`` the bot sends after a response's last audio
  and at each ``clear`` (barge-in), so the pause between two responses is not a gap. A cut falls
  between the media messages received before and after it (``after_media``, the count of media
  received when it arrived): arrival times alone cannot order a ``media`` and a ``clear`` read
  in the same event-loop tick;
- within a response, playout starts ``jitter_ms`` after its first audio arrives and drains 8
  bytes of mu-law per millisecond; an arrival after the buffer ran dry is an underrun of
  ``arrival - dry_at`` ms, and playout resumes with the new audio (no re-buffering).

The arrival times come from the caller's event loop, so a caller process that is itself late
inflates them: read them next to ``CallResult.max_send_lag_ms``.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field

from harness.callers.twilio_client import CallResult

BYTES_PER_MS = 8.0  # mu-law at 8 kHz
DEFAULT_JITTER_MS = 60.0


@dataclass
class Underrun:
    """One gap in a response's playout."""

    at_ms: float  # call clock: when the buffer ran dry
    gap_ms: float
    into_ms: float = 0.0  # response audio that had arrived before the gap (where it fell)


@dataclass
class StreamReport:
    """Underruns of one call's bot stream."""

    jitter_ms: float
    responses: int = 0  # response segments with audio
    audio_ms: float = 0.0  # bot audio received in those segments
    underruns: list[Underrun] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.underruns)

    @property
    def gap_ms_total(self) -> float:
        return sum(u.gap_ms for u in self.underruns)

    @property
    def worst_gap_ms(self) -> float:
        return max((u.gap_ms for u in self.underruns), default=0.0)

    def count_within(self, into_ms: float) -> int:
        """Underruns in the first ``into_ms`` of their response (a slow start, not a stall)."""
        return sum(1 for u in self.underruns if u.into_ms < into_ms)


def _boundaries(result: CallResult) -> list[int]:
    """Where responses end, as media indices: a cut before ``bot_media[i]`` is ``i``.

    Events logged with ``after_media`` (the caller simulator's) are placed exactly; others
    (older records) by time: before the first media received at or after them.
    """
    times = [t for t, _n, _a in result.bot_media]
    cuts = []
    for e in result.events:
        if e.get("dir") != "in" or e.get("event") not in ("mark", "clear"):
            continue
        if "after_media" in e:
            cuts.append(int(e["after_media"]))
        else:
            t = float(e["t_ms"])
            cuts.append(bisect_left(times, t))  # arrival times only grow
    return sorted(cuts)


def find_underruns(result: CallResult, jitter_ms: float = DEFAULT_JITTER_MS) -> StreamReport:
    """Replay ``result.bot_media`` through a ``jitter_ms`` playout buffer (module docstring)."""
    if jitter_ms < 0:
        raise ValueError(f"jitter_ms must be >= 0, got {jitter_ms}")
    report = StreamReport(jitter_ms=jitter_ms)
    cuts = _boundaries(result)
    cut_i = 0
    dry_at: float | None = None  # when the current response's buffered audio runs out
    into = 0.0  # audio of the current response before this message
    for index, (t_ms, nbytes, _audible) in enumerate(result.bot_media):
        while cut_i < len(cuts) and cuts[cut_i] <= index:
            dry_at = None  # a mark/clear ended the response: the next audio starts a new one
            cut_i += 1
        dur = nbytes / BYTES_PER_MS
        report.audio_ms += dur
        if dry_at is None:
            report.responses += 1
            dry_at = t_ms + jitter_ms + dur
            into = dur
            continue
        if t_ms > dry_at:
            report.underruns.append(Underrun(at_ms=dry_at, gap_ms=t_ms - dry_at, into_ms=into))
            dry_at = t_ms + dur
        else:
            dry_at += dur
        into += dur
    return report
