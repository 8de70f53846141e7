"""The simulated caller over WebRTC: a browser's side of a call to the bot server, in aiortc.

``run_webrtc_call(base_url, turns, options)`` fetches ``GET /webrtc/config`` (ICE servers),
sends an SDP offer to ``POST /webrtc/offer`` (``request_data``: the bot and, when the server
requires one, a widget call token) and connects an ``RTCPeerConnection`` with the ICE servers
the config lists (aiortc gathers every candidate before the offer is sent, so no trickle ICE
``PATCH /webrtc/offer`` is needed):

- a scripted microphone: 48 kHz mono, one 20 ms frame per tick of a steady call clock
  (scheduled against a monotonic start, so it never drifts), the caller's synthesised speech
  where a turn speaks and silence otherwise;
- the ``stepcall`` data channel, on which the bot sends its transcript and call state
  (``bot-ready``, ``bot-tts-text``, ``bot-started-speaking`` / ``bot-stopped-speaking``,
  ``bot-llm-started`` / ``bot-llm-stopped``, ``call-ended``; see ``bots/webrtc/transcript.py``);
- the bot's audio from the remote track (Opus, decoded by aiortc), kept at 16 kHz mono.

Per turn it measures voice-to-voice latency exactly like the Twilio caller (both play the same
script: ``harness.callers.scripted_call``): from handing the last voiced frame of the caller's
utterance to the encoder to receiving the first audible bot audio after it. A reply ends after
``quiet_secs`` of bot silence, or earlier when the data channel says the bot stopped speaking
with no response still being generated. Hanging up sends the widget's hang-up message on the
data channel, then closes the peer connection.

DTMF has no WebRTC equivalent (a browser call has no keypad), so a DTMF turn is refused.
"""

from __future__ import annotations

import asyncio
import fractions
import json
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import urlsplit

import numpy as np
import soxr
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from av import AudioFrame
from loguru import logger

from harness.callers.recorder import PcmCallRecorder
from harness.callers.scripted_call import (
    AUDIBLE_PEAK,
    FRAME_MS,
    POLL,
    CallerTurn,
    CallOptions,
    CallResult,
    ScriptedCall,
    ScriptFrame,
    TurnResult,
    prepare_audio,
    script_frames,
    turn_results,
)

#: The microphone's sample rate and 20 ms frame (what a browser sends, as Opus).
MIC_RATE = 48000
MIC_FRAME = 960
#: Rate of the stored bot audio and of the stereo recording.
RECORD_RATE = 16000
RECORD_FRAME = RECORD_RATE * FRAME_MS // 1000
#: The data channel the widget opens (bots/webrtc/static/stepcall-widget.js).
DATA_CHANNEL = "stepcall"
#: App message that hangs up a browser call (``bots.webrtc.call.HANGUP_MESSAGE``).
HANGUP_MESSAGE = "stepcall-hangup"
#: Bot silence that confirms the end of a reply once ``bot-stopped-speaking`` has arrived.
STOP_GRACE_SECS = 0.25
_MIC_SILENCE = np.zeros(MIC_FRAME, dtype=np.int16)
_REC_SILENCE = np.zeros(RECORD_FRAME, dtype=np.int16)


class OfferRefusedError(RuntimeError):
    """The bot server answered the offer with an error (its JSON ``error`` is the message)."""


@dataclass
class WebRTCCallOptions(CallOptions):
    """:class:`CallOptions` plus what a browser call needs.

    ``bot``: the bot to call (``request_data.bot``; the server's default when None).
    ``token``: a widget call token (``request_data.token``) for servers with
    ``STEPCALL_WIDGET_SECRET`` set. ``end_on_bot_stopped``: end a reply on the data channel's
    ``bot-stopped-speaking`` instead of waiting out ``quiet_secs``. The Twilio-only options
    (``params`` other than ``bot``/``token``, numbers, ``dtmf_gap_secs``, ``identity``) are
    ignored.
    """

    bot: str | None = None
    token: str | None = field(default=None, repr=False)
    end_on_bot_stopped: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.bot is not None and not self.bot.strip():
            raise ValueError("WebRTCCallOptions.bot is empty")


@dataclass
class WebRTCTurnResult(TurnResult):
    """A :class:`TurnResult` of a browser call.

    ``bot_audio`` holds the bot's reply as int16 little-endian PCM, mono, 16 kHz (not mu-law),
    from its first audible frame to its last; ``bot_text`` is the bot's transcript of the
    reply (the data channel's ``bot-tts-text`` pieces, joined).
    """

    bot_text: str = ""
    stops_before_reply: int = field(default=0, repr=False)
    audible_bytes: int = field(default=0, repr=False)

    @property
    def bot_audio_secs(self) -> float:
        return self.bot_bytes / (2 * RECORD_RATE)

    @property
    def bot_played_secs(self) -> float:
        return self.bot_audio_secs

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["bot_text"] = self.bot_text
        d["bot_audio_format"] = f"pcm16 mono {RECORD_RATE} Hz"
        return d


@dataclass
class WebRTCCallResult(CallResult):
    """Everything measured on one simulated browser call.

    ``call_sid`` / ``stream_sid`` hold the server's ``call_id`` / ``pc_id``; ``messages`` are
    the bot's data-channel messages, each with its call-clock time ``t_ms``.
    """

    transport: ClassVar[str] = "webrtc"
    bot: str | None = None
    offer_status: int | None = None  # HTTP status of POST /webrtc/offer
    bot_ready: bool = False  # the bot's pipeline sent bot-ready
    messages: list[dict[str, Any]] = field(default_factory=list)

    @property
    def call_id(self) -> str:
        return self.call_sid

    @property
    def pc_id(self) -> str:
        return self.stream_sid

    @property
    def bot_text(self) -> str:
        """Everything the bot said on the call (its data-channel transcript)."""
        return "".join(m["data"].get("text", "") for m in self.messages
                       if m["type"] == "bot-tts-text" and isinstance(m.get("data"), dict))

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        for twilio_only in ("stream_sid", "call_sid", "account_sid", "stream_sids_seen",
                            "stream_sid_match", "marks", "close_code"):
            d.pop(twilio_only, None)
        return {"transport": self.transport, "url": self.url, "bot": self.bot,
                "call_id": self.call_id or None, "pc_id": self.pc_id or None,
                "offer_status": self.offer_status, "bot_ready": self.bot_ready,
                "bot_text": self.bot_text, **d, "messages": self.messages}


def _mic_frames(frames: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each 20 ms 48 kHz frame (sent) with the same 20 ms at RECORD_RATE (recorded), from one
    resampling of the whole utterance."""
    n = len(frames)
    low = np.asarray(soxr.resample(frames.reshape(-1), MIC_RATE, RECORD_RATE), dtype=np.int16)
    low16 = np.zeros(n * RECORD_FRAME, dtype=np.int16)
    low16[: min(low.size, low16.size)] = low[: low16.size]
    return [(frames[k], low16[k * RECORD_FRAME:(k + 1) * RECORD_FRAME]) for k in range(n)]


def _mono_int16(frame: AudioFrame) -> np.ndarray:
    """A decoded audio frame as mono int16 samples (averaging its channels)."""
    arr = frame.to_ndarray()
    channels = len(frame.layout.channels)
    if frame.format.is_planar:
        mono = arr.reshape(channels, -1).mean(axis=0) if channels > 1 else arr.reshape(-1)
    else:
        mono = arr.reshape(-1, channels).mean(axis=1) if channels > 1 else arr.reshape(-1)
    if frame.format.name.startswith("flt"):
        mono = np.asarray(mono, dtype=np.float64) * 32767.0
    return np.clip(mono, -32768, 32767).astype(np.int16)


class _ScriptedMic(MediaStreamTrack):
    """The caller's microphone: aiortc pulls one 20 ms frame per call-clock tick."""

    kind = "audio"

    def __init__(self, session: _WebRTCCallSession) -> None:
        super().__init__()
        self._session = session

    async def recv(self) -> AudioFrame:
        return await self._session.next_mic_frame()


class _WebRTCCallSession(ScriptedCall):
    """One live browser call on a connected peer (see the module docstring)."""

    turn_type = WebRTCTurnResult
    first_reply_event = "first_audio"
    reply_end_event = "reply_end"
    recorder: PcmCallRecorder

    def __init__(self, pc: RTCPeerConnection, options: CallOptions,
                 result: WebRTCCallResult) -> None:
        super().__init__(options, result, PcmCallRecorder(RECORD_RATE, RECORD_FRAME))
        self.pc = pc
        self.answer: dict[str, Any] = {}  # the bot server's answer to the offer (sdp, type)
        self.log_ = logger.bind(call_id="-")
        self._mic_t0: float | None = None
        self._mic_ticks = 0
        self._playout = bytearray()  # bot audio (16 kHz int16) not yet on the recording
        self._readers: list[asyncio.Task] = []
        self.connected = asyncio.Event()
        self.ready = asyncio.Event()
        self._hanging_up = False
        self._response_turn: WebRTCTurnResult | None = None
        self.bot_speaking = False
        self.bot_stops = 0
        self.responses_open = 0
        self.end_on_stopped = getattr(options, "end_on_bot_stopped", True)

        self.mic = _ScriptedMic(self)
        pc.addTrack(self.mic)
        self.channel = pc.createDataChannel(DATA_CHANNEL)
        self.channel.on("message", self._on_message)
        self.channel.on("close", self._on_channel_close)
        pc.on("track", self._on_track)
        pc.on("connectionstatechange", self._on_state)

    def bind(self, call_id: str) -> None:
        self.log_ = logger.bind(call_id=call_id or "-")

    # -- the microphone: one 20 ms frame per tick --------------------------------------
    async def next_mic_frame(self) -> AudioFrame:
        if self._mic_t0 is None:
            self._mic_t0 = self.loop.time()
            self.log("out", "media_start")
        await self.pace(self._mic_t0, self._mic_ticks)
        tx = self.take_frame()
        pcm48 = tx.sent if tx is not None else _MIC_SILENCE
        self.recorder.add_tick(tx.recorded if tx is not None else _REC_SILENCE,
                               self._pull_playout())
        frame = AudioFrame.from_ndarray(pcm48.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = MIC_RATE
        frame.pts = self._mic_ticks * MIC_FRAME
        frame.time_base = fractions.Fraction(1, MIC_RATE)
        self._mic_ticks += 1
        self.frame_sent(tx)
        return frame

    def utterance(self, pcm: np.ndarray) -> list[ScriptFrame]:
        return script_frames(pcm, MIC_FRAME, self.opt.voiced_rms, _mic_frames)

    def _pull_playout(self) -> np.ndarray:
        want = RECORD_FRAME * 2
        chunk = bytes(self._playout[:want])
        del self._playout[:want]
        out = np.frombuffer(chunk, dtype="<i2")
        if out.size < RECORD_FRAME:
            out = np.concatenate([out, _REC_SILENCE[out.size:]])
        return out

    # -- the bot's audio ----------------------------------------------------------------
    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            self.log("in", "track")
            self._readers.append(asyncio.ensure_future(self._read_bot_audio(track)))

    async def _read_bot_audio(self, track: MediaStreamTrack) -> None:
        resampler: Any = None
        rate = 0
        while True:
            try:
                frame = await track.recv()
            except Exception:  # MediaStreamError: the track ended
                return
            mono = _mono_int16(frame)
            if frame.sample_rate != RECORD_RATE:
                if resampler is None or rate != frame.sample_rate:
                    rate = frame.sample_rate
                    resampler = soxr.ResampleStream(rate, RECORD_RATE, 1, dtype="int16")
                mono = resampler.resample_chunk(mono)
            if mono.size:
                self._on_bot_audio(np.asarray(mono, dtype=np.int16))

    def _on_bot_audio(self, pcm: np.ndarray) -> None:
        data = pcm.astype("<i2").tobytes()
        self._playout += data
        audible = bool(np.abs(pcm.astype(np.int32)).max() > AUDIBLE_PEAK)
        if audible:
            self.last_bot_activity = self.loop.time()
        turn = self.current
        if turn is None:
            return
        if turn.kind != "greeting" and turn.speech_end_ms is None:
            if audible:
                turn.bot_bytes_during_speech += len(data)
            return
        if turn.first_bot_media_ms is None:
            if not audible:
                return
            turn.stops_before_reply = self.bot_stops
            self.reply_began(turn)
        turn.bot_audio += data
        if audible:
            turn.audible_bytes = len(turn.bot_audio)

    def finish_turn(self, turn: WebRTCTurnResult) -> None:
        """Close the turn: trim its stored reply to the last audible frame."""
        del turn.bot_audio[turn.audible_bytes:]
        turn.bot_played_bytes = turn.bot_bytes
        if self.current is turn:
            self.current = None

    # -- the data channel and the connection ---------------------------------------------
    def _on_message(self, raw: str | bytes) -> None:
        try:
            msg = json.loads(raw)
            kind = str(msg["type"])
        except (ValueError, KeyError, TypeError):
            self.result.errors.append(f"bot sent a data-channel message that is not JSON with "
                                      f"a type: {str(raw)[:120]!r}")
            return
        data = msg.get("data") if isinstance(msg.get("data"), dict) else {}
        self.result.messages.append({"t_ms": round(self.now_ms(), 1), "type": kind, "data": data})
        if kind == "bot-ready":
            self.result.bot_ready = True
            self.ready.set()
        elif kind == "bot-llm-started":
            self.responses_open += 1
            self._response_turn = self.current
        elif kind == "bot-llm-stopped":
            self.responses_open = max(0, self.responses_open - 1)
        elif kind == "bot-tts-text":
            turn = self._response_turn or self.current
            if turn is not None:
                turn.bot_text += str(data.get("text", ""))
        elif kind == "bot-started-speaking":
            self.bot_speaking = True
        elif kind == "bot-stopped-speaking":
            self.bot_speaking = False
            self.bot_stops += 1
        elif kind == "call-ended":
            self._bot_hung_up(str(data.get("reason", "")))

    def _on_channel_close(self) -> None:
        if not self._hanging_up:
            self._bot_hung_up("data channel closed")

    def _on_state(self) -> None:
        state = self.pc.connectionState
        self.log("in", "connection", state=state)
        if state == "connected":
            self.connected.set()
        elif state in ("failed", "closed") and not self._hanging_up:
            if not self.connected.is_set():
                self.result.errors.append(f"the WebRTC connection {state} before it was up")
                self.closed.set()
            else:
                self._bot_hung_up(f"connection {state}")

    def _bot_hung_up(self, reason: str) -> None:
        if self.closed.is_set() or self._hanging_up:
            return
        self.result.hung_up_by = "bot"
        self.result.close_reason = reason
        self.log("in", "closed", reason=reason)
        self.log_.info(f"bot ended the call: {reason}")
        self.closed.set()

    async def hang_up(self) -> None:
        """Send the widget's hang-up message (if the call is still up) and close the peer."""
        bot_gone = self.closed.is_set()
        self._hanging_up = True
        if not bot_gone:
            self.result.hung_up_by = "caller"
            if self.channel.readyState == "open":
                try:
                    self.channel.send(json.dumps({"type": HANGUP_MESSAGE}))
                    self.log("out", HANGUP_MESSAGE)
                    for _ in range(100):  # up to 1 s for SCTP to take the message
                        if not self.channel.bufferedAmount:
                            break
                        await asyncio.sleep(POLL)
                    await asyncio.sleep(0.05)  # and to put it on the wire
                except Exception as e:
                    self.result.errors.append(f"sending the hang-up message failed: {e!r}")
        await self.pc.close()
        for task in self._readers:
            task.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)
        self.closed.set()

    # -- the call's course -----------------------------------------------------------------
    async def begin(self) -> bool:
        """Take the bot server's answer and wait for the connection, then for ``bot-ready``
        (the script plays without it after ``connect_timeout``)."""
        await self.pc.setRemoteDescription(
            RTCSessionDescription(self.answer["sdp"], self.answer["type"]))
        await _wait_event(self.connected, self.closed, self.opt.connect_timeout)
        if not self.connected.is_set():
            if not self.result.errors:
                self.result.errors.append(
                    f"no WebRTC connection within {self.opt.connect_timeout:g} s "
                    f"(ICE state {self.pc.iceConnectionState})")
            self.result.skip_all()
            return False
        await _wait_event(self.ready, self.closed, self.opt.connect_timeout)
        if not self.ready.is_set():
            self.log("in", "no_bot_ready")
        return True

    async def end(self) -> None:
        await self.hang_up()
        self.log_.info(f"WebRTC call ended (hung up by {self.result.hung_up_by or '-'})")

    async def send_dtmf(self, digit: str) -> None:
        raise ValueError("a WebRTC call has no keypad")  # run_webrtc_call refuses DTMF turns

    def reply_over(self, turn: WebRTCTurnResult) -> bool:
        """``quiet_secs`` of bot silence, or (``end_on_bot_stopped``) the bot stopped speaking
        with no response still being generated and ``STOP_GRACE_SECS`` of silence since."""
        if self.bot_quiet(self.opt.quiet_secs):
            return True
        stopped = (self.end_on_stopped and not self.bot_speaking and self.responses_open == 0
                   and self.bot_stops > turn.stops_before_reply)
        return stopped and self.bot_quiet(min(self.opt.quiet_secs, STOP_GRACE_SECS))


# ------------------------------------------------------------------------------------------
# signalling
# ------------------------------------------------------------------------------------------


def webrtc_endpoints(base_url: str) -> tuple[str, str]:
    """``(config_url, offer_url)`` of the bot server at ``base_url`` (ValueError if not http)."""
    parts = urlsplit(base_url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        hint = (" (the WebRTC caller wants the bot server's http(s) base URL, e.g. "
                "http://127.0.0.1:8080, not its Twilio media WebSocket)"
                if parts.scheme in ("ws", "wss") else "")
        raise ValueError(f"bot server URL must look like http://HOST:PORT, got {base_url!r}{hint}")
    if parts.query or parts.fragment:
        raise ValueError(f"bot server URL must not have a query or fragment, got {base_url!r}")
    base = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
    return f"{base}/webrtc/config", f"{base}/webrtc/offer"


def _error_text(body: Any, fallback: str) -> str:
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return body["error"]
    return fallback


async def _get_ice_servers(http: Any, config_url: str) -> list[RTCIceServer]:
    """The ICE servers the bot server gives browsers (``GET /webrtc/config``)."""
    async with http.get(config_url) as r:
        if r.status == 404:
            raise OfferRefusedError(
                f"{config_url} not found (HTTP 404): is this a stepcall bot server with the "
                "WebRTC routes?")
        body = await r.json(content_type=None)
        if r.status != 200:
            raise OfferRefusedError(f"GET {config_url}: HTTP {r.status}: {_error_text(body, '')}")
    entries = body.get("iceServers") if isinstance(body, dict) else None
    if not isinstance(entries, list) or not all(
        isinstance(e, dict) and e.get("urls") for e in entries
    ):
        raise OfferRefusedError(f"GET {config_url} gave no valid iceServers list: {body!r:.200}")
    return [RTCIceServer(urls=e["urls"], username=e.get("username"),
                         credential=e.get("credential")) for e in entries]


async def _post_offer(http: Any, offer_url: str, body: dict[str, Any],
                      result: WebRTCCallResult) -> dict[str, Any]:
    async with http.post(offer_url, json=body) as r:
        result.offer_status = r.status
        try:
            answer = await r.json(content_type=None)
        except ValueError:
            answer = None
        if r.status != 200:
            detail = _error_text(answer, (await r.text())[:200])
            retry = r.headers.get("Retry-After")
            extra = f" (retry after {retry} s)" if retry else ""
            raise OfferRefusedError(f"the bot server refused the call (HTTP {r.status}): "
                                    f"{detail}{extra}")
    if not isinstance(answer, dict) or not isinstance(answer.get("sdp"), str):
        raise OfferRefusedError(f"the bot server's answer has no SDP: {str(answer)[:200]}")
    return answer


# ------------------------------------------------------------------------------------------
# the call
# ------------------------------------------------------------------------------------------


def _bot_and_token(opt: CallOptions) -> tuple[str | None, str | None]:
    bot = getattr(opt, "bot", None) or opt.params.get("bot") or None
    token = getattr(opt, "token", None) or opt.params.get("token") or None
    return bot, token


async def run_webrtc_call(base_url: str, turns: list[CallerTurn],
                          options: CallOptions | None = None) -> WebRTCCallResult:
    """Place one simulated browser call to the bot server at ``base_url`` and play ``turns``.

    ``options`` is a :class:`WebRTCCallOptions` (or a plain :class:`CallOptions`, whose
    ``params["bot"]`` / ``params["token"]`` are then used). Caller speech is synthesised at
    48 kHz first (off the event loop); ``CallerTurn.audio`` (8 kHz) is resampled. Connection
    problems and a refused offer are reported in ``CallResult.errors``; bad arguments (a DTMF
    turn, a non-http URL) raise ``ValueError`` and a missing speech engine raises
    ``SpeechUnavailableError``.
    """
    import aiohttp

    opt = options or WebRTCCallOptions()
    if not turns:
        raise ValueError("run_webrtc_call needs at least one CallerTurn")
    for k, t in enumerate(turns, start=1):
        if t.dtmf is not None:
            raise ValueError(
                f"turn {k} presses DTMF {t.dtmf!r}, which a WebRTC call cannot send (a browser "
                "call has no keypad); say the digits instead, or call the bot over Twilio's "
                "protocol (stepcall call ws://HOST:PORT/twilio/stream --dtmf ...)")
    config_url, offer_url = webrtc_endpoints(base_url)
    bot, token = _bot_and_token(opt)
    pcms = await prepare_audio(turns, MIC_RATE, opt.engine)
    result = WebRTCCallResult(url=base_url, stream_sid="", call_sid="", account_sid="", bot=bot)
    result.turns = turn_results(turns, WebRTCTurnResult)

    timeout = aiohttp.ClientTimeout(total=opt.connect_timeout)
    pc: RTCPeerConnection | None = None
    session: _WebRTCCallSession | None = None
    try:
        async with aiohttp.ClientSession(timeout=timeout) as http:
            ice = await _get_ice_servers(http, config_url)
            pc = RTCPeerConnection(RTCConfiguration(iceServers=ice))
            session = _WebRTCCallSession(pc, opt, result)
            await pc.setLocalDescription(await pc.createOffer())  # gathers ICE candidates
            request_data = {k: v for k, v in (("bot", bot), ("token", token)) if v}
            answer = await _post_offer(http, offer_url, {
                "sdp": pc.localDescription.sdp, "type": pc.localDescription.type,
                "request_data": request_data}, result)
    except (OfferRefusedError, aiohttp.ClientError, TimeoutError, ValueError) as e:
        if isinstance(e, OfferRefusedError):
            result.errors.append(str(e))
        else:
            result.errors.append(f"could not reach the bot server at {base_url}: "
                                 f"{e or type(e).__name__}")
        if pc is not None:
            await pc.close()
        result.skip_all()
        return result
    assert session is not None
    result.call_sid = str(answer.get("call_id") or "")
    result.stream_sid = str(answer.get("pc_id") or "")
    session.bind(result.call_sid)
    session.start_clock()
    session.log("in", "answer", call_id=result.call_sid, pc_id=result.stream_sid)
    session.log_.info(f"WebRTC call to {base_url} (bot {bot or 'default'}) answered")
    session.answer = answer
    await session.place(turns, pcms)
    return result


async def _wait_event(event: asyncio.Event, closed: asyncio.Event, secs: float) -> None:
    waits = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(closed.wait())]
    await asyncio.wait(waits, timeout=secs, return_when=asyncio.FIRST_COMPLETED)
    for w in waits:
        w.cancel()


def bot_reply_pcm(turn: TurnResult) -> np.ndarray:
    """The bot's reply in a WebRTC turn as int16 PCM, mono, 16 kHz."""
    return np.frombuffer(bytes(turn.bot_audio), dtype="<i2").copy()


__all__ = [
    "HANGUP_MESSAGE", "OfferRefusedError", "WebRTCCallOptions", "WebRTCCallResult",
    "WebRTCTurnResult", "bot_reply_pcm", "run_webrtc_call", "webrtc_endpoints",
]
