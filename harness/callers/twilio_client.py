"""The simulated caller: plays Twilio's side of a Media Streams call against a bot's WebSocket.

It sends ``connected`` and ``start``, then one 20 ms ``media`` frame per tick of a steady call
clock (scheduled against a monotonic start time, so it never drifts), with the caller's speech
where a turn speaks and mu-law silence otherwise. Bot ``media`` goes into a playout buffer
drained one frame per tick, like a phone line; ``mark`` is echoed once the audio queued before
it has played; ``clear`` empties the buffer (barge-in) and echoes the pending marks. At the end
it sends ``stop`` and closes the socket.

Per turn it measures voice-to-voice latency: from sending the last voiced frame of the caller's
utterance to receiving the bot's first audible ``media`` frame after it (media that is all
silence, which some servers stream while idle, does not count as the bot speaking).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import math
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harness.callers.recorder import CallRecorder
from harness.callers.twilio_messages import (
    FRAME_BYTES,
    FRAME_MS,
    StreamIdentity,
    TwilioMessageBuilder,
)
from stepcall.audio.mulaw import ULAW_SILENCE, pcm16_to_ulaw, ulaw_to_pcm16

SILENCE_FRAME = bytes([ULAW_SILENCE]) * FRAME_BYTES
AUDIBLE_PEAK = 100  # PCM16 peak above which bot audio counts as sound, not (comfort) silence
_AUDIBLE = np.abs(ulaw_to_pcm16(bytes(range(256))).astype(np.int32)) > AUDIBLE_PEAK


def is_audible(ulaw: bytes | bytearray) -> bool:
    """Whether mu-law audio holds any sample louder than :data:`AUDIBLE_PEAK`."""
    return bool(_AUDIBLE[np.frombuffer(bytes(ulaw), dtype=np.uint8)].any())
_TICK = FRAME_MS / 1000.0
_POLL = 0.01


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
    """Everything measured on one simulated call."""

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


@dataclass
class _PendingMark:
    record: MarkRecord


@dataclass
class _TxFrame:
    payload: bytes
    first: bool = False
    last_voiced: bool = False
    last: bool = False


def _speech_frames(pcm: np.ndarray, voiced_rms: float) -> list[_TxFrame]:
    """Split 8 kHz PCM into 160-sample frames tagged with first / last-voiced / last."""
    n = math.ceil(pcm.size / FRAME_BYTES)
    padded = np.zeros(n * FRAME_BYTES, dtype=np.int16)
    padded[: pcm.size] = pcm
    frames = padded.reshape(n, FRAME_BYTES)
    rms = np.sqrt((frames.astype(np.float64) ** 2).mean(axis=1))
    voiced = np.nonzero(rms > voiced_rms)[0]
    last_voiced = int(voiced[-1]) if voiced.size else n - 1
    out = [_TxFrame(pcm16_to_ulaw(f)) for f in frames]
    out[0].first = True
    out[last_voiced].last_voiced = True
    out[-1].last = True
    return out


class _CallSession:
    """One live call over an open WebSocket (see the module docstring)."""

    def __init__(self, ws: Any, options: CallOptions, result: CallResult,
                 identity: StreamIdentity) -> None:
        self.ws = ws
        self.opt = options
        self.result = result
        self.identity = identity
        self.msgs = TwilioMessageBuilder(identity)
        self.recorder = CallRecorder()
        self.loop = asyncio.get_running_loop()
        self.t0 = 0.0
        self._tx: deque[_TxFrame] = deque()
        self._utterance_done = asyncio.Event()
        self._playout: deque[bytearray | _PendingMark] = deque()
        self._send_lock = asyncio.Lock()
        self._stopping = False
        self._hanging_up = False
        self.closed = asyncio.Event()
        self.current: TurnResult | None = None
        self.last_bot_activity = -math.inf
        self._foreign_sids: set[str] = set()

    # -- clock and logging -------------------------------------------------------------
    def now_ms(self) -> float:
        return (self.loop.time() - self.t0) * 1000.0

    def log(self, direction: str, event: str, **detail: Any) -> None:
        self.result.events.append({"t_ms": round(self.now_ms(), 1), "dir": direction,
                                   "event": event, **detail})

    async def send(self, msg: dict) -> None:
        async with self._send_lock:
            await self.ws.send(json.dumps(msg))

    # -- call lifecycle ---------------------------------------------------------------
    async def open(self) -> None:
        await self.send(self.msgs.connected())
        self.t0 = self.loop.time()
        self.result.started_unix = time.time()
        self.log("out", "connected")
        await self.send(self.msgs.start(self.opt.custom_parameters()))
        self.log("out", "start", streamSid=self.identity.stream_sid)

    async def hang_up(self, ticker: asyncio.Task) -> None:
        self._stopping = True
        await asyncio.gather(ticker, return_exceptions=True)
        if self.closed.is_set():
            return
        self._hanging_up = True
        try:
            await self.send(self.msgs.stop())
            self.log("out", "stop")
            self.result.hung_up_by = "caller"
            await self.ws.close()
        except Exception as e:  # the bot may close at the same moment
            if not self.closed.is_set():
                self.result.errors.append(f"hang-up failed: {e!r}")

    # -- the 20 ms tick: play out bot audio, send one caller frame ----------------------
    async def ticker(self) -> None:
        i = 0
        while not self._stopping and not self.closed.is_set():
            target = self.t0 + i * _TICK
            delay = target - self.loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                self.result.max_send_lag_ms = max(self.result.max_send_lag_ms, -delay * 1000)
            if self._stopping or self.closed.is_set():
                break
            await self._echo_ready_marks()
            bot_frame = self._pull_playout()
            tx = self._tx.popleft() if self._tx else None
            frame = tx.payload if tx else SILENCE_FRAME
            try:
                await self.send(self.msgs.media(i + 1, i * FRAME_MS, frame))
            except Exception as e:
                if not self.closed.is_set() and not self._stopping:
                    self.result.errors.append(f"sending media failed: {e!r}")
                break
            self.result.frames_sent += 1
            if tx is not None and self.current is not None:
                if tx.first:
                    self.current.speech_start_ms = self.now_ms()
                if tx.last_voiced:
                    self.current.speech_end_ms = self.now_ms()
                    self.log("out", "speech_end", turn=self.current.index)
                if tx.last:
                    self._utterance_done.set()
            self.recorder.add_tick(frame, bot_frame)
            i += 1

    def _pull_playout(self) -> bytes:
        out = bytearray()
        while len(out) < FRAME_BYTES and self._playout:
            item = self._playout[0]
            if isinstance(item, _PendingMark):
                break  # echoed next tick, once the audio before it has played
            take = item[: FRAME_BYTES - len(out)]
            out += take
            del item[: len(take)]
            if not item:
                self._playout.popleft()
        if out:
            if is_audible(out):
                self.last_bot_activity = self.loop.time()
            if self.current is not None:
                self.current.bot_played_bytes += len(out)
        return bytes(out) + SILENCE_FRAME[len(out):]

    async def _echo_ready_marks(self) -> None:
        while self._playout and isinstance(self._playout[0], _PendingMark):
            await self._echo_mark(self._playout.popleft().record)

    async def _echo_mark(self, record: MarkRecord) -> None:
        record.echoed_ms = self.now_ms()
        await self.send(self.msgs.mark(record.name))
        self.log("out", "mark", name=record.name, cleared=record.cleared)

    def _playout_has_audio(self) -> bool:
        return any(not isinstance(x, _PendingMark) for x in self._playout)

    # -- messages from the bot --------------------------------------------------------
    async def receiver(self) -> None:
        try:
            async for raw in self.ws:
                await self._on_message(raw)
        except Exception as e:
            if not self._hanging_up:
                self.result.errors.append(f"connection error: {e!r}")
        finally:
            if not self._hanging_up and self.result.hung_up_by is None:
                self.result.hung_up_by = "bot"
                self.result.close_code = getattr(self.ws, "close_code", None)
                self.result.close_reason = getattr(self.ws, "close_reason", None) or ""
                self.log("in", "closed", code=self.result.close_code,
                         reason=self.result.close_reason)
            self.closed.set()

    async def _on_message(self, raw: str | bytes) -> None:
        if isinstance(raw, bytes):
            self.result.errors.append("bot sent a binary WebSocket message (Twilio expects JSON text)")
            return
        try:
            msg = json.loads(raw)
            event = msg["event"]
        except (ValueError, KeyError, TypeError):
            self.result.errors.append(f"bot sent a message that is not Twilio JSON: {raw[:120]!r}")
            return
        if event == "media":
            self._on_media(msg)
        elif event == "mark":
            name = str((msg.get("mark") or {}).get("name", ""))
            self._check_sid(msg, "mark")
            record = MarkRecord(name=name, received_ms=self.now_ms())
            self.result.marks.append(record)
            self.log("in", "mark", name=name, after_media=len(self.result.bot_media))
            if self._playout_has_audio():
                self._playout.append(_PendingMark(record))
            else:
                await self._echo_mark(record)
        elif event == "clear":
            self._check_sid(msg, "clear")
            dropped = sum(len(x) for x in self._playout if not isinstance(x, _PendingMark))
            pending = [x.record for x in self._playout if isinstance(x, _PendingMark)]
            self._playout.clear()
            if self.current is not None:
                self.current.clears += 1
            self.log("in", "clear", dropped_bytes=dropped, after_media=len(self.result.bot_media))
            for record in pending:
                record.cleared = True
                await self._echo_mark(record)
        else:
            self.log("in", "ignored", what=str(event))

    def _check_sid(self, msg: dict, what: str) -> str | None:
        sid = msg.get("streamSid")
        if sid is not None and sid not in self.result.stream_sids_seen:
            self.result.stream_sids_seen.append(sid)
        if sid != self.identity.stream_sid and sid not in self._foreign_sids:
            self._foreign_sids.add(sid)
            self.result.errors.append(
                f"bot {what} has streamSid {sid!r}, expected {self.identity.stream_sid!r}")
        return sid

    def _on_media(self, msg: dict) -> None:
        self._check_sid(msg, "media")
        try:
            payload = base64.b64decode(msg["media"]["payload"], validate=True)
        except (KeyError, TypeError, binascii.Error):
            self.result.errors.append("bot media without a valid base64 media.payload")
            return
        if not payload:
            return
        if self._playout and isinstance(self._playout[-1], bytearray):
            self._playout[-1] += payload
        else:
            self._playout.append(bytearray(payload))
        audible = is_audible(payload)
        self.result.bot_media.append((self.now_ms(), len(payload), audible))
        if audible:
            self.last_bot_activity = self.loop.time()
        turn = self.current
        if turn is None:
            return
        turn.bot_audio += payload
        if turn.kind != "greeting" and turn.speech_end_ms is None:
            turn.bot_bytes_during_speech += len(payload)
        elif turn.first_bot_media_ms is None and audible:
            turn.first_bot_media_ms = self.now_ms()
            start = turn.speech_end_ms if turn.speech_end_ms is not None else 0.0
            turn.latency_ms = turn.first_bot_media_ms - start
            self.log("in", "first_media", turn=turn.index, latency_ms=round(turn.latency_ms, 1))

    # -- the turn script --------------------------------------------------------------
    def bot_quiet(self) -> bool:
        """No audible bot audio received or played out for ``quiet_secs``."""
        return self.loop.time() - self.last_bot_activity >= self.opt.quiet_secs

    async def sleep_unless_closed(self, secs: float) -> None:
        try:
            await asyncio.wait_for(self.closed.wait(), timeout=secs)
        except TimeoutError:
            pass

    async def greeting(self) -> None:
        turn = TurnResult(index=0, kind="greeting", expect_reply=False)
        turn.speech_end_ms = 0.0
        self.current = turn
        deadline = self.loop.time() + self.opt.greeting_wait_secs
        while not self.closed.is_set() and turn.first_bot_media_ms is None:
            if self.loop.time() >= deadline:
                break
            await asyncio.sleep(_POLL)
        if turn.first_bot_media_ms is not None:
            self.result.greeting = turn
            await self._wait_reply(turn, barge_in_after=None, started=True)

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
            for k, digit in enumerate(spec.dtmf):
                if k:
                    await self.sleep_unless_closed(self.opt.dtmf_gap_secs)
                if self.closed.is_set():
                    return
                await self.send(self.msgs.dtmf(digit))
                self.log("out", "dtmf", digit=digit)
                if k == 0:
                    turn.speech_start_ms = self.now_ms()
            turn.speech_end_ms = self.now_ms()
        else:
            assert pcm is not None
            self._utterance_done.clear()
            self._tx.extend(_speech_frames(pcm, self.opt.voiced_rms))
            closed = asyncio.ensure_future(self.closed.wait())
            done = asyncio.ensure_future(self._utterance_done.wait())
            await asyncio.wait({closed, done}, return_when=asyncio.FIRST_COMPLETED)
            for f in (closed, done):
                f.cancel()
            if self.closed.is_set():
                return
        await self._wait_reply(turn, barge_in_after, started=False, wait_secs=spec.wait_secs)

    async def _wait_reply(self, turn: TurnResult, barge_in_after: float | None,
                          started: bool, wait_secs: float | None = None) -> None:
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
                if self.bot_quiet():
                    self.log("in", "bot_quiet", turn=turn.index)
                    return
                if barge_in_after is not None and now - first >= barge_in_after:
                    turn.barged_in = True
                    self.log("out", "barge_in", turn=turn.index)
                    return
                if now - first >= opt.max_reply_secs:
                    turn.timed_out = True
                    return
            await asyncio.sleep(_POLL)


async def play_script(session: Any, specs: list[CallerTurn], turns: list[Any],
                      pcms: list[Any], opt: CallOptions) -> None:
    """The caller's side of a call, whatever the transport: listen for a greeting, play each
    turn (the next one barges in ``barge_in_after`` into a reply; after a barge-in it starts
    without the pause), then wait ``hangup_delay_secs``. Turns after the bot hung up are skipped.

    ``session`` has ``closed`` (an ``asyncio.Event``), ``greeting()``, ``run_turn(turn, spec,
    pcm, barge_in_after, pause=...)`` and ``sleep_unless_closed(secs)``.
    """
    await session.greeting()
    barged = False
    for k, (spec, turn) in enumerate(zip(specs, turns, strict=True)):
        if session.closed.is_set():
            turn.skipped = True
            continue
        is_last = k == len(specs) - 1
        await session.run_turn(turn, spec, pcms[k],
                               None if is_last else opt.barge_in_after, pause=not barged)
        barged = turn.barged_in
    if not session.closed.is_set():
        await session.sleep_unless_closed(opt.hangup_delay_secs)


async def run_call(url: str, turns: list[CallerTurn],
                   options: CallOptions | None = None) -> CallResult:
    """Place one simulated Twilio call to the bot at ``url`` and play ``turns`` in order.

    Caller speech for text turns is synthesised first (off the event loop). Connection and
    protocol problems are reported in ``CallResult.errors``; bad arguments raise ``ValueError``
    and a missing speech engine raises ``SpeechUnavailableError``.
    """
    opt = options or CallOptions()
    if not turns:
        raise ValueError("run_call needs at least one CallerTurn")
    if not url.startswith(("ws://", "wss://")):
        raise ValueError(f"bot URL must start with ws:// or wss://, got {url!r}")
    pcms = await _prepare_audio(turns, opt)
    identity = opt.identity or StreamIdentity()
    result = CallResult(url=url, stream_sid=identity.stream_sid, call_sid=identity.call_sid,
                        account_sid=identity.account_sid)
    result.turns = [TurnResult(index=k + 1, kind=t.kind, text=t.text, dtmf=t.dtmf,
                               expect_reply=t.expect_reply) for k, t in enumerate(turns)]

    from websockets.asyncio.client import connect

    try:
        ws = await connect(url, open_timeout=opt.connect_timeout, compression=None, max_size=None)
    except Exception as e:
        result.errors.append(f"could not connect to {url}: {e}")
        for t in result.turns:
            t.skipped = True
        return result

    session = _CallSession(ws, opt, result, identity)
    receiver = asyncio.create_task(session.receiver())
    ticker: asyncio.Task | None = None
    try:
        await session.open()
        ticker = asyncio.create_task(session.ticker())
        await play_script(session, turns, result.turns, pcms, opt)
    except Exception as e:
        if not session.closed.is_set():
            result.errors.append(f"call failed: {e!r}")
    finally:
        if ticker is not None:
            await session.hang_up(ticker)
        else:
            await ws.close()
        try:
            await asyncio.wait_for(receiver, timeout=2.0)
        except TimeoutError:
            receiver.cancel()
        result.duration_ms = session.now_ms()
    if opt.record_path is not None:
        result.record_path = str(session.recorder.write_wav(opt.record_path))
    return result


async def _prepare_audio(turns: list[CallerTurn], opt: CallOptions) -> list[np.ndarray | None]:
    from stepcall.audio.speech import synthesize

    out: list[np.ndarray | None] = []
    for t in turns:
        if t.audio is not None:
            out.append(np.asarray(t.audio, dtype=np.int16))
        elif t.text is not None:
            out.append(await asyncio.to_thread(synthesize, t.text, 8000, opt.engine))
        else:
            out.append(None)
    return out


def decode_bot_audio(turn: TurnResult) -> np.ndarray:
    """The bot's reply in a turn as int16 PCM at 8 kHz."""
    return ulaw_to_pcm16(bytes(turn.bot_audio))
