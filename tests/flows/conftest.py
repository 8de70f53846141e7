"""The flow-call harness shared by the flow tests: a call pipeline running a YAML flow against
the real model service (reference backend on a tiny checkpoint the test module builds).

A test module defines a ``backend`` fixture (a ``ReferenceBackend`` on a shaped tiny
checkpoint); ``model_service`` serves it on loopback. ``Call(flow_path, url)`` assembles user
aggregator → service → frame log → assistant aggregator with ``attach_flow`` and a
``RecordingCallControl`` (the edge to Twilio / WebRTC). ``webhook_server`` is a local HTTP
endpoint that records every JSON body it receives. Import the helpers with
``from .conftest import Call, ...``.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from pipecat.frames.frames import (
    Frame,
    FunctionCallResultFrame,
    InputAudioRawFrame,
    LLMFullResponseEndFrame,
    TTSTextFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    LLMContextAggregatorPair,
    LLMUserAggregatorParams,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.services.llm_service import FunctionCallFromLLM
from pipecat.turns.user_stop.speech_timeout_user_turn_stop_strategy import (
    SpeechTimeoutUserTurnStopStrategy,
)
from pipecat.turns.user_turn_strategies import UserTurnStrategies
from pipecat.workers.runner import WorkerRunner

from model_service.server import create_app, serving
from pipeline.flows.call_control import CallControl, TransferResult
from pipeline.flows.format import load_flow
from pipeline.flows.runtime import FlowRuntime, attach_flow
from pipeline.step_audio2.frames import SpeakLineFrame
from pipeline.step_audio2.service import StepAudio2Service
from pipeline.step_audio2.spoken_lines import ModelServiceSpeech, SpokenLine, SpokenLines

TOKEN = "flow-runtime-token"
RATE = 8000
CALL_ID = "CAflow"
REPO = Path(__file__).resolve().parents[2]
EXAMPLE_FLOWS = REPO / "flows"
#: The placeholder base URL of the example flows' webhooks (see their header comments).
EXAMPLE_WEBHOOK_BASE = "http://127.0.0.1:8081"


class RecordingCallControl(CallControl):
    """Records what the flow asked of the call (the interface edge to Twilio / WebRTC)."""

    async def hang_up(self, reason: str = "completed") -> None:
        self.events.append(f"hang_up:{reason}")

    async def transfer(
        self, to: str, *, warm: bool = False, whisper: str | None = None
    ) -> TransferResult:
        self.events.append(f"transfer:{to}")
        return TransferResult(ok=True, detail="dialing")


class FrameLog(FrameProcessor):
    """Passes every frame on and remembers the downstream ones with their arrival time."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: list[tuple[float, Frame]] = []

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if direction == FrameDirection.DOWNSTREAM:
            self.frames.append((time.monotonic(), frame))
        await self.push_frame(frame, direction)

    def of(self, kind: type) -> list[tuple[float, Frame]]:
        return [(t, f) for t, f in self.frames if isinstance(f, kind)]


class Call:
    """A call pipeline (user aggregator → service → log → assistant aggregator) with a flow."""

    def __init__(self, flow_path: Path, url: str) -> None:
        self.spec = load_flow(flow_path)
        self.url = url
        self.service = StepAudio2Service(url=url, token=TOKEN, call_id=CALL_ID, sample_rate=RATE)
        self.context = LLMContext()
        self.aggregators = LLMContextAggregatorPair(
            self.context,
            user_params=LLMUserAggregatorParams(
                user_turn_strategies=UserTurnStrategies(
                    stop=[SpeechTimeoutUserTurnStopStrategy(user_speech_timeout=0.6)]
                )
            ),
        )
        self.log = FrameLog()
        self.service_in = FrameLog()  # what reaches the service (it consumes caller audio)
        pipeline = Pipeline(
            [
                self.aggregators.user(),
                self.service_in,
                self.service,
                self.log,
                self.aggregators.assistant(),
            ]
        )
        self.worker = PipelineWorker(
            pipeline,
            params=PipelineParams(audio_in_sample_rate=RATE, audio_out_sample_rate=RATE),
            idle_timeout_secs=None,
        )
        self.control = RecordingCallControl(call_id=CALL_ID)
        self.runtime: FlowRuntime = attach_flow(
            self.spec,
            service=self.service,
            context_aggregator=self.aggregators,
            worker=self.worker,
            call_control=self.control,
        )
        self.started = asyncio.Event()
        self._call_ids = itertools.count(1)

        @self.worker.event_handler("on_pipeline_started")
        async def _started(_worker: Any, _frame: Any) -> None:
            self.started.set()

        self.task: asyncio.Task | None = None

    async def __aenter__(self) -> Call:
        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(self.worker)
        self.task = asyncio.create_task(runner.run())
        await asyncio.wait_for(self.started.wait(), 10)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self.task is not None
        if not self.task.done():
            await self.worker.cancel()
        await asyncio.wait_for(self.task, 10)

    async def start(self, *, rendered: bool = True) -> None:
        """Open the call as a real one does: the flow's verbatim greeting (``greeting.say``)
        rendered by the model service's ``/v1/speech`` and played, then the initial node.
        ``rendered=False``: the line is not rendered, so the model is asked to say it (the
        fallback path; its response is the greeting)."""
        say = self.spec.greeting.say
        if say:
            pcm = None
            if rendered:
                voice = str(self.spec.voice_path) if self.spec.voice_path else self.spec.voice
                lines = SpokenLines(ModelServiceSpeech(self.url, TOKEN))
                pcm = await lines.get(SpokenLine(say.strip(), voice, self.spec.style, RATE), 30)
                assert pcm is not None, "the model service did not render the greeting"
            await self.worker.queue_frame(SpeakLineFrame(say.strip(), pcm, RATE))
        await self.runtime.start()

    async def wait_for(self, predicate: Any, what: str, within: float = 20.0) -> None:
        deadline = time.monotonic() + within
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            await asyncio.sleep(0.02)

    def responses_done(self) -> int:
        return len(self.log.of(LLMFullResponseEndFrame))

    def spoken(self) -> str:
        return "".join(f.text for _, f in self.log.of(TTSTextFrame))

    async def call_function(self, name: str, arguments: dict[str, Any]) -> None:
        """Run a function the way a model tool call runs it (the service's function path)."""
        await self.service.run_function_calls(
            [FunctionCallFromLLM(name, f"call_test_{name}", arguments, self.context)]
        )

    async def tool_call(self, name: str, arguments: dict[str, Any], within: float = 20.0) -> Any:
        """Run ``name`` through the service's function path (as a model tool call) and return
        the result the model gets back."""
        call_id = f"call_{name}_{next(self._call_ids)}"
        await self.service.run_function_calls(
            [FunctionCallFromLLM(name, call_id, arguments, self.context)]
        )
        found: list[Any] = []

        def result() -> bool:
            for _, frame in self.log.of(FunctionCallResultFrame):
                if frame.tool_call_id == call_id:
                    found.append(frame.result)
                    return True
            return False

        await self.wait_for(result, f"the result of {name} ({call_id})", within)
        return found[0]

    async def caller_says(self, secs: float = 0.4) -> None:
        """A scripted caller turn: the caller speaks ``secs`` of audio and stops; the service
        commits the turn to the model and asks for the bot's answer."""
        await self.worker.queue_frame(UserStartedSpeakingFrame())
        chunk = bytes(320)  # 20 ms at 8 kHz, 16-bit
        for _ in range(int(secs / 0.02)):
            await self.worker.queue_frame(InputAudioRawFrame(chunk, RATE, 1))
        await self.worker.queue_frame(UserStoppedSpeakingFrame())

    async def caller_turn(self, secs: float = 0.4, within: float = 20.0) -> None:
        """``caller_says`` and wait until the bot's answer to it has finished."""
        done = self.responses_done()
        await self.caller_says(secs)
        await self.wait_for(lambda: self.responses_done() > done, "the bot's answer", within)

    async def settle(self, within: float = 20.0) -> None:
        """Wait until no response is running (the bot finished speaking)."""
        await self.wait_for(lambda: not self.service.response_active, "a quiet line", within)


def model_session(app: Any) -> Any:
    sessions = list(app.state.service.sessions.values())
    assert len(sessions) == 1, sessions
    return sessions[0]


def tool_names(session: Any) -> set[str]:
    return {t["function"]["name"] for t in session.config.tools}


def system_messages(session: Any) -> list[str]:
    return [
        m.text
        for m in session.backend_session.conversation.messages
        if type(m).__name__ == "SystemMessage"
    ]


def example_flow(tmp_path: Path, name: str, webhook_base: str | None = None) -> Path:
    """A copy of ``flows/<name>.yaml`` in ``tmp_path`` with its placeholder webhook base URL
    replaced by ``webhook_base`` (a local test server)."""
    text = (EXAMPLE_FLOWS / f"{name}.yaml").read_text(encoding="utf-8")
    if webhook_base is not None:
        assert EXAMPLE_WEBHOOK_BASE in text, f"{name}.yaml has no {EXAMPLE_WEBHOOK_BASE} webhook"
        text = text.replace(EXAMPLE_WEBHOOK_BASE, webhook_base)
    path = tmp_path / f"{name}.yaml"
    path.write_text(text, encoding="utf-8")
    return path


class WebhookServer:
    """A local HTTP endpoint: ``requests`` holds (path, JSON body) of every request;
    ``answers[path]`` is the JSON it answers with (default ``{"ok": true}``)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, Any]] = []
        self.answers: dict[str, Any] = {}
        self.base = ""

    def bodies(self, path: str) -> list[Any]:
        return [body for p, body in self.requests if p == path]

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json() if request.can_read_body else None
        self.requests.append((request.path, body))
        return web.json_response(self.answers.get(request.path, {"ok": True}))


@pytest.fixture
async def model_service(backend):
    """The real model service on the test module's ``backend``: ``(app, session_url)``."""
    app = create_app(backend, token=TOKEN, max_sessions=2)
    async with serving(app) as url:
        yield app, url


@pytest.fixture
async def webhook_server():
    """A ``WebhookServer`` listening on a free loopback port (``server.base``)."""
    server = WebhookServer()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", server.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    server.base = f"http://127.0.0.1:{port}"
    yield server
    await runner.cleanup()


@pytest.fixture
def log_lines() -> Any:
    """Loguru records emitted during the test: a list of (message, extra) tuples."""
    from loguru import logger

    records: list[tuple[str, dict[str, Any]]] = []

    def sink(message: Any) -> None:
        record = message.record
        records.append((record["message"], dict(record["extra"])))

    handler = logger.add(sink, level="DEBUG")
    yield records
    logger.remove(handler)



def bot_turns(session: Any) -> list[str]:
    """The text of the bot's text turns in the model session's history (e.g. the greeting)."""
    return [
        m.text
        for m in session.backend_session.conversation.messages
        if type(m).__name__ == "AssistantMessage" and m.text is not None
    ]
