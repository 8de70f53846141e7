"""Client of the stepcall model service (protocol v1, ``stepcall/PROTOCOL.md``).

One :class:`ModelServiceClient` is one call session over one WebSocket::

    client = ModelServiceClient("ws://127.0.0.1:8090/v1/session", token="...")
    started = await client.connect(SessionStart(call_id="c1", input_sample_rate=8000,
                                                output_sample_rate=8000))
    await client.send_audio(pcm16)         # while the user speaks
    await client.commit()
    await client.create_response()
    async for event in client.events():    # ResponseStarted, TextDelta, AudioChunk, ToolCall,
        ...                                # ResponseDone, ErrorEvent, then Closed at the end
    await client.close()

Sends after the connection is gone are dropped (``events()`` reports :class:`Closed`), so a
dead model service never raises inside the audio path.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import websockets
from loguru import logger
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect

from stepcall import protocol as p
from stepcall.protocol import (
    ErrorEvent,
    InputAudioTranscript,
    ResponseDone,
    ResponseStarted,
    Sampling,
    SessionEnded,
    SessionStart,
    SessionStarted,
    TextDelta,
    ToolCall,
    TurnVerdict,
)

__all__ = [
    "AudioChunk",
    "ClientEvent",
    "Closed",
    "ErrorEvent",
    "InputAudioTranscript",
    "ModelServiceAuthError",
    "ModelServiceBusy",
    "ModelServiceClient",
    "ModelServiceError",
    "ResponseDone",
    "ResponseStarted",
    "Sampling",
    "SessionStart",
    "SessionStarted",
    "TextDelta",
    "ToolCall",
    "TurnVerdict",
]


class ModelServiceError(Exception):
    """The model service refused or failed a session (``code`` is the protocol error code)."""

    def __init__(self, message: str, code: str = p.INTERNAL) -> None:
        super().__init__(message)
        self.code = code


class ModelServiceBusy(ModelServiceError):
    """The model service is at its session limit; try another instance or later."""


class ModelServiceAuthError(ModelServiceError):
    """The token was missing or wrong (close code 4401)."""


@dataclass
class AudioChunk:
    """Bot audio of the current response: PCM16 mono bytes at ``sample_rate``."""

    pcm: bytes
    sample_rate: int
    response_id: str | None = None


@dataclass
class Closed:
    """The connection is closed; the last event of :meth:`ModelServiceClient.events`."""

    reason: str
    code: int | None = None


ClientEvent = (
    ResponseStarted
    | TextDelta
    | AudioChunk
    | ToolCall
    | ResponseDone
    | ErrorEvent
    | SessionEnded
    | Closed
)


class ModelServiceClient:
    """One model-service session over a WebSocket (see the module docstring)."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        open_timeout: float = 10.0,
        max_event_bytes: int = 4 * 1024 * 1024,
    ) -> None:
        self.url = url
        self._token = token
        self._open_timeout = open_timeout
        self._max_event_bytes = max_event_bytes
        self._ws: ClientConnection | None = None
        self.session: SessionStarted | None = None
        self._input_rate = 16000
        self._response_id: str | None = None
        self._closed = False
        self._warned_closed = False
        self._check_ids = 0
        self._checks: dict[int, asyncio.Future[TurnVerdict | None]] = {}

    def __repr__(self) -> str:  # never show the token
        return f"ModelServiceClient({self.url!r})"

    # -- connection -----------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True between a successful :meth:`connect` and the close."""
        return self._ws is not None and not self._closed

    async def connect(self, start: SessionStart) -> SessionStarted:
        """Open the socket, send ``session.start`` and wait for ``session.started``.

        Raises :class:`ModelServiceBusy` (service full), :class:`ModelServiceAuthError`
        (token refused) or :class:`ModelServiceError` (anything else).
        """
        if self._ws is not None:
            raise ModelServiceError("already connected")
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else None
        try:
            ws = await ws_connect(
                self.url,
                additional_headers=headers,
                open_timeout=self._open_timeout,
                max_size=self._max_event_bytes,
                compression=None,
                proxy=None,
            )
        except (OSError, TimeoutError, websockets.InvalidHandshake, websockets.InvalidURI) as e:
            raise ModelServiceError(
                f"cannot connect to the model service at {self.url}: {e}"
            ) from e
        self._ws = ws
        self._input_rate = start.input_sample_rate
        try:
            await ws.send(p.message_to_json(start))
            while True:
                raw = await asyncio.wait_for(ws.recv(), self._open_timeout)
                if isinstance(raw, bytes):
                    continue
                event = p.parse_server_event(raw)
                if isinstance(event, SessionStarted):
                    self.session = event
                    return event
                if isinstance(event, ErrorEvent):
                    cls = ModelServiceBusy if event.code == p.BUSY else ModelServiceError
                    raise cls(f"model service refused the session: {event.message}", event.code)
        except websockets.ConnectionClosed as e:
            code = e.rcvd.code if e.rcvd else None
            await self._abort()
            if code == p.CLOSE_UNAUTHORIZED:
                raise ModelServiceAuthError(
                    "model service refused the token (close 4401)", "unauthorized"
                ) from e
            raise ModelServiceError(f"model service closed the connection ({code}): {e}") from e
        except TimeoutError as e:
            await self._abort()
            raise ModelServiceError("model service did not answer session.start in time") from e
        except p.ProtocolError as e:
            await self._abort()
            raise ModelServiceError(f"bad answer from the model service: {e}") from e
        except BaseException:
            await self._abort()
            raise

    async def _abort(self) -> None:
        ws, self._ws = self._ws, None
        self._closed = True
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.close()

    async def close(self) -> None:
        """End the session (``session.end``) and close the socket; safe to call twice."""
        ws = self._ws
        if ws is None or self._closed:
            self._closed = True
            return
        self._closed = True
        with contextlib.suppress(Exception):
            await ws.send(p.message_to_json(p.SessionEnd()))
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.close(), 2.0)

    # -- sending --------------------------------------------------------------------------------

    async def _send(self, data: str | bytes) -> None:
        ws = self._ws
        if ws is None:
            raise ModelServiceError("not connected: call connect() first")
        try:
            await ws.send(data)
        except websockets.ConnectionClosed:
            if not self._warned_closed:
                self._warned_closed = True
                logger.warning("model service connection is closed; dropping outgoing messages")

    async def _send_message(self, message: p.ClientMessage) -> None:
        await self._send(p.message_to_json(message))

    async def send_audio(self, pcm16: bytes) -> None:
        """User audio (PCM16 mono at the session's input rate), split into ≤ 1 s messages."""
        if len(pcm16) % 2:
            raise ValueError(f"PCM16 audio needs an even byte count, got {len(pcm16)}")
        step = p.max_audio_bytes(self._input_rate)
        for i in range(0, len(pcm16), step):
            await self._send(bytes(pcm16[i : i + step]))

    async def commit(self) -> None:
        """The user turn is complete."""
        await self._send_message(p.InputAudioCommit())

    async def clear_audio(self) -> None:
        """Drop the uncommitted user audio."""
        await self._send_message(p.InputAudioClear())

    async def append_text(self, text: str, role: str = "human") -> None:
        """A text message into the history: ``role`` human, system, or assistant (words the bot
        said outside a response, e.g. the pre-rendered greeting it played; the next reply
        continues after them)."""
        await self._send_message(p.InputTextAppend(text=text, role=role))

    async def create_response(self, instructions: str | None = None) -> None:
        """Ask for a reply now."""
        await self._send_message(p.ResponseCreate(instructions=instructions))

    async def cancel_response(self, heard_ms: float | None = None) -> None:
        """Barge-in: stop the response; the model keeps only ``heard_ms`` of it."""
        await self._send_message(
            p.ResponseCancel(heard_ms=None if heard_ms is None else float(heard_ms))
        )

    async def send_tool_result(self, call_id: str, output: str) -> None:
        """The result of a ``tool.call``."""
        await self._send_message(p.ToolResult(call_id=call_id, output=output))

    async def update_session(
        self,
        *,
        system_prompt: str | None = None,
        voice: str | None = None,
        style: str | None = None,
        tools: list[dict[str, Any]] | None = None,
    ) -> None:
        """Change persona, voice, style or tools mid-call (``None`` keeps the current value)."""
        await self._send_message(
            p.SessionUpdate(system_prompt=system_prompt, voice=voice, style=style, tools=tools)
        )

    @property
    def turn_model(self) -> str | None:
        """The turn model the service runs for :meth:`check_turn` (None: none)."""
        return self.session.turn_model if self.session is not None else None

    async def check_turn(self, pcm16: bytes, sample_rate: int) -> TurnVerdict | None:
        """Ask the service's turn model whether the turn in ``pcm16`` (PCM16 mono at
        ``sample_rate``, at most 8 s) is complete.

        The verdict comes through :meth:`events` (which must be running); None when the
        service runs no turn model or the connection closes first. A task that stops waiting
        (cancelled, timed out) forgets the check: its late verdict is dropped.
        """
        if self.turn_model is None or not self.connected:
            return None
        self._check_ids += 1
        check_id = self._check_ids
        future: asyncio.Future[TurnVerdict | None] = asyncio.get_running_loop().create_future()
        self._checks[check_id] = future
        try:
            await self._send_message(p.TurnCheck.of(check_id, pcm16, sample_rate))
            if not self.connected:
                return None
            return await future
        finally:
            self._checks.pop(check_id, None)

    def _verdict(self, event: TurnVerdict) -> None:
        future = self._checks.pop(event.check_id, None)
        if future is not None and not future.done():
            future.set_result(event)

    def _drop_checks(self) -> None:
        checks, self._checks = self._checks, {}
        for future in checks.values():
            if not future.done():
                future.set_result(None)

    # -- receiving ------------------------------------------------------------------------------

    async def events(self) -> AsyncIterator[ClientEvent]:
        """Server events until the connection closes; the last one is :class:`Closed`.

        Malformed events are logged and skipped.
        """
        ws = self._ws
        if ws is None:
            raise ModelServiceError("not connected: call connect() first")
        rate = self.session.output_sample_rate if self.session else 24000
        try:
            async for raw in ws:
                if isinstance(raw, bytes):
                    yield AudioChunk(raw, rate, self._response_id)
                    continue
                try:
                    event = p.parse_server_event(raw)
                except p.ProtocolError as e:
                    logger.warning(f"ignoring a malformed model-service event: {e}")
                    continue
                if isinstance(event, TurnVerdict):
                    self._verdict(event)  # answered to check_turn, not an event of the call
                    continue
                if isinstance(event, ResponseStarted):
                    self._response_id = event.response_id
                elif isinstance(event, ResponseDone) and event.response_id == self._response_id:
                    self._response_id = None
                yield event
        except websockets.ConnectionClosed:
            pass
        finally:
            self._drop_checks()
        self._closed = True
        code = ws.close_code
        reason = ws.close_reason or ("closed" if code == 1000 else "connection lost")
        yield Closed(reason, code)
