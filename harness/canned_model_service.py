"""CannedModelService: a protocol-v1 model-service stand-in that answers instantly with canned PCM.

It sits where the GPU would be: every ``response.create`` is answered at once with
``response.started``, one ``text.delta``, the whole canned PCM (in <= 1 s binary messages) and
``response.done``. Used to measure the bot-side pipeline overhead with zero model time
(``benchmarks/pipeline_overhead.py``) and to make the bot speak real speech in tests that need
it (echo tests). Not for production.

Given a ``turn_model`` (``model_service.turn_checks.TurnModel``, the real one) it answers
``turn.check`` as the model service does; without one it offers none (as a service with
``STEPCALL_MODEL_TURN_MODEL=none``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass, field

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from model_service.turn_checks import TurnModel, answer_turn_check
from stepcall import protocol as p


@dataclass
class SessionLog:
    """What one session received: message types in order (``"audio"`` for binary caller
    audio), the caller audio, the texts appended (role, text)."""

    messages: list[str] = field(default_factory=list)
    audio: bytearray = field(default_factory=bytearray)
    texts: list[tuple[str, str]] = field(default_factory=list)


class CannedModelService:
    """Answers every response with ``pcm`` (PCM16 mono at the session's output rate)."""

    def __init__(
        self,
        pcm: bytes,
        text: str = "canned reply",
        *,
        hang: bool = False,
        heard: str | None = None,
        turn_model: TurnModel | None = None,
        ignore_turn_checks: bool = False,
        hang_responses: Collection[int] = (),
        delay_secs: float = 0.0,
    ) -> None:
        """``hang``: accept ``response.create`` but never answer (a hung model service).
        ``heard``: the canned "transcript" of every committed caller turn, sent after the next
        response when the session asked for ``input_transcription``. ``turn_model``: what
        answers ``turn.check`` (None: the service offers no turn model).
        ``ignore_turn_checks``: offer the turn model but never answer a check (a stuck one).
        ``hang_responses``: the numbers (1-based, counted over all sessions) of the responses
        that hang as with ``hang``. ``delay_secs``: every answer starts this long after its
        ``response.create`` (a busy model service)."""
        self.pcm = pcm
        self.hang = hang
        self.text = text
        self.heard = heard
        self.responses = 0
        self.sessions = 0
        self.cancels: list[float | None] = []
        self.audio_bytes_in = 0
        self.turn_model = turn_model
        self.ignore_turn_checks = ignore_turn_checks
        #: Turn verdicts sent.
        self.turn_checks = 0
        self.hang_responses = set(hang_responses)
        self.delay_secs = delay_secs
        #: One :class:`SessionLog` per session, in order.
        self.logs: list[SessionLog] = []
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task] = set()

    async def _handle(self, ws: ServerConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self._session(ws)

    async def _session(self, ws: ServerConnection) -> None:
        self.sessions += 1
        log = SessionLog()
        self.logs.append(log)
        session_id = f"canned_{next(self._ids)}"
        start = p.parse_client_message(await ws.recv())
        if not isinstance(start, p.SessionStart):
            await ws.close(p.CLOSE_PROTOCOL, "no session.start")
            return
        rate = start.output_sample_rate
        await ws.send(
            p.event_to_json(
                p.SessionStarted(
                    session_id=session_id,
                    backend="canned",
                    model="canned",
                    input_sample_rate=start.input_sample_rate,
                    output_sample_rate=rate,
                    turn_model=self.turn_model.name if self.turn_model else None,
                )
            )
        )
        step = p.max_audio_bytes(rate)
        commits = transcribed = 0
        async for raw in ws:
            if isinstance(raw, bytes):
                self.audio_bytes_in += len(raw)
                log.messages.append("audio")
                log.audio += raw
                continue
            msg = p.parse_client_message(raw)
            log.messages.append(msg.type)
            if isinstance(msg, p.InputTextAppend):
                log.texts.append((msg.role, msg.text))
            if isinstance(msg, p.ResponseCreate):
                self.responses += 1
                if self.hang or self.responses in self.hang_responses:
                    continue
                if self.delay_secs > 0:
                    await asyncio.sleep(self.delay_secs)
                rid = f"resp_{self.responses}"
                started = p.ResponseStarted(session_id=session_id, response_id=rid)
                await ws.send(p.event_to_json(started))
                delta = p.TextDelta(session_id=session_id, response_id=rid, text=self.text)
                await ws.send(p.event_to_json(delta))
                for i in range(0, len(self.pcm), step):
                    await ws.send(self.pcm[i : i + step])
                audio_ms = len(self.pcm) / 2 / rate * 1000.0
                done = p.ResponseDone(
                    session_id=session_id,
                    response_id=rid,
                    status="completed",
                    text=self.text,
                    audio_ms=audio_ms,
                )
                await ws.send(p.event_to_json(done))
                while start.input_transcription and self.heard and transcribed < commits:
                    transcribed += 1
                    event = p.InputAudioTranscript(
                        session_id=session_id, item=transcribed, text=self.heard
                    )
                    await ws.send(p.event_to_json(event))
            elif isinstance(msg, p.TurnCheck):
                if self.ignore_turn_checks:
                    continue
                task = asyncio.create_task(self._turn_check(ws, msg))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            elif isinstance(msg, p.InputAudioCommit):
                commits += 1
            elif isinstance(msg, p.ResponseCancel):
                self.cancels.append(msg.heard_ms)
            elif isinstance(msg, p.SessionEnd):
                await ws.send(p.event_to_json(p.SessionEnded(session_id=session_id)))
                break

    async def _turn_check(self, ws: ServerConnection, check: p.TurnCheck) -> None:
        verdict = await answer_turn_check(self.turn_model, check)
        self.turn_checks += 1
        with contextlib.suppress(ConnectionClosed):
            await ws.send(p.event_to_json(verdict))

    @contextlib.asynccontextmanager
    async def serving(self, host: str = "127.0.0.1") -> AsyncIterator[str]:
        """Serve on a free loopback port; yields the session URL."""
        # frames up to 4 MiB as the model service takes them (a turn.check is up to 1.5 MiB)
        async with serve(self._handle, host, 0, compression=None, max_size=4 << 20) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            yield f"ws://{host}:{port}/v1/session"
            server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2.0)
