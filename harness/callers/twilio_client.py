"""The simulated caller: plays Twilio's side of a Media Streams call against a bot's WebSocket.

It sends ``connected`` and ``start``, then one 20 ms ``media`` frame per tick of a steady call
clock (scheduled against a monotonic start time, so it never drifts), with the caller's speech
where a turn speaks and mu-law silence otherwise. Bot ``media`` goes into a playout buffer
drained one frame per tick, like a phone line; ``mark`` is echoed once the audio queued before
it has played; ``clear`` empties the buffer (barge-in) and echoes the pending marks. At the end
it sends ``stop`` and closes the socket.

Per turn it measures voice-to-voice latency: from sending the last voiced frame of the caller's
utterance to receiving the bot's first audible ``media`` frame after it (media that is all
silence, which some servers stream while idle, does not count as the bot speaking). The script,
the clock and the results are the scripted call's (``harness.callers.scripted_call``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from bots.twilio.marks import HOLDING_MARK
from harness.callers.recorder import CallRecorder
from harness.callers.scripted_call import (
    AUDIBLE_PEAK,
    CallerTurn,
    CallOptions,
    CallResult,
    MarkRecord,
    ScriptedCall,
    ScriptFrame,
    TurnResult,
    prepare_audio,
    script_frames,
    turn_results,
)
from harness.callers.twilio_messages import (
    FRAME_BYTES,
    FRAME_MS,
    StreamIdentity,
    TwilioMessageBuilder,
)
from stepcall.audio.mulaw import ULAW_SILENCE, pcm16_to_ulaw, ulaw_to_pcm16

SILENCE_FRAME = bytes([ULAW_SILENCE]) * FRAME_BYTES
_AUDIBLE = np.abs(ulaw_to_pcm16(bytes(range(256))).astype(np.int32)) > AUDIBLE_PEAK


def is_audible(ulaw: bytes | bytearray) -> bool:
    """Whether mu-law audio holds any sample louder than :data:`AUDIBLE_PEAK`."""
    return bool(_AUDIBLE[np.frombuffer(bytes(ulaw), dtype=np.uint8)].any())


@dataclass
class _PendingMark:
    record: MarkRecord


def _ulaw_frames(frames: np.ndarray) -> list[tuple[bytes, bytes]]:
    """Each 8 kHz frame as mu-law, both sent and recorded."""
    return [(u, u) for u in map(pcm16_to_ulaw, frames)]


class _CallSession(ScriptedCall):
    """One live call over an open WebSocket (see the module docstring)."""

    first_reply_event = "first_media"
    reply_end_event = "bot_quiet"
    recorder: CallRecorder

    def __init__(self, ws: Any, options: CallOptions, result: CallResult,
                 identity: StreamIdentity) -> None:
        super().__init__(options, result, CallRecorder())
        self.t0 = 0.0  # until open() starts the call clock
        self.ws = ws
        self.identity = identity
        self.msgs = TwilioMessageBuilder(identity)
        self._playout: deque[bytearray | _PendingMark] = deque()
        self._send_lock = asyncio.Lock()
        self._stopping = False
        self._hanging_up = False
        self._receiver: asyncio.Task | None = None
        self._ticker: asyncio.Task | None = None
        self._foreign_sids: set[str] = set()
        #: A holding line ("One moment, please.", mark ``holding-N``) has played and no audio
        #: has come after it: the answer is still to come, so the caller waits on.
        self._on_hold = False

    async def send(self, msg: dict) -> None:
        async with self._send_lock:
            await self.ws.send(json.dumps(msg))

    # -- call lifecycle ---------------------------------------------------------------
    async def begin(self) -> bool:
        self._receiver = asyncio.create_task(self.receiver())
        await self.open()
        self._ticker = asyncio.create_task(self.ticker())
        return True

    async def open(self) -> None:
        await self.send(self.msgs.connected())
        self.start_clock()
        self.log("out", "connected")
        await self.send(self.msgs.start(self.opt.custom_parameters()))
        self.log("out", "start", streamSid=self.identity.stream_sid)

    async def end(self) -> None:
        if self._ticker is not None:
            await self.hang_up(self._ticker)
        else:
            await self.ws.close()
        if self._receiver is not None:
            try:
                await asyncio.wait_for(self._receiver, timeout=2.0)
            except TimeoutError:
                self._receiver.cancel()

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

    async def send_dtmf(self, digit: str) -> None:
        await self.send(self.msgs.dtmf(digit))

    def utterance(self, pcm: np.ndarray) -> list[ScriptFrame]:
        return script_frames(pcm, FRAME_BYTES, self.opt.voiced_rms, _ulaw_frames)

    # -- the 20 ms tick: play out bot audio, send one caller frame ----------------------
    async def ticker(self) -> None:
        i = 0
        while not self._stopping and not self.closed.is_set():
            await self.pace(self.t0, i)
            if self._stopping or self.closed.is_set():
                break
            await self._echo_ready_marks()
            bot_frame = self._pull_playout()
            tx = self.take_frame()
            frame = tx.sent if tx else SILENCE_FRAME
            try:
                await self.send(self.msgs.media(i + 1, i * FRAME_MS, frame))
            except Exception as e:
                if not self.closed.is_set() and not self._stopping:
                    self.result.errors.append(f"sending media failed: {e!r}")
                break
            self.frame_sent(tx)
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
                self._on_hold = False  # the answer after the holding line
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
        if record.name.startswith(HOLDING_MARK) and not record.cleared:
            self._on_hold = True
            if self.current is not None:
                self.current.held = True

    def reply_over(self, turn: Any) -> bool:
        """``quiet_secs`` of bot silence ends a reply; after a holding line the caller waits for
        the answer it promised, for up to ``wait_secs`` of silence."""
        if self._on_hold:
            return self.bot_quiet(self.opt.wait_secs)
        return super().reply_over(turn)

    def finish_turn(self, turn: Any) -> None:
        self._on_hold = False
        super().finish_turn(turn)

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
            self.reply_began(turn)


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
    pcms = await prepare_audio(turns, 8000, opt.engine)
    identity = opt.identity or StreamIdentity()
    result = CallResult(url=url, stream_sid=identity.stream_sid, call_sid=identity.call_sid,
                        account_sid=identity.account_sid)
    result.turns = turn_results(turns)

    from websockets.asyncio.client import connect

    try:
        ws = await connect(url, open_timeout=opt.connect_timeout, compression=None, max_size=None)
    except Exception as e:
        result.errors.append(f"could not connect to {url}: {e}")
        result.skip_all()
        return result

    await _CallSession(ws, opt, result, identity).place(turns, pcms)
    return result


def decode_bot_audio(turn: TurnResult) -> np.ndarray:
    """The bot's reply in a turn as int16 PCM at 8 kHz."""
    return ulaw_to_pcm16(bytes(turn.bot_audio))


__all__ = [
    "AUDIBLE_PEAK", "SILENCE_FRAME", "CallOptions", "CallResult", "CallerTurn", "MarkRecord",
    "TurnResult", "decode_bot_audio", "is_audible", "run_call",
]
