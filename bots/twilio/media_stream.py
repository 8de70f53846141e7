"""Twilio Media Streams input, hardened: the ``start`` handshake and a guard on every message.

A phone line is public, and ``/twilio/stream`` is an open WebSocket: whatever arrives on it is
checked here before Pipecat's ``TwilioFrameSerializer`` sees it (that serializer raises on bad
base64 or a non-object message, which would end the call).

- :func:`read_start` reads the handshake (an optional ``connected``, then ``start``) and returns
  a :class:`TwilioStart`, or raises :class:`MediaStreamError` with a reason for the log.
- :func:`check_media_message` says why one later text frame must be dropped (None: pass it on):
  over the size cap, not a JSON object, bad base64, audio too long, wrong event order, ...
- :class:`MediaStreamGuard` wraps the call's WebSocket for the Pipecat transport: bad frames are
  dropped (logged with the call id, throttled), a stream silent for ``idle_secs`` or longer than
  ``max_call_secs`` is ended, and a socket that closes without Twilio's ``stop`` message (a
  network drop) is reported through ``on_abnormal_end`` so the call record says so.

Twilio sends a ``media`` message every 20 ms for the whole call (silence included), so a stream
with no message for seconds is dead, not quiet.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from loguru import logger

#: Largest accepted text frame; a 20 ms media message is ~300 bytes, a ``start`` a few KB.
MAX_MESSAGE_BYTES = 64 * 1024
#: Largest decoded audio in one ``media`` message (2 s of 8 kHz mu-law; Twilio sends 20 ms).
MAX_MEDIA_BYTES = 16_000
#: A stream that sends nothing for this long is ended (Twilio sends media every 20 ms).
IDLE_SECS = 20.0
#: How long a new socket may take to send ``start``.
START_TIMEOUT_SECS = 10.0
#: After ``start``: the events Twilio sends us.
CALL_EVENTS = ("media", "dtmf", "mark", "stop")
_SID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_PARAM_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_MAX_PARAMS = 32
_MAX_PARAM_CHARS = 1024
#: Bad frames logged one by one per call; after that one line per ``_LOG_EVERY``.
_LOG_FIRST = 5
_LOG_EVERY = 100


class MediaStreamError(ValueError):
    """A media stream that must be refused (the message says why)."""

    def __init__(self, reason: str, call_id: str | None = None) -> None:
        super().__init__(reason)
        self.call_id = call_id


@dataclass(frozen=True)
class StreamLimits:
    """Caps of one media stream (``Settings``: STEPCALL_WS_MAX_MESSAGE_BYTES,
    STEPCALL_STREAM_IDLE_SECS, STEPCALL_MAX_CALL_SECS)."""

    max_message_bytes: int = MAX_MESSAGE_BYTES
    max_media_bytes: int = MAX_MEDIA_BYTES
    idle_secs: float = IDLE_SECS
    max_call_secs: float | None = None
    start_timeout_secs: float = START_TIMEOUT_SECS


@dataclass(frozen=True)
class TwilioStart:
    """What a valid ``start`` message tells us."""

    call_sid: str
    stream_sid: str
    custom_parameters: dict[str, str] = field(default_factory=dict)


def _size_error(text: str, limit: int) -> str | None:
    if len(text) > limit or (len(text) * 4 > limit and len(text.encode("utf-8")) > limit):
        return f"message over {limit} bytes"
    return None


def _load(text: str, limit: int) -> dict[str, Any]:
    too_big = _size_error(text, limit)
    if too_big:
        raise MediaStreamError(too_big)
    try:
        message = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise MediaStreamError(f"message is not JSON ({type(e).__name__})") from None
    if not isinstance(message, dict):
        raise MediaStreamError(f"message is a JSON {type(message).__name__}, not an object")
    event = message.get("event")
    if not isinstance(event, str):
        raise MediaStreamError("message has no string 'event'")
    return message


def parse_start(message: dict[str, Any]) -> TwilioStart:
    """Validate a decoded ``start`` message (``MediaStreamError`` names the bad field)."""
    start = message.get("start")
    if not isinstance(start, dict):
        raise MediaStreamError("start message has no 'start' object")
    call_sid, stream_sid = start.get("callSid"), start.get("streamSid") or message.get("streamSid")
    if not isinstance(call_sid, str) or not _SID.fullmatch(call_sid):
        raise MediaStreamError("start message has no valid callSid")
    if not isinstance(stream_sid, str) or not _SID.fullmatch(stream_sid):
        raise MediaStreamError("start message has no valid streamSid", call_sid)
    raw = start.get("customParameters") or {}
    if not isinstance(raw, dict) or len(raw) > _MAX_PARAMS:
        raise MediaStreamError(f"customParameters must be an object of <= {_MAX_PARAMS}", call_sid)
    params: dict[str, str] = {}
    for name, value in raw.items():
        if not _PARAM_NAME.fullmatch(name):
            raise MediaStreamError(f"bad customParameters name {name[:40]!r}", call_sid)
        if not isinstance(value, str) or len(value) > _MAX_PARAM_CHARS:
            raise MediaStreamError(f"customParameters[{name!r}] must be a short string", call_sid)
        params[name] = value
    return TwilioStart(call_sid=call_sid, stream_sid=stream_sid, custom_parameters=params)


async def close_socket(websocket: Any, code: int = 1000) -> None:
    """Close an accepted media WebSocket unless the caller's side has already gone: a socket
    whose client sent its close, or dropped the connection with no close frame, is left as it
    is (closing it again raised ``ClientDisconnected`` out of the handler: "Exception in ASGI
    application"). A close racing the caller's disconnect is not an error either."""
    from starlette.websockets import WebSocketDisconnect, WebSocketState

    if WebSocketState.DISCONNECTED in (websocket.client_state, websocket.application_state):
        return
    try:
        await websocket.close(code=code)
    except (OSError, RuntimeError, WebSocketDisconnect):  # uvicorn's ClientDisconnected is one
        pass


async def read_start(websocket: Any, limits: StreamLimits | None = None) -> TwilioStart:
    """Read the handshake of an accepted media WebSocket: ``connected`` (optional), ``start``.

    Raises :class:`MediaStreamError` for anything else, a socket that closes first, or no
    ``start`` within ``limits.start_timeout_secs``.
    """
    limits = limits or StreamLimits()
    try:
        async with asyncio.timeout(limits.start_timeout_secs):
            for _ in range(2):
                raw = await websocket.receive()
                if raw.get("type") == "websocket.disconnect":
                    raise MediaStreamError("socket closed before the start message")
                text = raw.get("text")
                if text is None:
                    raise MediaStreamError("binary frame before the start message")
                message = _load(text, limits.max_message_bytes)
                if message["event"] == "connected":
                    continue
                if message["event"] != "start":
                    raise MediaStreamError(f"'{message['event'][:40]}' before the start message")
                return parse_start(message)
    except TimeoutError:
        raise MediaStreamError(f"no start message within {limits.start_timeout_secs:g} s") from None
    raise MediaStreamError("no start message after 'connected'")


def check_media_message(text: str, limits: StreamLimits | None = None) -> str | None:
    """Why the text frame ``text`` (after ``start``) must be dropped; None when it is fine.

    Everything this accepts, Pipecat's ``TwilioFrameSerializer.deserialize`` handles without
    raising (``tests/fuzz/test_twilio_messages_fuzz.py``).
    """
    return _check(text, limits or StreamLimits())[1]


def _check(text: str, limits: StreamLimits) -> tuple[str | None, str | None]:
    """``(event, None)`` for a good frame, ``(None, reason)`` for one to drop."""
    try:
        message = _load(text, limits.max_message_bytes)
    except MediaStreamError as e:
        return None, str(e)
    event = message["event"]
    if event not in CALL_EVENTS:
        return None, f"unexpected event {event[:40]!r} after start"
    if event == "media":
        media = message.get("media")
        if not isinstance(media, dict):
            return None, "media message without a 'media' object"
        payload = media.get("payload")
        if not isinstance(payload, str):
            return None, "media message without a string payload"
        if len(payload) > (limits.max_media_bytes * 4) // 3 + 4:
            return None, f"media payload over {limits.max_media_bytes} bytes"
        try:
            base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            return None, "media payload is not base64"
    elif event == "dtmf":
        dtmf = message.get("dtmf")
        if not isinstance(dtmf, dict) or not isinstance(dtmf.get("digit"), str):
            return None, "dtmf message without a string digit"
    elif event == "mark":
        mark = message.get("mark")
        if not isinstance(mark, dict) or not isinstance(mark.get("name", ""), str):
            return None, "mark message without a name"
    return event, None


class MediaStreamGuard:
    """The media WebSocket of one call as the Pipecat transport sees it (a checking proxy).

    ``receive()`` passes on only frames :func:`check_media_message` accepts and turns an idle or
    over-long stream into a disconnect. Every other attribute is the wrapped WebSocket's.
    """

    def __init__(
        self,
        websocket: Any,
        call_id: str,
        limits: StreamLimits | None = None,
        *,
        on_abnormal_end: Callable[[str], Any] | None = None,
    ) -> None:
        """``on_abnormal_end(reason)`` is called once when the stream ends without ``stop``."""
        self._ws = websocket
        self.call_id = call_id
        self.limits = limits or StreamLimits()
        self.on_abnormal_end = on_abnormal_end
        self.accepted = 0
        self.dropped = 0
        self.stopped = False  # Twilio sent ``stop`` (the call ended normally)
        self.end_reason: str | None = None  # why the stream ended abnormally
        self._closing = False
        self._started = time.monotonic()
        self._log = logger.bind(call_id=call_id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ws, name)

    @property
    def websocket(self) -> Any:
        """The wrapped WebSocket."""
        return self._ws

    def _abnormal(self, reason: str) -> None:
        if self.end_reason is not None:
            return
        self.end_reason = reason
        self._log.warning(f"media stream ended: {reason}")
        if self.on_abnormal_end is not None:
            try:
                self.on_abnormal_end(reason)
            except Exception:
                self._log.exception("on_abnormal_end failed")

    def _drop(self, reason: str) -> None:
        self.dropped += 1
        if self.dropped <= _LOG_FIRST:
            self._log.warning(f"dropped a bad media-stream message: {reason}")
        elif self.dropped % _LOG_EVERY == 0:
            self._log.warning(f"{self.dropped} bad media-stream messages dropped (last: {reason})")

    def _timeout(self) -> tuple[float, str]:
        idle = self.limits.idle_secs
        if self.limits.max_call_secs:
            left = self._started + self.limits.max_call_secs - time.monotonic()
            if left < idle:
                return max(0.0, left), f"call reached the {self.limits.max_call_secs:g} s limit"
        return idle, f"no media for {idle:g} s (stream idle)"

    async def receive(self) -> dict[str, Any]:
        """The next acceptable message (ASGI dict); a disconnect when the stream ends."""
        while True:
            timeout, why = self._timeout()
            try:
                async with asyncio.timeout(timeout):  # no extra task per frame (50 frames/s)
                    message = await self._ws.receive()
            except TimeoutError:
                self._abnormal(why)
                return {"type": "websocket.disconnect", "code": 1001, "reason": why}
            kind = message.get("type")
            if kind == "websocket.disconnect":
                if not self.stopped and not self._closing:
                    code = message.get("code")
                    self._abnormal(f"socket closed without a stop message (close code {code})")
                return message
            if kind != "websocket.receive":
                return message
            text = message.get("text")
            if text is None:
                self._drop("binary frame (Twilio sends text)")
                continue
            event, reason = _check(text, self.limits)
            if reason is not None:
                self._drop(reason)
                continue
            self.accepted += 1
            if event == "stop":
                self.stopped = True
            return message

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        """Close the socket (our side ends the call: not an abnormal end)."""
        self._closing = True
        await self._ws.close(code=code, reason=reason)


__all__ = [
    "CALL_EVENTS",
    "MAX_MESSAGE_BYTES",
    "MediaStreamError",
    "MediaStreamGuard",
    "StreamLimits",
    "TwilioStart",
    "check_media_message",
    "close_socket",
    "parse_start",
    "read_start",
]
