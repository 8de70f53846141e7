"""One model-service call session: the protocol state machine behind ``WS /v1/session``.

:class:`CallSession` receives the client's messages (already split into text and binary by the
server), validates them with :mod:`stepcall.protocol`, drives a backend
:class:`~model_service.backends.base.BackendSession`, runs each response in its own task and
streams its events back. It never lets bad input end the session: problems become ``error``
events (fatal only for a wrong protocol version or when the service is busy / not ready).

:class:`ServiceState` is what all sessions of one app share: the backend, admission control
(``max_sessions``) and the metrics. Audio rates are converted with the kernel's
:class:`~stepcall.audio.resample.StreamResampler`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np
from loguru import logger

from model_service.backends import base
from model_service.metrics import ServiceMetrics
from model_service.sampling import resolve as resolve_sampling
from model_service.turn_checks import TurnModel, answer_turn_check
from stepcall import protocol as p
from stepcall.audio.pcm import float_to_pcm16, pcm16_to_float
from stepcall.audio.resample import StreamResampler

CANCEL_GRACE_S = 2.0  # after response.cancel, the backend has this long to end the response
CLOSE_GRACE_S = 2.0  # on disconnect, a running response has this long to stop


# --------------------------------------------------------------------------------------------
# audio
# --------------------------------------------------------------------------------------------


#: ``turn.check`` inferences one session may have under way (a bot has one per pause); more
#: get an error verdict at once, so one client cannot queue the turn model for everyone.
MAX_PENDING_TURN_CHECKS = 4


# --------------------------------------------------------------------------------------------
# shared service state
# --------------------------------------------------------------------------------------------


class ServiceState:
    """What the sessions of one app share: backend, admission control and metrics."""

    def __init__(
        self,
        backend: base.Backend | None,
        *,
        max_sessions: int,
        metrics: ServiceMetrics | None = None,
        backend_reason: str = "",
        turn_model: TurnModel | None = None,
    ) -> None:
        if max_sessions < 1:
            raise ValueError(f"max_sessions must be >= 1, got {max_sessions}")
        self.max_sessions = max_sessions
        self.metrics = metrics or ServiceMetrics()
        self.backend: base.Backend | None = None
        self.backend_reason = backend_reason
        self.active_sessions = 0
        self.sessions: dict[str, CallSession] = {}  # started sessions by session_id
        #: What answers the sessions' ``turn.check`` (None: an error verdict each).
        self.turn_model = turn_model
        if backend is not None:
            self.set_backend(backend)

    @property
    def ready(self) -> bool:
        """True once a backend is loaded."""
        return self.backend is not None

    def set_backend(self, backend: base.Backend | None) -> None:
        """Install (or remove) the backend; ``/readyz`` follows."""
        self.backend = backend
        self.metrics.ready.set(1 if backend is not None else 0)

    def try_admit(self) -> bool:
        """Reserve a session slot; False when ``max_sessions`` are open."""
        if self.active_sessions >= self.max_sessions:
            self.metrics.sessions_rejected_busy.inc()
            return False
        self.active_sessions += 1
        self.metrics.sessions_active.set(self.active_sessions)
        self.metrics.sessions_total.inc()
        return True

    def release(self) -> None:
        """Give a slot back."""
        self.active_sessions = max(0, self.active_sessions - 1)
        self.metrics.sessions_active.set(self.active_sessions)


class Transport(Protocol):
    """The socket a :class:`CallSession` talks through (the server adapts its WebSocket)."""

    async def send_text(self, text: str) -> None: ...

    async def send_bytes(self, data: bytes) -> None: ...

    async def close(self, code: int, reason: str = "") -> None: ...


# --------------------------------------------------------------------------------------------
# the session
# --------------------------------------------------------------------------------------------


@dataclass
class _Response:
    """Book-keeping of the response being generated."""

    response_id: str
    instructions: str | None
    created_at: float
    task: asyncio.Task | None = None
    cancel_requested: bool = False
    first_output_at: float | None = None
    first_audio_at: float | None = None
    text: list[str] = field(default_factory=list)
    audio_samples: int = 0


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:16]}"


def _ms(start: float, end: float | None) -> float | None:
    return None if end is None else round((end - start) * 1000.0, 1)


class CallSession:
    """One WebSocket session: validates messages, drives the backend session, streams responses."""

    def __init__(self, service: ServiceState, transport: Transport, *, peer: str = "") -> None:
        self.service = service
        self.transport = transport
        self.peer = peer
        self.session_id = _new_id("sess")
        self.call_id = ""
        self.start: p.SessionStart | None = None
        self.config: base.SessionConfig | None = None
        self.backend_session: base.BackendSession | None = None
        self.admitted = False
        self.closed = False
        self._transport_open = True
        self._send_lock = asyncio.Lock()
        self._response: _Response | None = None
        self._last_response_id: str | None = None
        self._pending_tool_calls: set[str] = set()
        self._deferred_tool_results: list[tuple[str, str]] = []
        self._committed_turns = 0  # user turns committed so far
        self._transcribed_turns = 0  # of which input_audio.transcript was sent
        self._transcribing: asyncio.Task | None = None
        self._turn_checks: set[asyncio.Task] = set()  # turn.check inferences under way
        self._in_resampler: StreamResampler | None = None
        self._out_resampler: StreamResampler | None = None
        self._log = logger.bind(call_id="-", session_id=self.session_id)

    # -- logging --------------------------------------------------------------------------------

    def tag(self) -> str:
        """``[call CALL_ID SESSION_ID]``, the prefix of this session's log lines."""
        return f"[call {self.call_id or '-'} {self.session_id}]"

    def info(self, msg: str) -> None:
        """Log with the call id attached (bound and as a prefix)."""
        self._log.info(f"{self.tag()} {msg}")

    def warning(self, msg: str) -> None:
        """Log a warning with the call id."""
        self._log.warning(f"{self.tag()} {msg}")

    # -- sending --------------------------------------------------------------------------------

    async def _send_event(self, event: p.ServerEvent) -> None:
        await self._send(p.event_to_json(event))

    async def _send(self, data: str | bytes) -> None:
        if not self._transport_open:
            return
        try:
            async with self._send_lock:
                if isinstance(data, bytes):
                    await self.transport.send_bytes(data)
                else:
                    await self.transport.send_text(data)
        except Exception as e:  # the client went away; the receive loop will notice
            self._transport_open = False
            self._log.debug(f"{self.tag()} send failed: {e!r}")

    async def send_error(
        self, code: str, message: str, *, fatal: bool = False, response_id: str | None = None
    ) -> None:
        """Send an ``error`` event (and count it)."""
        self.service.metrics.errors_total.labels(code=code).inc()
        level = "warning" if code != p.INTERNAL else "error"
        getattr(self._log, level)(f"{self.tag()} error {code}: {message}")
        await self._send_event(
            p.ErrorEvent(
                code=code,
                message=message,
                fatal=fatal,
                session_id=self.session_id,
                response_id=response_id,
            )
        )

    async def close_transport(self, code: int, reason: str = "") -> None:
        """Close the socket with ``code`` (once)."""
        if not self._transport_open:
            return
        self._transport_open = False
        with contextlib.suppress(Exception):
            await self.transport.close(code, reason)

    # -- input ----------------------------------------------------------------------------------

    async def handle_text(self, text: str | bytes) -> bool:
        """Handle one text message; returns False when the connection should end."""
        try:
            message = p.parse_client_message(text)
        except p.ProtocolError as e:
            if e.code == p.PROTOCOL_VERSION_ERROR:
                await self.send_error(e.code, e.message, fatal=True)
                await self.close_transport(p.CLOSE_PROTOCOL, "protocol version")
                return False
            await self.send_error(e.code, e.message)
            return True
        except Exception as e:  # a parser bug must not end the session (fuzzed: never seen)
            self._log.exception(f"{self.tag()} unparseable message")
            await self.send_error(p.BAD_MESSAGE, f"unparseable message: {type(e).__name__}")
            return True
        if self.backend_session is None and not isinstance(message, p.SessionStart):
            await self.send_error(p.NO_SESSION, f"'{message.type}' before session.start")
            return True
        try:
            return await self._dispatch(message)
        except ValueError as e:  # the backend refused the request (unknown voice, empty turn)
            await self.send_error(p.BAD_MESSAGE, f"{message.type}: {e}")
            return True
        except Exception as e:  # a backend failure must not end the session
            self._log.exception(f"{self.tag()} {message.type} failed")
            await self.send_error(p.INTERNAL, f"{message.type} failed: {type(e).__name__}: {e}")
            return True

    async def handle_binary(self, data: bytes) -> None:
        """Handle one binary (user audio) message."""
        if self.start is None or self.backend_session is None:
            await self.send_error(p.BAD_AUDIO, "audio before session.start")
            return
        limit = p.max_audio_bytes(self.start.input_sample_rate)
        if len(data) > limit:
            await self.send_error(
                p.TOO_LARGE,
                f"audio message of {len(data)} bytes; at most {limit} bytes "
                f"({p.MAX_AUDIO_SECONDS:g} s at {self.start.input_sample_rate} Hz)",
            )
            return
        if len(data) % 2:
            await self.send_error(p.BAD_AUDIO, f"odd byte count {len(data)} (PCM16 needs pairs)")
            return
        if not data:
            return
        audio = pcm16_to_float(data)
        assert self._in_resampler is not None
        audio16k = self._in_resampler.process(audio)
        if audio16k.size:
            try:
                await self.backend_session.append_audio(audio16k)
            except Exception as e:
                self._log.exception(f"{self.tag()} append_audio failed")
                await self.send_error(p.INTERNAL, f"append_audio failed: {e}")

    async def _dispatch(self, m: p.ClientMessage) -> bool:
        bs = self.backend_session
        if isinstance(m, p.SessionStart):
            return await self._start(m)
        assert bs is not None and self.start is not None and self._in_resampler is not None
        if isinstance(m, p.InputAudioCommit):
            tail = self._in_resampler.flush()
            if tail.size:
                await bs.append_audio(tail)
            await bs.commit()
            self._committed_turns += 1
        elif isinstance(m, p.InputAudioClear):
            self._in_resampler.reset()
            await bs.clear_audio()
        elif isinstance(m, p.InputTextAppend):
            await bs.append_text(m.text, m.role)
        elif isinstance(m, p.ResponseCreate):
            await self._create_response(m.instructions)
        elif isinstance(m, p.ResponseCancel):
            await self._cancel_response(m.heard_ms)
        elif isinstance(m, p.ToolResult):
            if m.call_id not in self._pending_tool_calls:
                await self.send_error(
                    p.UNKNOWN_TOOL_CALL, f"tool.result for unknown call_id {m.call_id!r}"
                )
                return True
            self._pending_tool_calls.discard(m.call_id)
            if self._response is not None:
                # The backend records the call with the reply when the response ends; a result
                # sent sooner (clients may answer a tool.call at once) is applied then.
                self._deferred_tool_results.append((m.call_id, m.output))
            else:
                await bs.add_tool_result(m.call_id, m.output)
        elif isinstance(m, p.SessionUpdate):
            await self._update(m)
        elif isinstance(m, p.TurnCheck):
            if len(self._turn_checks) >= MAX_PENDING_TURN_CHECKS:
                error = f"more than {MAX_PENDING_TURN_CHECKS} turn checks pending"
                self.service.metrics.turn_checks.labels(result="error").inc()
                await self._send_event(p.TurnVerdict(check_id=m.check_id, error=error))
                return True
            task = asyncio.create_task(self._turn_check(m))
            self._turn_checks.add(task)
            task.add_done_callback(self._turn_checks.discard)
        elif isinstance(m, p.SessionEnd):
            self.info("session.end")
            await self.close("session.end")
            await self._send_event(p.SessionEnded(session_id=self.session_id))
            await self.close_transport(p.CLOSE_NORMAL, "session ended")
            return False
        return True

    async def _start(self, m: p.SessionStart) -> bool:
        if self.backend_session is not None:
            await self.send_error(p.BAD_MESSAGE, "session.start: the session is already started")
            return True
        self.call_id = m.call_id
        self._log = logger.bind(call_id=m.call_id or "-", session_id=self.session_id)
        backend = self.service.backend
        if backend is None:
            await self.send_error(p.NOT_READY, "the model is still loading", fatal=True)
            await self.close_transport(p.CLOSE_NOT_READY, "not ready")
            return False
        if not self.service.try_admit():
            await self.send_error(
                p.BUSY,
                f"the model service is at its limit of {self.service.max_sessions} sessions",
                fatal=True,
            )
            await self.close_transport(p.CLOSE_BUSY, "busy")
            return False
        self.admitted = True
        sampling = resolve_sampling(m.sampling, m.max_response_tokens)
        self.config = base.SessionConfig(
            call_id=m.call_id,
            system_prompt=m.system_prompt,
            voice=m.voice,
            style=m.style,
            tools=list(m.tools),
            sampling=sampling,
            input_transcription=m.input_transcription,
        )
        try:
            self.backend_session = await backend.open_session(self.config)
        except Exception as e:
            code = p.BAD_MESSAGE if isinstance(e, ValueError) else p.INTERNAL
            if code == p.INTERNAL:
                self._log.exception(f"{self.tag()} open_session failed")
            await self.send_error(code, f"could not open a session: {e}", fatal=True)
            await self.close("open_session failed")
            await self.close_transport(p.CLOSE_INTERNAL, "internal")
            return False
        self.start = m
        self.service.sessions[self.session_id] = self
        self._in_resampler = StreamResampler(m.input_sample_rate, base.INPUT_RATE)
        self.info(
            f"session started from {self.peer or '?'}: in {m.input_sample_rate} Hz, "
            f"out {m.output_sample_rate} Hz, {len(m.tools)} tools, backend {backend.name}"
        )
        await self._send_event(
            p.SessionStarted(
                session_id=self.session_id,
                backend=backend.name,
                model=backend.model_name,
                input_sample_rate=m.input_sample_rate,
                output_sample_rate=m.output_sample_rate,
                turn_model=self.service.turn_model.name if self.service.turn_model else None,
            )
        )
        return True

    async def _update(self, m: p.SessionUpdate) -> None:
        assert self.config is not None and self.backend_session is not None
        changes: dict[str, Any] = {
            k: v
            for k, v in (
                ("system_prompt", m.system_prompt),
                ("voice", m.voice),
                ("style", m.style),
                ("tools", m.tools),
            )
            if v is not None
        }
        self.config = replace(self.config, **changes)
        await self.backend_session.update(self.config)
        self.info(f"session.update: {sorted(changes)}")

    # -- responses ------------------------------------------------------------------------------

    @property
    def response_active(self) -> bool:
        """True while a response task runs."""
        return self._response is not None

    async def _create_response(self, instructions: str | None) -> None:
        if self._response is not None:
            await self.send_error(
                p.RESPONSE_ACTIVE,
                f"response {self._response.response_id} is still running",
                response_id=self._response.response_id,
            )
            return
        resp = _Response(_new_id("resp"), instructions, time.monotonic())
        self._response = resp
        self._last_response_id = resp.response_id
        self._out_resampler = StreamResampler(base.OUTPUT_RATE, self._output_rate)
        self.service.metrics.responses_active.inc()
        self.service.metrics.queue_depth.inc()
        # Start the backend's response now (not in the task) so that a response.cancel right
        # behind this message finds it running.
        stream: AsyncIterator[base.BackendEvent] | None = None
        failure: Exception | None = None
        try:
            stream = self.backend_session.respond(instructions)
        except Exception as e:
            failure = e
        resp.task = asyncio.create_task(
            self._run_response(resp, stream, failure), name=resp.response_id
        )

    @property
    def _output_rate(self) -> int:
        assert self.start is not None
        return self.start.output_sample_rate

    async def _cancel_response(self, heard_ms: float | None) -> None:
        assert self.backend_session is not None
        resp = self._response
        if resp is None:
            # The response already finished on our side but its audio may still be playing at
            # the client: the backend truncates the last response's history to heard_ms.
            if self._last_response_id is not None:
                self.info(f"response.cancel after done (heard {heard_ms} ms)")
                await self.backend_session.cancel(heard_ms)
            return
        if resp.cancel_requested:
            return
        resp.cancel_requested = True
        self.info(f"response.cancel {resp.response_id} heard_ms={heard_ms}")
        await self.backend_session.cancel(heard_ms)
        task = resp.task
        if task is not None:
            asyncio.get_running_loop().call_later(CANCEL_GRACE_S, self._force_cancel, task)

    def _force_cancel(self, task: asyncio.Task) -> None:
        if not task.done():
            self.warning("backend did not end a cancelled response in time; stopping it")
            task.cancel()

    async def _run_response(
        self,
        resp: _Response,
        stream: AsyncIterator[base.BackendEvent] | None,
        failure: Exception | None,
    ) -> None:
        assert self._out_resampler is not None
        metrics = self.service.metrics
        done: base.ResponseDone | None = None
        error: str | None = None
        await self._send_event(
            p.ResponseStarted(session_id=self.session_id, response_id=resp.response_id)
        )
        try:
            if failure is not None:
                raise failure
            assert stream is not None
            async with contextlib.aclosing(stream):
                async for event in stream:
                    if resp.first_output_at is None:
                        resp.first_output_at = time.monotonic()
                        metrics.queue_depth.dec()
                    if isinstance(event, base.ResponseDone):
                        done = event
                        break
                    if resp.cancel_requested:
                        continue  # drain: nothing more reaches the client after a cancel
                    await self._forward(resp, event)
            if done is None:
                error = "the backend ended the response without a done event"
        except asyncio.CancelledError:
            error = None if resp.cancel_requested or self.closed else "response task cancelled"
        except Exception as e:
            self._log.exception(f"{self.tag()} response {resp.response_id} failed")
            error = f"{type(e).__name__}: {e}"
        finally:
            if resp.first_output_at is None:
                metrics.queue_depth.dec()
            await self._finish_response(resp, done, error)

    async def _forward(self, resp: _Response, event: base.BackendEvent) -> None:
        if isinstance(event, base.TextDelta):
            if event.text:
                resp.text.append(event.text)
                await self._send_event(
                    p.TextDelta(
                        session_id=self.session_id, response_id=resp.response_id, text=event.text
                    )
                )
        elif isinstance(event, base.AudioChunk):
            await self._send_audio(resp, self._out_resampler.process(event.pcm))
        elif isinstance(event, base.ToolCallEvent):
            self._pending_tool_calls.add(event.call_id)
            self.info(f"tool.call {event.name} ({event.call_id})")
            await self._send_event(
                p.ToolCall(
                    session_id=self.session_id,
                    response_id=resp.response_id,
                    call_id=event.call_id,
                    name=event.name,
                    arguments=dict(event.arguments),
                )
            )
        elif isinstance(event, base.ResponseError):
            await self.send_error(event.code, event.message, response_id=resp.response_id)
        else:
            self.warning(f"unknown backend event {type(event).__name__} ignored")

    async def _send_audio(self, resp: _Response, audio: np.ndarray) -> None:
        if audio.size == 0:
            return
        if resp.first_audio_at is None:
            resp.first_audio_at = time.monotonic()
            self.service.metrics.time_to_first_audio.observe(resp.first_audio_at - resp.created_at)
        resp.audio_samples += audio.size
        await self._send(float_to_pcm16(audio))

    async def _finish_response(
        self, resp: _Response, done: base.ResponseDone | None, error: str | None
    ) -> None:
        metrics = self.service.metrics
        now = time.monotonic()
        try:
            if not resp.cancel_requested and self._out_resampler is not None:
                await self._send_audio(resp, self._out_resampler.flush())
            if error is not None:
                await self.send_error(p.INTERNAL, error, response_id=resp.response_id)
            # before response.done: a response.create sent on it must see the results
            await self._apply_deferred_tool_results()
            if done is None:
                done = base.ResponseDone(status="error" if error else "cancelled")
            status = "cancelled" if resp.cancel_requested else done.status
            if status not in p.RESPONSE_STATUSES:
                status = "error"
            t = done.timings
            server = {
                "first_audio_ms": _ms(resp.created_at, resp.first_audio_at),
                "total_ms": _ms(resp.created_at, now),
            }
            timings = {
                "queue_ms": t.queue_ms,
                "prefill_ms": t.prefill_ms,
                "first_code_ms": t.first_code_ms,
                "first_audio_ms": t.first_audio_ms
                if t.first_audio_ms is not None
                else server["first_audio_ms"],
                "total_ms": t.total_ms if t.total_ms is not None else server["total_ms"],
            }
            timings = {k: None if v is None else round(float(v), 1) for k, v in timings.items()}
            audio_ms = round(resp.audio_samples / self._output_rate * 1000.0, 1)
            metrics.responses_total.labels(status=status).inc()
            metrics.tokens_generated.inc(max(0, done.completion_tokens))
            metrics.audio_seconds.inc(audio_ms / 1000.0)
            self.info(
                f"response {resp.response_id} {status}: {audio_ms:.0f} ms audio, "
                f"first audio {timings['first_audio_ms']} ms, total {timings['total_ms']} ms"
            )
            await self._send_event(
                p.ResponseDone(
                    session_id=self.session_id,
                    response_id=resp.response_id,
                    status=status,
                    text=done.text or "".join(resp.text),
                    audio_ms=audio_ms,
                    timings=timings,
                    usage={
                        "prompt_tokens": done.prompt_tokens,
                        "completion_tokens": done.completion_tokens,
                    },
                )
            )
        finally:
            metrics.responses_active.dec()
            if self._response is resp:
                self._response = None
            self._start_transcripts()

    def _start_transcripts(self) -> None:
        """After a response: transcribe the user turns committed before it (in the background;
        the next response may queue behind it on a single-model backend, never the reverse)."""
        if (
            self.start is None
            or not self.start.input_transcription
            or self.closed
            or self._committed_turns <= self._transcribed_turns
            or (self._transcribing is not None and not self._transcribing.done())
        ):
            return
        self._transcribing = asyncio.get_running_loop().create_task(self._send_transcripts())

    async def _send_transcripts(self) -> None:
        bs = self.backend_session
        if bs is None:
            return
        upto = self._committed_turns  # take_transcripts snapshots its turns before any await
        try:
            texts = await bs.take_transcripts()
        except Exception:
            self._log.exception(f"{self.tag()} transcribing the caller failed")
            self._transcribed_turns = self._committed_turns
            return
        if not texts:  # the backend cannot transcribe
            self._transcribed_turns = self._committed_turns
            return
        first = upto - len(texts) + 1
        for offset, text in enumerate(texts):
            item = first + offset
            self._transcribed_turns = max(self._transcribed_turns, item)
            if not self.closed:
                await self._send_event(
                    p.InputAudioTranscript(session_id=self.session_id, item=item, text=text)
                )

    async def _apply_deferred_tool_results(self) -> None:
        """Tool results that arrived while the response that called the tools was running."""
        bs = self.backend_session
        while self._deferred_tool_results and bs is not None and not self.closed:
            call_id, output = self._deferred_tool_results.pop(0)
            try:
                await bs.add_tool_result(call_id, output)
            except ValueError as e:  # e.g. the call was cut from the history by a barge-in
                await self.send_error(p.UNKNOWN_TOOL_CALL, f"tool.result {call_id!r}: {e}")

    # -- teardown -------------------------------------------------------------------------------

    async def _turn_check(self, m: p.TurnCheck) -> None:
        """Answer one ``turn.check`` (off the message loop: audio keeps flowing meanwhile)."""
        verdict = await answer_turn_check(self.service.turn_model, m)
        if verdict.error is not None:
            self.warning(f"turn.check {m.check_id}: {verdict.error}")
        result = "error" if verdict.error else ("complete" if verdict.complete else "incomplete")
        self.service.metrics.turn_checks.labels(result=result).inc()
        await self._send_event(verdict)

    async def close(self, reason: str) -> None:
        """Stop the running response, close the backend session, free the slot (idempotent)."""
        if self.closed:
            return
        self.closed = True
        for task in list(self._turn_checks):
            task.cancel()
        resp = self._response
        bs = self.backend_session
        if resp is not None and resp.task is not None and not resp.task.done():
            resp.cancel_requested = True
            if bs is not None:
                with contextlib.suppress(Exception):
                    await bs.cancel(None)
            try:
                await asyncio.wait_for(asyncio.shield(resp.task), CLOSE_GRACE_S)
            except (TimeoutError, asyncio.CancelledError):
                resp.task.cancel()
                with contextlib.suppress(BaseException):
                    await resp.task
            except Exception:
                pass
        if self._transcribing is not None and not self._transcribing.done():
            self._transcribing.cancel()
            with contextlib.suppress(BaseException):
                await self._transcribing
        if bs is not None:
            try:
                await bs.close()
            except Exception:
                self._log.exception(f"{self.tag()} backend session close failed")
        self.service.sessions.pop(self.session_id, None)
        if self.admitted:
            self.admitted = False
            self.service.release()
        if self.start is not None:
            self.info(f"session closed ({reason})")
