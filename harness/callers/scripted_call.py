"""What a simulated call is, whatever the line: the caller's script, its clock, the latency per
turn, the recording and the report data. ``twilio_client`` (Twilio Media Streams over a
WebSocket) and ``webrtc_client`` (a browser's peer) put it on their line.

The script (:meth:`ScriptedCall.play`): listen for a greeting, then per turn pause, say the
utterance (one 20 ms frame per tick of a steady call clock) or press its digits, and wait for
the bot's reply; the next turn barges in ``barge_in_after`` into a reply. Per turn it measures
voice-to-voice latency: from the last voiced frame of the caller's utterance leaving the caller
to the bot's first audible audio after it (audio that is all silence does not count as the bot
speaking).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from harness.callers.recorder import StereoRecording
from harness.callers.twilio_messages import StreamIdentity

FRAME_MS = 20
#: Rate of ``CallerTurn.audio`` (and of the Twilio line).
AUDIO_RATE = 8000
AUDIBLE_PEAK = 100  # PCM16 peak above which bot audio counts as sound, not (comfort) silence
TICK = FRAME_MS / 1000.0
POLL = 0.01


@dataclass
class CallerTurn:
    """One thing the caller does: say ``text`` (synthesised), play ``audio``, or press ``dtmf``.

    ``audio`` is int16 PCM at 8 kHz and wins over ``text`` (which is then only a label).
    ``expect_reply``: a turn the bot leaves unanswered makes the call fail.
    ``wait_secs``: how long to wait for the bot's reply after this turn (``CallOptions.wait_secs``
    when None); a silent turn that only listens can use a short wait.
    """

    text: str | None = None
    audio: np.ndarray | None = None
    dtmf: str | None = None
    expect_reply: bool = True
    wait_secs: float | None = None

    def __post_init__(self) -> None:
        speech = self.text is not None or self.audio is not None
        if speech == (self.dtmf is not None):
            raise ValueError("a CallerTurn needs either text/audio or dtmf (exactly one kind)")
        if self.text is not None and not self.text.strip():
            raise ValueError("CallerTurn.text is empty")
        if self.dtmf is not None:
            bad = [d for d in self.dtmf if d not in "0123456789*#ABCD"]
            if not self.dtmf or bad:
                raise ValueError(f"CallerTurn.dtmf {self.dtmf!r} has invalid digits {bad}")
        if self.wait_secs is not None and self.wait_secs < 0:
            raise ValueError(f"CallerTurn.wait_secs must be >= 0, got {self.wait_secs}")
        if self.audio is not None:
            a = np.asarray(self.audio)
            if a.ndim != 1 or a.dtype != np.int16 or a.size == 0:
                raise ValueError("CallerTurn.audio must be a non-empty 1-D int16 array (8 kHz)")

    @property
    def kind(self) -> str:
        return "dtmf" if self.dtmf is not None else "speech"


@dataclass
class CallOptions:
    """How the simulated call behaves (all times in seconds)."""

    params: dict[str, str] = field(default_factory=dict)  # start.customParameters
    from_number: str | None = None  # sent as customParameters["from_number"]
    to_number: str | None = None  # sent as customParameters["to_number"]
    pause_secs: float = 0.5  # silence before each turn
    wait_secs: float = 15.0  # max wait for the bot's reply to begin
    quiet_secs: float = 1.2  # bot silence that ends its reply
    max_reply_secs: float = 60.0  # cap on one reply once it has begun
    barge_in_after: float | None = None  # start the next turn this long into the bot's reply
    greeting_wait_secs: float = 2.0  # how long to listen for a greeting before turn 1
    dtmf_gap_secs: float = 0.25  # between DTMF digits
    hangup_delay_secs: float = 0.2  # silence after the last reply before `stop`
    voiced_rms: float = 200.0  # PCM16 RMS above which a frame counts as speech
    connect_timeout: float = 10.0
    engine: str | None = None  # speech engine (see stepcall.audio.speech)
    record_path: str | Path | None = None  # stereo WAV: left caller, right bot
    identity: StreamIdentity | None = None  # SIDs; random when None

    def __post_init__(self) -> None:
        for name in ("pause_secs", "wait_secs", "quiet_secs", "max_reply_secs",
                     "greeting_wait_secs", "dtmf_gap_secs", "hangup_delay_secs"):
            if getattr(self, name) < 0:
                raise ValueError(f"CallOptions.{name} must be >= 0, got {getattr(self, name)}")
        if self.barge_in_after is not None and self.barge_in_after < 0:
            raise ValueError(f"CallOptions.barge_in_after must be >= 0, got {self.barge_in_after}")

    def custom_parameters(self) -> dict[str, str]:
        params = {str(k): str(v) for k, v in self.params.items()}
        if self.from_number is not None:
            params.setdefault("from_number", self.from_number)
        if self.to_number is not None:
            params.setdefault("to_number", self.to_number)
        return params


@dataclass
class MarkRecord:
    """A ``mark`` the bot sent and when the caller echoed it (call-clock ms)."""

    name: str
    received_ms: float
    echoed_ms: float | None = None
    cleared: bool = False  # echoed because a `clear` dropped the audio before it


@dataclass
class TurnResult:
    """What happened in one turn (``kind`` "greeting" is the bot speaking first)."""

    index: int
    kind: str  # "speech", "dtmf" or "greeting"
    text: str | None = None
    dtmf: str | None = None
    expect_reply: bool = True
    speech_start_ms: float | None = None  # call clock: first frame/digit sent
    speech_end_ms: float | None = None  # last voiced frame (or last digit) sent
    first_bot_media_ms: float | None = None  # first audible bot media received after speech end
    latency_ms: float | None = None  # voice-to-voice
    bot_audio: bytearray = field(default_factory=bytearray, repr=False)  # mu-law received
    bot_bytes_during_speech: int = 0  # part of bot_audio received before speech end
    bot_played_bytes: int = 0  # bot audio actually played out (not cleared)
    clears: int = 0
    barged_in: bool = False  # the next turn started while the bot was still talking
    held: bool = False  # the bot played its holding line (Twilio mark ``holding-N``) first
    timed_out: bool = False
    skipped: bool = False  # never ran (the bot hung up first)

    @property
    def bot_bytes(self) -> int:
        return len(self.bot_audio)

    @property
    def bot_audio_secs(self) -> float:
        """Seconds of bot audio received in this turn (8 kHz mu-law here)."""
        return self.bot_bytes / 8000

    @property
    def bot_played_secs(self) -> float:
        """Seconds of bot audio played out (not cleared) in this turn."""
        return self.bot_played_bytes / 8000

    @property
    def replied(self) -> bool:
        return self.first_bot_media_ms is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index, "kind": self.kind, "text": self.text, "dtmf": self.dtmf,
            "speech_start_ms": _r(self.speech_start_ms), "speech_end_ms": _r(self.speech_end_ms),
            "first_bot_media_ms": _r(self.first_bot_media_ms), "latency_ms": _r(self.latency_ms),
            "bot_bytes": self.bot_bytes, "bot_audio_secs": round(self.bot_audio_secs, 3),
            "bot_bytes_during_speech": self.bot_bytes_during_speech,
            "bot_played_bytes": self.bot_played_bytes, "clears": self.clears,
            "replied": self.replied, "barged_in": self.barged_in, "timed_out": self.timed_out,
            "skipped": self.skipped,
        }


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


@dataclass
class CallResult:
    """Everything measured on one simulated call (the SIDs and marks are Twilio's)."""

    url: str
    stream_sid: str
    call_sid: str
    account_sid: str
    turns: list[TurnResult] = field(default_factory=list)
    greeting: TurnResult | None = None
    stream_sids_seen: list[str] = field(default_factory=list)
    marks: list[MarkRecord] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    hung_up_by: str | None = None  # "caller" or "bot"
    close_code: int | None = None  # WebSocket close code when the bot closed the stream
    close_reason: str = ""
    duration_ms: float = 0.0
    frames_sent: int = 0
    max_send_lag_ms: float = 0.0  # worst lateness of a frame against the call clock
    record_path: str | None = None
    started_unix: float | None = None  # wall-clock time (time.time()) of call-clock 0
    #: Every bot ``media`` message as received: (call-clock ms, payload bytes, audible).
    bot_media: list[tuple[float, int, bool]] = field(default_factory=list, repr=False)

    @property
    def latency_ms(self) -> list[float | None]:
        return [t.latency_ms for t in self.turns]

    @property
    def bot_audio_total(self) -> bytes:
        parts = ([self.greeting.bot_audio] if self.greeting else []) + [t.bot_audio for t in self.turns]
        return b"".join(bytes(p) for p in parts)

    @property
    def unanswered_turns(self) -> list[int]:
        return [t.index for t in self.turns if t.expect_reply and not t.replied]

    @property
    def ok(self) -> bool:
        """No protocol errors and every turn expecting a reply got one."""
        return not self.errors and not self.unanswered_turns and bool(self.turns)

    def skip_all(self) -> None:
        """Mark every turn skipped (the call never came up)."""
        for t in self.turns:
            t.skipped = True

    def to_dict(self) -> dict[str, Any]:
        return {
            "url": self.url, "stream_sid": self.stream_sid, "call_sid": self.call_sid,
            "account_sid": self.account_sid, "ok": self.ok,
            "greeting": self.greeting.to_dict() if self.greeting else None,
            "turns": [t.to_dict() for t in self.turns],
            "latency_ms": [_r(x) for x in self.latency_ms],
            "bot_bytes_total": len(self.bot_audio_total),
            "stream_sids_seen": self.stream_sids_seen,
            "stream_sid_match": all(s == self.stream_sid for s in self.stream_sids_seen),
            "marks": [
                {"name": m.name, "received_ms": _r(m.received_ms), "echoed_ms": _r(m.echoed_ms),
                 "cleared": m.cleared} for m in self.marks
            ],
            "unanswered_turns": self.unanswered_turns, "errors": self.errors,
            "hung_up_by": self.hung_up_by, "close_code": self.close_code,
            "close_reason": self.close_reason, "duration_ms": _r(self.duration_ms),
            "frames_sent": self.frames_sent, "max_send_lag_ms": _r(self.max_send_lag_ms),
            "record_path": self.record_path, "events": self.events,
        }


def turn_results(turns: list[CallerTurn], cls: type[TurnResult] = TurnResult) -> list[Any]:
    """One empty result per scripted turn, numbered from 1."""
    return [cls(index=k + 1, kind=t.kind, text=t.text, dtmf=t.dtmf, expect_reply=t.expect_reply)
            for k, t in enumerate(turns)]


async def prepare_audio(turns: list[CallerTurn], rate: int,
                        engine: str | None) -> list[np.ndarray | None]:
    """Each turn's speech as int16 PCM at ``rate`` (None for a DTMF turn), made off the event
    loop: ``text`` synthesised at ``rate``, ``audio`` (8 kHz) as given or resampled."""
    from stepcall.audio.speech import synthesize

    out: list[np.ndarray | None] = []
    for t in turns:
        if t.audio is not None:
            pcm8 = np.asarray(t.audio, dtype=np.int16)
            out.append(pcm8 if rate == AUDIO_RATE
                       else await asyncio.to_thread(_resample_int16, pcm8, AUDIO_RATE, rate))
        elif t.text is not None:
            out.append(await asyncio.to_thread(synthesize, t.text, rate, engine))
        else:
            out.append(None)
    return out


def _resample_int16(pcm: np.ndarray, src: int, dst: int) -> np.ndarray:
    import soxr

    return np.asarray(soxr.resample(pcm, src, dst), dtype=np.int16)


@dataclass
class ScriptFrame:
    """One frame of a caller utterance: what goes on the line, what the recording keeps."""

    sent: Any
    recorded: Any
    first: bool = False
    last_voiced: bool = False
    last: bool = False


def script_frames(pcm: np.ndarray, frame_samples: int, voiced_rms: float,
                  encode: Callable[[np.ndarray], Iterable[tuple[Any, Any]]]) -> list[ScriptFrame]:
    """Split PCM into zero-padded frames of ``frame_samples``, tagged first / last-voiced
    (RMS above ``voiced_rms``; the last frame when none is) / last. ``encode`` turns the
    ``(n, frame_samples)`` frames into each frame's ``(sent, recorded)``."""
    n = math.ceil(pcm.size / frame_samples)
    padded = np.zeros(n * frame_samples, dtype=np.int16)
    padded[: pcm.size] = pcm
    frames = padded.reshape(n, frame_samples)
    rms = np.sqrt((frames.astype(np.float64) ** 2).mean(axis=1))
    voiced = np.nonzero(rms > voiced_rms)[0]
    last_voiced = int(voiced[-1]) if voiced.size else n - 1
    out = [ScriptFrame(sent, recorded) for sent, recorded in encode(frames)]
    out[0].first = True
    out[last_voiced].last_voiced = True
    out[-1].last = True
    return out


class ScriptedCall:
    """The caller's side of one live call; a transport subclasses it for its line.

    It owns the call clock (``t0``, :meth:`now_ms`, the event log), the queue of utterance
    frames, the current turn and the reply bookkeeping. The transport feeds it: it calls
    :meth:`pace` and :meth:`take_frame` / :meth:`frame_sent` once per 20 ms tick,
    :meth:`reply_began` on the first audible bot audio of a turn and sets ``last_bot_activity``
    on audible bot audio; it sets ``closed`` when the call is over. It provides
    :meth:`begin` and :meth:`end` (bring the line up and down), :meth:`send_dtmf`, and may
    refine :meth:`reply_over` and :meth:`finish_turn`.
    """

    turn_type: ClassVar[type[TurnResult]] = TurnResult
    #: Names of the events logged when a reply begins and ends (the transports' own names).
    first_reply_event: ClassVar[str] = "first_reply"
    reply_end_event: ClassVar[str] = "reply_end"

    def __init__(self, options: CallOptions, result: CallResult, recorder: StereoRecording) -> None:
        self.opt = options
        self.result = result
        self.recorder = recorder
        self.loop = asyncio.get_running_loop()
        self.t0 = self.loop.time()
        self.closed = asyncio.Event()
        self.current: Any = None  # the turn under way (a turn_type)
        self.last_bot_activity = -math.inf  # loop time of the last audible bot audio
        self._tx: deque[ScriptFrame] = deque()
        self._utterance_done = asyncio.Event()

    # -- what the transport provides ------------------------------------------------------
    async def begin(self) -> bool:
        """Bring the call up; False when it never came up (the reason is in the errors)."""
        raise NotImplementedError

    async def end(self) -> None:
        """Hang up (when the bot has not) and take the line down."""
        raise NotImplementedError

    async def send_dtmf(self, digit: str) -> None:
        raise NotImplementedError

    def reply_over(self, turn: Any) -> bool:
        """Whether the bot's reply has ended: ``quiet_secs`` without audible bot audio."""
        return self.bot_quiet(self.opt.quiet_secs)

    def finish_turn(self, turn: Any) -> None:
        """Called once a heard greeting or a played turn is over."""

    # -- clock and logging ----------------------------------------------------------------
    def start_clock(self) -> None:
        """Call-clock 0 is now."""
        self.t0 = self.loop.time()
        self.result.started_unix = time.time()

    def now_ms(self) -> float:
        return (self.loop.time() - self.t0) * 1000.0

    def log(self, direction: str, event: str, **detail: Any) -> None:
        self.result.events.append({"t_ms": round(self.now_ms(), 1), "dir": direction,
                                   "event": event, **detail})

    async def pace(self, start: float, tick: int) -> None:
        """Wait for tick ``tick`` of a clock started at loop time ``start`` (keeping the worst
        lateness in ``max_send_lag_ms``), so the frames never drift."""
        delay = start + tick * TICK - self.loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            self.result.max_send_lag_ms = max(self.result.max_send_lag_ms, -delay * 1000)

    # -- the caller's frames --------------------------------------------------------------
    def take_frame(self) -> ScriptFrame | None:
        """This tick's utterance frame (None: the caller is silent)."""
        return self._tx.popleft() if self._tx else None

    def frame_sent(self, tx: ScriptFrame | None) -> None:
        """Count a frame on the line and stamp the utterance's start and end on the turn."""
        self.result.frames_sent += 1
        turn = self.current
        if tx is not None and turn is not None:
            if tx.first:
                turn.speech_start_ms = self.now_ms()
            if tx.last_voiced:
                turn.speech_end_ms = self.now_ms()
                self.log("out", "speech_end", turn=turn.index)
            if tx.last:
                self._utterance_done.set()

    def reply_began(self, turn: TurnResult) -> None:
        """The bot's first audible audio in ``turn`` is here: its voice-to-voice latency."""
        turn.first_bot_media_ms = self.now_ms()
        start = turn.speech_end_ms if turn.speech_end_ms is not None else 0.0
        turn.latency_ms = turn.first_bot_media_ms - start
        self.log("in", self.first_reply_event, turn=turn.index,
                 latency_ms=round(turn.latency_ms, 1))

    # -- the script -----------------------------------------------------------------------
    async def place(self, specs: list[CallerTurn], pcms: list[np.ndarray | None]) -> None:
        """Bring the call up, play the script, hang up; failures go to the result's errors.
        Writes the recording when ``record_path`` is set."""
        try:
            if await self.begin():
                await self.play(specs, pcms)
        except Exception as e:
            if not self.closed.is_set():
                self.result.errors.append(f"call failed: {e!r}")
        finally:
            await self.end()
            self.result.duration_ms = self.now_ms()
        if self.opt.record_path is not None:
            self.result.record_path = str(self.recorder.write_wav(self.opt.record_path))

    async def play(self, specs: list[CallerTurn], pcms: list[np.ndarray | None]) -> None:
        """Listen for a greeting, play each turn (the next one barges in ``barge_in_after``
        into a reply; after a barge-in it starts without the pause), then wait
        ``hangup_delay_secs``. Turns after the bot hung up are skipped."""
        await self.greeting()
        barged = False
        for k, (spec, turn) in enumerate(zip(specs, self.result.turns, strict=True)):
            if self.closed.is_set():
                turn.skipped = True
                continue
            is_last = k == len(specs) - 1
            await self.run_turn(turn, spec, pcms[k],
                                None if is_last else self.opt.barge_in_after, pause=not barged)
            barged = turn.barged_in
        if not self.closed.is_set():
            await self.sleep_unless_closed(self.opt.hangup_delay_secs)

    def bot_quiet(self, secs: float) -> bool:
        """No audible bot audio for ``secs``."""
        return self.loop.time() - self.last_bot_activity >= secs

    async def sleep_unless_closed(self, secs: float) -> None:
        try:
            await asyncio.wait_for(self.closed.wait(), timeout=secs)
        except TimeoutError:
            pass

    async def greeting(self) -> None:
        turn = self.turn_type(index=0, kind="greeting", expect_reply=False)
        turn.speech_end_ms = 0.0  # greeting latency counts from call-clock 0
        self.current = turn
        deadline = self.loop.time() + self.opt.greeting_wait_secs
        while not self.closed.is_set() and turn.first_bot_media_ms is None:
            if self.loop.time() >= deadline:
                break
            await asyncio.sleep(POLL)
        if turn.first_bot_media_ms is not None:
            self.result.greeting = turn
            await self._wait_reply(turn, barge_in_after=None)
            self.finish_turn(turn)

    async def run_turn(self, turn: TurnResult, spec: CallerTurn, pcm: np.ndarray | None,
                       barge_in_after: float | None, pause: bool) -> None:
        if pause:
            await self.sleep_unless_closed(self.opt.pause_secs)
        if self.closed.is_set():
            turn.skipped = True
            return
        self.current = turn
        self.log("out", "turn_start", turn=turn.index, kind=turn.kind)
        if spec.dtmf is not None:
            await self._press(turn, spec.dtmf)
        else:
            assert pcm is not None
            await self._say(pcm)
        if not self.closed.is_set():
            await self._wait_reply(turn, barge_in_after, wait_secs=spec.wait_secs)
        self.finish_turn(turn)

    async def _press(self, turn: TurnResult, digits: str) -> None:
        for k, digit in enumerate(digits):
            if k:
                await self.sleep_unless_closed(self.opt.dtmf_gap_secs)
            if self.closed.is_set():
                return
            await self.send_dtmf(digit)
            self.log("out", "dtmf", digit=digit)
            if k == 0:
                turn.speech_start_ms = self.now_ms()
        turn.speech_end_ms = self.now_ms()

    async def _say(self, pcm: np.ndarray) -> None:
        """Queue the utterance's frames and wait until its last one is on the line."""
        self._utterance_done.clear()
        self._tx.extend(self.utterance(pcm))
        closed = asyncio.ensure_future(self.closed.wait())
        done = asyncio.ensure_future(self._utterance_done.wait())
        await asyncio.wait({closed, done}, return_when=asyncio.FIRST_COMPLETED)
        for f in (closed, done):
            f.cancel()

    def utterance(self, pcm: np.ndarray) -> list[ScriptFrame]:
        """The transport's frames of one utterance (see :func:`script_frames`)."""
        raise NotImplementedError

    async def _wait_reply(self, turn: TurnResult, barge_in_after: float | None,
                          wait_secs: float | None = None) -> None:
        opt = self.opt
        wait = opt.wait_secs if wait_secs is None else wait_secs
        begin = self.loop.time()
        while not self.closed.is_set():
            now = self.loop.time()
            if turn.first_bot_media_ms is None:
                if now - begin >= wait:
                    turn.timed_out = True
                    self.log("in", "no_reply", turn=turn.index)
                    return
            else:
                first = self.t0 + turn.first_bot_media_ms / 1000.0
                if self.reply_over(turn):
                    self.log("in", self.reply_end_event, turn=turn.index)
                    return
                if barge_in_after is not None and now - first >= barge_in_after:
                    turn.barged_in = True
                    self.log("out", "barge_in", turn=turn.index)
                    return
                if now - first >= opt.max_reply_secs:
                    turn.timed_out = True
                    return
            await asyncio.sleep(POLL)
