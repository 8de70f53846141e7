"""What every backend session does the same way around one response: run, stream, cancel, close.

A response is an asyncio task (``ResponseSession._drive``) that runs two stages side by side:
the *producer* (the model: reference on its model thread, vLLM in its engine, the CPU cascade
on its LLM thread) and the *output* stage (token2wav or TTS, an asyncio task feeding audio).
Events go to the response's queue (``ResponseRun.events``); ``respond()`` only drains that
queue, so a consumer that stops reading never leaves the history half-updated. When both
stages are done the reply is recorded in the history (cut to what was heard when cancelled)
and ``ResponseDone`` ends the stream. A backend supplies the model-specific steps: how to
produce, the output stage, how to record and cut a reply, what to free on close.

``cancel(heard_ms)`` sets the run's ``threading.Event`` (the producer checks it every step,
from any thread) and waits for the task, so the history is final when it returns; with no
response running it cuts the latest reply, whose audio may still be playing.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from model_service.backends.base import (
    OUTPUT_RATE,
    AudioChunk,
    BackendEvent,
    BackendSession,
    ResponseDone,
    ResponseError,
    ResponseTimings,
    ToolCallEvent,
)

log = logging.getLogger(__name__)

#: Default cap on consecutive tool-call responses without user input (the loop guard).
DEFAULT_MAX_TOOL_CALLS_IN_A_ROW = 3
#: One-shot instruction added once the loop guard trips.
TOOL_LOOP_INSTRUCTION = (
    "Do not call any tool now. Answer the user directly with what you already know."
)


def now() -> float:
    """The clock of every response timing (``time.perf_counter``, seconds)."""
    return time.perf_counter()


def ms_since(t0: float, t: float | None) -> float | None:
    """Milliseconds from ``t0`` to ``t`` (None when ``t`` was never reached)."""
    return None if t is None else round((t - t0) * 1000.0, 3)


def with_loop_instruction(instructions: str | None) -> str:
    """The response's instructions with ``TOOL_LOOP_INSTRUCTION`` added (the guard tripped)."""
    return f"{instructions}\n{TOOL_LOOP_INSTRUCTION}" if instructions else TOOL_LOOP_INSTRUCTION


@dataclass
class PendingToolCall:
    """A tool call the model made whose result has not arrived yet."""

    call_id: str
    name: str
    arguments: dict[str, Any]


@dataclass
class ResponseRun:
    """One response in flight: its event queue, cancel flag, reply so far and milestones.

    The ``t_*`` milestones are ``now()`` values; ``ResponseDone.timings`` reports them in ms
    from ``t0`` (the ``respond`` call). Backends subclass it with their own working state.
    """

    t0: float
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancel: threading.Event = field(default_factory=threading.Event)
    heard_ms: float | None = None
    text: list[str] = field(default_factory=list)
    calls: list[PendingToolCall] = field(default_factory=list)
    refused_calls: int = 0  # tool calls dropped (loop guard, unknown tool, malformed)
    history_len: int = 0  # history entries when the response started
    t_start: float | None = None
    t_prefill: float | None = None
    t_first_code: float | None = None
    t_first_audio: float | None = None
    audio_samples: int = 0
    recorded: bool = False  # the reply is in the history
    task: asyncio.Task | None = None

    def post(self, item: Any) -> None:
        """Thread-safe: hand an event to the response's queue."""
        self.loop.call_soon_threadsafe(self.events.put_nowait, item)

    def add_audio(self, pcm: np.ndarray) -> None:
        """On the loop: a piece of bot audio becomes an ``AudioChunk`` (and counts)."""
        if self.t_first_audio is None:
            self.t_first_audio = now()
        self.audio_samples += pcm.size
        self.events.put_nowait(AudioChunk(pcm))

    def screen_tool_call(
        self, name: str, arguments: dict[str, Any], tools: set[str], guard: bool, limit: int
    ) -> BackendEvent:
        """A parsed tool call → the event to send: ``ToolCallEvent`` (the call is kept in
        ``calls``), or a ``ResponseError`` when the loop guard is on (``guard``: ``limit``
        tool-call responses in a row) or the session has no such tool (counted as refused)."""
        if guard or name not in tools:
            self.refused_calls += 1
        if guard:
            return ResponseError(
                "tool_call_limit",
                f"tool call {name!r} dropped: more than {limit} tool-call responses in a row "
                "without user input",
            )
        if name not in tools:
            return ResponseError(
                "bad_tool_call",
                f"model called unknown tool {name!r} (session tools: {sorted(tools) or 'none'})",
            )
        call = PendingToolCall(f"call_{uuid.uuid4().hex[:16]}", name, dict(arguments))
        self.calls.append(call)
        return ToolCallEvent(call.call_id, call.name, call.arguments)

    def bad_tool_call(self, message: str) -> ResponseError:
        """A malformed tool call: counted as refused, reported as ``bad_tool_call``."""
        self.refused_calls += 1
        return ResponseError("bad_tool_call", message)

    def token_counts(self) -> tuple[int, int]:
        """(prompt tokens, completion tokens) for ``ResponseDone``."""
        return 0, 0


#: Ends a response's event queue.
_END = object()


class ResponseSession(BackendSession):
    """A ``BackendSession`` whose responses run as described in this module.

    Subclasses set ``backend`` (with a ``sessions`` set), ``config``, ``_run = None`` and
    ``_closed = False`` in ``__init__``, start responses with ``_start`` and supply the
    abstract steps; the ``_*_failed`` texts name the stages in ``_log`` (the backend's logger).
    """

    backend: Any
    _run: ResponseRun | None
    _closed: bool
    _log = log
    _produce_failed = "response failed in session %s"
    _output_failed = "output failed in session %s"

    # ----------------------------------------------------------------- the steps
    @abc.abstractmethod
    def _output(self, run: Any) -> Coroutine[Any, Any, None]:
        """The output stage (run as a task beside the producer) until ``_end_output``."""

    @abc.abstractmethod
    def _end_output(self, run: Any) -> None:
        """Tell the output stage that nothing more comes (after the producer ended)."""

    @abc.abstractmethod
    def _record(self, run: Any, cancelled: bool) -> None:
        """Put the reply in the history (cut to ``run.heard_ms`` when cancelled)."""

    @abc.abstractmethod
    def _cut_last_reply(self, heard_ms: float) -> None:
        """Cut the latest reply in the history to ``heard_ms`` (no response running)."""

    def _on_error(self, run: Any) -> None:  # noqa: B027 - optional hook, a no-op by default
        """A stage failed: drop state the failure may have left inconsistent."""

    def _free(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Release what the session holds (on ``close``, after any response ended)."""

    # ----------------------------------------------------------------- lifecycle
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("session is closed")

    def _check_idle(self) -> None:
        """Raise unless the session is open and has no response running."""
        self._check_open()
        if self._run is not None and not self._run.recorded:
            raise RuntimeError("a response is already running in this session")

    def _start(
        self, run: ResponseRun, produce: Callable[[], Awaitable[None]]
    ) -> AsyncIterator[BackendEvent]:
        """Run ``produce()`` and the output stage as the session's response; its events."""
        self._run = run
        run.task = run.loop.create_task(self._drive(run, produce))
        return self._drain(run)

    async def _drain(self, run: ResponseRun) -> AsyncIterator[BackendEvent]:
        while True:
            item = await run.events.get()
            if item is _END:
                return
            yield item

    async def _drive(self, run: ResponseRun, produce: Callable[[], Awaitable[None]]) -> None:
        """Run one response to its end: producer, output task, history, ``ResponseDone``."""
        error: BaseException | None = None
        output = run.loop.create_task(self._output(run))
        try:
            await produce()
        except Exception as exc:  # noqa: BLE001 - reported to the client, session survives
            self._log.exception(self._produce_failed, self.config.call_id)
            error = exc
            run.cancel.set()
        finally:
            self._end_output(run)
        try:
            await output
        except Exception as exc:  # noqa: BLE001 - reported to the client, session survives
            self._log.exception(self._output_failed, self.config.call_id)
            error = error or exc

        cancelled = run.cancel.is_set() and error is None
        status = "completed"
        if error is not None:
            status = "error"
            run.events.put_nowait(ResponseError("internal", f"{type(error).__name__}: {error}"))
            self._on_error(run)
        else:
            self._record(run, cancelled)
            if cancelled:
                status = "cancelled"
            elif run.calls:
                status = "tool_call"
        run.recorded = True
        t_end = now()
        prompt_tokens, completion_tokens = run.token_counts()
        run.events.put_nowait(
            ResponseDone(
                status=status,
                text="".join(run.text),
                audio_ms=run.audio_samples * 1000.0 / OUTPUT_RATE,
                timings=ResponseTimings(
                    queue_ms=ms_since(run.t0, run.t_start),
                    prefill_ms=ms_since(run.t0, run.t_prefill),
                    first_code_ms=ms_since(run.t0, run.t_first_code),
                    first_audio_ms=ms_since(run.t0, run.t_first_audio),
                    total_ms=ms_since(run.t0, t_end),
                ),
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
            )
        )
        run.events.put_nowait(_END)

    # ----------------------------------------------------------------- barge-in, close
    async def cancel(self, heard_ms: float | None = None) -> None:
        """Stop the running response and cut the history to what was heard (the response's
        task has recorded it when this returns); with no response running, cut the latest
        reply (its audio may still be playing)."""
        run = self._run
        if run is not None and not run.recorded:
            run.heard_ms = heard_ms
            run.cancel.set()
            assert run.task is not None
            await asyncio.shield(run.task)
            return
        if heard_ms is not None:
            self._cut_last_reply(heard_ms)

    async def close(self) -> None:
        if self._closed:
            return
        if self._run is not None and not self._run.recorded:
            await self.cancel()
        self._closed = True
        self._free()
        self.backend.sessions.discard(self)


__all__ = [
    "DEFAULT_MAX_TOOL_CALLS_IN_A_ROW",
    "TOOL_LOOP_INSTRUCTION",
    "PendingToolCall",
    "ResponseRun",
    "ResponseSession",
    "ms_since",
    "now",
    "with_loop_instruction",
]
