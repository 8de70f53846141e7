"""StepAudio2Service: the Pipecat speech-to-speech service that talks to the stepcall model service.

Turn-taking is local (Silero VAD + Smart Turn v3 in the user aggregator, upstream of this
service). The service announces itself as a *realtime* service so the context aggregators switch
to realtime mode (turn stops do not wait for transcripts).

Audio path: the user's audio is streamed to the model service WHILE the user speaks, committed
at the end of the turn, and the model service answers with PCM at the pipeline's output rate, so
no resampling happens in the bot process (Pipecat's default stream resampler emits ~95 ms bursts;
see the reference notes). Caller audio outside user turns is dropped: put a
:class:`pipeline.call_audio.gate.CallerAudioGate` in front of the service, which passes only the
turns' audio and, with each turn, the pre-roll from just before it (VAD fires only after
``start_secs`` of speech).

Slow answers: when no bot audio has come ``holding_line_secs`` after ``response.create``, the
caller hears a short pre-rendered holding line once (``pipeline.step_audio2.holding``); the
model's audio plays after it.

Failures: when the model-service connection drops (or cannot be opened, or a response stays
silent past its timeout), the service reconnects once and gives the new session the
conversation so far (``pipeline.step_audio2.history``). A committed caller turn that had no
answer yet is kept (``pipeline.step_audio2.pending_turns``) and retried on the new session: its
audio re-sent, committed and answered. If the reconnect fails, or the turn's retries are used
up, the service plays the cached apology (``pipeline.step_audio2.apology``) and then runs
``on_failure`` (e.g. a transfer) or, by default, ends the call. The caller never sits in silence.

Events (``service.event_handler(name)``; each handler gets the service): ``on_holding_line``
(a holding line started playing), ``on_turn_retried`` (one committed caller turn re-sent to a
new model session), ``on_turn_unanswered`` (one committed caller turn given up: retries used
up, the model service lost, or the call ended before its answer), ``on_model_service_failed``
(with the reason; the apology path ran).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from loguru import logger
from pipecat.adapters.llm.schemas.tools_schema import ToolsSchema

# Imported with this module (server start), not lazily by the first call's LLMService: the
# import pulls the whole ``openai`` package, ~0.4 s in which every live call's audio stopped.
from pipecat.adapters.llm.services.open_ai_adapter import OpenAILLMAdapter
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    CancelFrame,
    EndFrame,
    EndWorkerFrame,
    Frame,
    FunctionCallCancelFrame,
    FunctionCallResultFrame,
    InputAudioRawFrame,
    InputDTMFFrame,
    InterruptionFrame,
    LLMContextFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMServiceMetadataFrame,
    LLMSetToolsFrame,
    LLMTextFrame,
    StartFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipecat.metrics.metrics import LLMTokenUsage
from pipecat.processors.aggregators.llm_context import LLMContext, LLMSpecificMessage
from pipecat.processors.frame_processor import FrameDirection, FrameProcessorSetup
from pipecat.services.llm_service import FunctionCallFromLLM, LLMService
from pipecat.services.settings import LLMSettings
from pipecat.utils.text.base_text_aggregator import TextType
from pipecat.utils.time import time_now_iso8601
from pipecat.utils.types import NOT_GIVEN, NotGiven, is_given

from pipeline.step_audio2 import client as mc
from pipeline.step_audio2.apology import DEFAULT_APOLOGY, apology_pcm
from pipeline.step_audio2.frames import HoldingLineFrame, SpeakLineFrame
from pipeline.step_audio2.history import replay_conversation
from pipeline.step_audio2.holding import HoldingAudio, flite_holding_audio
from pipeline.step_audio2.pending_turns import PendingTurns

#: How long :meth:`StepAudio2Service.check_turn` waits for the service's turn verdict.
TURN_CHECK_TIMEOUT_SECS = 0.5


@dataclass
class StepAudio2Settings(LLMSettings):
    """Runtime-updatable settings (``LLMUpdateSettingsFrame(delta=...)``).

    Parameters:
        voice: Voice name (or prompt WAV) the model service speaks with.
        style: Speaking style / emotion (calm, cheerful, ...).
    """

    voice: str | None | NotGiven = field(default_factory=lambda: NOT_GIVEN)
    style: str | None | NotGiven = field(default_factory=lambda: NOT_GIVEN)


@dataclass
class ResponseStats:
    """Per-response bookkeeping (what was sent to the transport and when)."""

    response_id: str | None = None
    audio_bytes: int = 0
    started_speaking_at: float | None = None
    tool_call: bool = False
    server_timings: dict[str, Any] = field(default_factory=dict)
    #: ``LLMFullResponseStartFrame`` pushed (by ``response.started`` or the holding line).
    start_pushed: bool = False
    #: Holding-line audio played before the model's (not part of ``audio_bytes``).
    holding_bytes: int = 0
    #: When the model's first audio arrived (monotonic).
    model_audio_at: float | None = None
    #: Pending caller turns when the response was asked for (the ones it answers).
    for_turns: int = 0


class StepAudio2Service(LLMService):
    """Speech-to-speech LLM service backed by the stepcall model service (protocol v1).

    Emits ``LLMFullResponseStartFrame`` → ``TTSStartedFrame`` → ``TTSAudioRawFrame``… →
    ``TTSStoppedFrame`` → ``LLMFullResponseEndFrame`` per response, ``TTSTextFrame`` for the
    assistant context, and bridges model tool calls to Pipecat function calling.
    """

    Settings = StepAudio2Settings
    _settings: StepAudio2Settings
    #: Tool schemas and context messages in OpenAI's format (Pipecat's default adapter).
    adapter_class = OpenAILLMAdapter

    #: The result of a refused tool call (one the session does not offer now), for the model.
    MISSING_FUNCTION_CALL_MESSAGE_TEMPLATE = (
        "Error: the tool `{function_name}` is not allowed at this point of the call, so it did "
        "not run. Do not call it now; carry on with the current step."
    )

    #: Caller audio is sent to the model service in 100 ms messages (a fifth of the WebSocket
    #: sends of Twilio's 20 ms frames; no latency at the end of the turn, which flushes the rest).
    AUDIO_BATCH_SECS = 0.1

    def __init__(
        self,
        *,
        url: str,
        token: str | None = None,
        call_id: str = "",
        sample_rate: int = 8000,
        settings: StepAudio2Settings | None = None,
        tools: ToolsSchema | list | None = None,
        client_factory: Any = None,
        apology_text: str = DEFAULT_APOLOGY,
        on_failure: Callable[[], Awaitable[None]] | None = None,
        reconnect_attempts: int = 1,
        response_timeout_secs: float = 8.0,
        first_response_timeout_secs: float = 30.0,
        transcribe_caller: bool = True,
        holding_line_secs: float = 2.0,
        holding_audio: HoldingAudio | None = None,
        turn_retries: int = 1,
        **kwargs: Any,
    ) -> None:
        """Create the service.

        Args:
            url: Model-service session endpoint (``ws://host:port/v1/session``).
            token: Bearer token for the model service.
            call_id: The call's id (logged on both sides).
            sample_rate: Pipeline audio rate in and out (8000 for phones).
            settings: Settings delta over the defaults (persona, voice, style).
            tools: Tools advertised to the model from the start (also register handlers).
            client_factory: Builds the model-service client (defaults to ``ModelServiceClient``).
            apology_text: What the cached apology says when the model service is lost.
            on_failure: Runs after the apology when the model service is lost for good
                (e.g. transfer the call); by default the call ends (``EndWorkerFrame``).
            reconnect_attempts: Reconnects tried before giving up on the model service.
            response_timeout_secs: A response with neither audio nor an end by then counts as
                a lost connection (a hung model service must not leave the caller in silence).
            first_response_timeout_secs: The same for a model session's first response, which
                also pays for reading the persona and tools (seconds on the CPU backend).
            transcribe_caller: Ask the model service for the text of each caller turn
                (``input_transcription``); it arrives after the bot's reply and is pushed as a
                ``TranscriptionFrame`` (call records, the widget's transcript).
            holding_line_secs: A response with no bot audio this long after it was asked for
                plays the holding line once (0: never).
            holding_audio: Provides the holding line's PCM16 at ``sample_rate`` (None from it:
                nothing plays); by default "One moment, please." by the local speech engine.
            turn_retries: How many times a committed caller turn is re-sent to a new model
                session after the connection was lost before its answer (0: never).
            **kwargs: Passed to ``LLMService``.
        """
        defaults = self.Settings(
            model="step-audio-2-mini",
            system_instruction=None,
            temperature=None,
            max_tokens=None,
            top_p=None,
            top_k=None,
            frequency_penalty=None,
            presence_penalty=None,
            seed=None,
            filter_incomplete_user_turns=False,
            user_turn_completion_config=None,
            use_provider_thinking_default=False,
            voice=None,
            style=None,
        )
        if settings is not None:
            defaults.apply_update(settings)
        super().__init__(settings=defaults, **kwargs)
        self._url = url
        self._token = token
        self._call_id = call_id
        self._sample_rate = sample_rate
        self._transcribe_caller = transcribe_caller
        self._tools = tools
        self._client_factory = client_factory or mc.ModelServiceClient
        self._client: mc.ModelServiceClient | None = None
        self._receive_task: asyncio.Task | None = None
        self._context: LLMContext | None = None
        self._synced_messages = 0
        #: Caller audio goes to the model in messages of this many bytes (100 ms; the rest is
        #: flushed at the end of the turn, so the model gets every sample before the commit).
        self._send_batch = int(self.AUDIO_BATCH_SECS * sample_rate) * 2
        self._pending_audio = bytearray()
        self._in_user_turn = False
        self._response_requested = False
        self._response_after_done = False  # a context asked for a reply while one was running
        self._held_tool_results: list[tuple[str, str]] = []
        self._response: ResponseStats | None = None
        self._audio_started = False
        self._bot_speaking = False
        #: A verbatim line (the greeting) is what the bot says now: no model response to cancel.
        self._line_playing = False
        self._pending_end: EndFrame | None = None
        self._apology_text = apology_text
        self._on_failure = on_failure
        self._reconnects_left = reconnect_attempts
        self._closing = False
        self._started = False
        self._failed = False
        self._failure_task: asyncio.Task | None = None
        self._response_timeout = response_timeout_secs
        self._first_response_timeout = max(first_response_timeout_secs, response_timeout_secs)
        self._session_responses = 0  # responses requested on the current model session
        self._watchdog_task: asyncio.Task | None = None
        self._reconnect_attempts = reconnect_attempts
        self._reconnecting = False
        #: The caller's current turn, all of it (re-sent when its session is lost).
        self._turn_audio = bytearray()
        self._turn_client: mc.ModelServiceClient | None = None  # the session streaming the turn
        self._pending = PendingTurns(max_retries=max(0, turn_retries))
        self._holding_line_secs = max(0.0, holding_line_secs)
        self._holding_audio = holding_audio or flite_holding_audio(sample_rate)
        self._holding_task: asyncio.Task | None = None
        self._held_for_pending = False  # a holding line already played for the pending turns
        #: One response's audio at a time: the holding line, then the model's, never mixed.
        self._output_lock = asyncio.Lock()
        self._log = logger.bind(call_id=call_id)
        self._register_event_handler("on_model_service_failed")
        for event in ("on_holding_line", "on_turn_retried", "on_turn_unanswered"):
            self._register_event_handler(event, sync=True)

    # -- metadata ----------------------------------------------------------------------------

    def can_generate_metrics(self) -> bool:
        """TTFB and usage metrics are reported."""
        return True

    def service_metadata_frame(self) -> LLMServiceMetadataFrame:
        """Announce a realtime service so the aggregators switch to realtime mode."""
        return LLMServiceMetadataFrame(service_name=self.name, is_realtime_service=True)

    @property
    def accepts_intermediate_function_call_results(self) -> bool:
        """One result per tool call."""
        return False

    def _service_tools(self) -> ToolsSchema | list | None:
        return self._tools

    async def run_function_calls(self, function_calls: Sequence[FunctionCallFromLLM]) -> None:
        """Run the model's tool calls; a call to a tool the session does not offer now (e.g.
        one of another flow node's tools, called as the node changed) is refused: it does not
        run, its result is ``MISSING_FUNCTION_CALL_MESSAGE_TEMPLATE`` and the refusal is logged
        with the tool call's id.

        The tools offered are those of the last ``LLMSetToolsFrame`` / context; Pipecat drops
        the handlers of tools no longer offered, so a refused call has no handler to run.
        """
        for call in function_calls:
            if self.has_function(call.function_name):
                continue
            offered = sorted(t["function"]["name"] for t in self._tool_dicts())
            why = (
                "it is offered but has no handler"
                if call.function_name in offered
                else f"it is not allowed now (allowed: {', '.join(offered) or 'none'})"
            )
            self._log.warning(
                f"tool call {call.tool_call_id}: refused {call.function_name!r}: {why}"
            )
        await super().run_function_calls(function_calls)

    @property
    def response_active(self) -> bool:
        """True from ``response.create`` until ``response.done``."""
        return self._response_requested

    @property
    def bot_idle(self) -> bool:
        """True while no answer is under way and none is playing (a caller's voice now could
        not be a barge-in): the phone input may then read its socket in bursts."""
        return not (self._response_requested or self._bot_speaking)

    async def check_turn(self, pcm16: bytes, sample_rate: int) -> float | None:
        """The model service's turn model on a turn's audio: the probability that the turn is
        complete, or None (no session, a service without a turn model, the connection lost, or
        no verdict within ``TURN_CHECK_TIMEOUT_SECS``): the caller then judges it itself."""
        client = self._client
        if client is None or client.turn_model is None:
            return None
        try:
            verdict = await asyncio.wait_for(
                client.check_turn(pcm16, sample_rate), TURN_CHECK_TIMEOUT_SECS
            )
        except TimeoutError:
            self._log.warning(f"no turn.verdict within {TURN_CHECK_TIMEOUT_SECS:g} s")
            return None
        if verdict is None:
            return None
        if verdict.error is not None or verdict.probability is None:
            self._log.warning(f"turn.check failed on the model service: {verdict.error}")
            return None
        return verdict.probability

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def failed(self) -> bool:
        """True once the model service is lost for good (the apology path ran)."""
        return self._failed

    async def setup(self, setup: FrameProcessorSetup) -> None:
        """Connect to the model service while the pipeline is being set up.

        A failed connect does not fail the pipeline: the apology path runs once it starts.
        """
        await super().setup(setup)
        if not await self._connect():
            self._log.warning("model service unreachable at start; will retry once the call starts")

    async def _connect(self) -> bool:
        client = self._client_factory(self._url, token=self._token)
        try:
            started = await client.connect(self._session_start())
        except mc.ModelServiceError as e:
            self._log.warning(f"cannot open a model session: {e}")
            return False
        self._client = client
        self._session_responses = 0
        self._log.info(
            f"model session {started.session_id} on backend {started.backend} ({started.model})"
        )
        self._receive_task = self.create_task(self._receive_loop(client))
        return True

    async def stop(self, frame: EndFrame) -> None:
        """Graceful end of the call."""
        await super().stop(frame)
        await self._disconnect()

    async def cancel(self, frame: CancelFrame) -> None:
        """Immediate end of the call."""
        await super().cancel(frame)
        await self._disconnect()

    async def cleanup(self) -> None:
        """Always runs at teardown."""
        await super().cleanup()
        await self._disconnect()

    async def _disconnect(self) -> None:
        self._closing = True
        await self._give_up_pending_turns("the call ended before their answer")
        for name in ("_watchdog_task", "_holding_task"):
            task = getattr(self, name)
            if task and task is not asyncio.current_task():
                await self.cancel_task(task, timeout=1.0)
            setattr(self, name, None)
        if self._failure_task and self._failure_task is not asyncio.current_task():
            await self.cancel_task(self._failure_task, timeout=1.0)
            self._failure_task = None
        if self._receive_task:
            await self.cancel_task(self._receive_task, timeout=1.0)
            self._receive_task = None
        if self._client:
            client, self._client = self._client, None
            await client.close()

    # -- session config ----------------------------------------------------------------------

    def _tool_dicts(self) -> list[dict[str, Any]]:
        schema: Any = None
        if self._context is not None and is_given(self._context.tools):
            schema = self._context.tools
        elif self._tools is not None:
            schema = (
                self._tools if isinstance(self._tools, ToolsSchema) else ToolsSchema(self._tools)
            )
        if not isinstance(schema, ToolsSchema):
            return []
        out = []
        for tool in schema.standard_tools:
            spec = tool.to_default_dict() if hasattr(tool, "to_default_dict") else None
            if spec is None:
                continue
            out.append({"type": "function", "function": spec})
        return out

    def _given(self, value: Any) -> Any:
        return value if is_given(value) else None

    def _session_start(self) -> mc.SessionStart:
        return mc.SessionStart(
            call_id=self._call_id,
            system_prompt=self._given(self._settings.system_instruction) or "",
            voice=self._given(self._settings.voice),
            style=self._given(self._settings.style),
            tools=self._tool_dicts(),
            input_sample_rate=self._sample_rate,
            output_sample_rate=self._sample_rate,
            input_transcription=self._transcribe_caller,
        )

    async def _push_session_update(self) -> None:
        if self._client:
            await self._client.update_session(
                system_prompt=self._given(self._settings.system_instruction) or "",
                voice=self._given(self._settings.voice),
                style=self._given(self._settings.style),
                tools=self._tool_dicts(),
            )

    async def _update_settings(self, delta: StepAudio2Settings) -> dict[str, Any]:
        """Persona / voice / style changes (e.g. a flow node) become a session update."""
        changed = await super()._update_settings(delta)
        if changed.keys() & {"system_instruction", "voice", "style"}:
            await self._push_session_update()
        return changed

    # -- frames in ---------------------------------------------------------------------------

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Route pipeline frames to the model service."""
        if isinstance(frame, EndFrame) and self._response_requested:
            # Let the goodbye finish before the call ends (released on response.done).
            self._pending_end = frame
            return

        await super().process_frame(frame, direction)

        if isinstance(frame, InputAudioRawFrame):
            await self._on_user_audio(frame)
        elif isinstance(frame, UserStartedSpeakingFrame):
            await self._on_user_turn_started()
        elif isinstance(frame, UserStoppedSpeakingFrame):
            await self._on_user_turn_stopped()
        elif isinstance(frame, InterruptionFrame):
            await self._on_interruption()
        elif isinstance(frame, BotStartedSpeakingFrame):
            self._bot_speaking = True
            if self._response and self._response.started_speaking_at is None:
                self._response.started_speaking_at = time.monotonic()
        elif isinstance(frame, BotStoppedSpeakingFrame):
            self._bot_speaking = False
            self._line_playing = False
        elif isinstance(frame, InputDTMFFrame):
            if self._client:
                await self._client.append_text(f"The caller pressed {frame.button.value}.", "human")
        elif isinstance(frame, LLMContextFrame):
            await self._handle_context(frame.context, direction)
        elif isinstance(frame, LLMSetToolsFrame):
            self._sync_registered_tool_handlers(frame.tools)
            # the node's tools, also before any context reached the service (a node entered
            # without a response: verbatim greeting, caller speaks first)
            if is_given(frame.tools):
                self._tools = frame.tools
            await self._push_session_update()
        elif isinstance(frame, SpeakLineFrame):
            await self._speak_line(frame)
            return  # consumed: it became the bot's audio and text frames

        if isinstance(frame, InputAudioRawFrame):
            return  # consumed: it went to the model; nothing downstream needs the caller's audio
        await self.push_frame(frame, direction)
        if isinstance(frame, StartFrame):
            self._started = True
            if self._client is None and not self._failed:
                self._failure_task = self.create_task(self._on_connection_lost("no connection"))

    async def push_frame(self, frame: Frame, direction: FrameDirection = FrameDirection.DOWNSTREAM):
        """Deliver tool results to the model service as the base class broadcasts them."""
        if direction == FrameDirection.DOWNSTREAM and self._client is not None:
            if isinstance(frame, FunctionCallResultFrame):
                result = frame.result
                output = (
                    result if isinstance(result, str) else json.dumps(result, ensure_ascii=False)
                )
                await self._send_tool_result(frame.tool_call_id, output)
            elif isinstance(frame, FunctionCallCancelFrame):
                await self._send_tool_result(frame.tool_call_id, "CANCELLED")
        await super().push_frame(frame, direction)

    async def _send_tool_result(self, call_id: str, output: str) -> None:
        """The model service records a tool call when its response is done: a result that is
        ready earlier (fast handlers) is held until ``response.done``."""
        if self._response_requested:
            self._held_tool_results.append((call_id, output))
        elif self._client is not None:
            await self._client.send_tool_result(call_id, output)

    async def _flush_tool_results(self) -> None:
        held, self._held_tool_results = self._held_tool_results, []
        for call_id, output in held:
            if self._client is not None:
                await self._client.send_tool_result(call_id, output)

    async def _on_user_audio(self, frame: InputAudioRawFrame) -> None:
        if not self._in_user_turn:
            return  # not part of a turn (the gate in front keeps the pre-roll)
        if frame.sample_rate != self._sample_rate:
            self._log.warning(
                f"input audio at {frame.sample_rate} Hz, session expects {self._sample_rate} Hz"
            )
            return
        self._turn_audio += frame.audio
        if not self._streaming_turn():
            return  # kept in the turn's audio; sent whole once a session takes it
        self._pending_audio += frame.audio
        if len(self._pending_audio) >= self._send_batch:
            await self._flush_audio()

    def _streaming_turn(self) -> bool:
        """True while the current turn's audio goes to a live session as it comes."""
        return (
            self._client is not None
            and self._client is self._turn_client
            and not self._reconnecting
        )

    async def _flush_audio(self) -> None:
        if self._pending_audio and self._client is not None:
            audio, self._pending_audio = bytes(self._pending_audio), bytearray()
            await self._client.send_audio(audio)

    async def _on_user_turn_started(self) -> None:
        self._in_user_turn = True
        self._pending_audio = bytearray()
        self._turn_audio = bytearray()
        self._turn_client = None if self._reconnecting else self._client
        if self._turn_client is None:
            return
        await self._turn_client.clear_audio()

    async def _on_user_turn_stopped(self) -> None:
        if not self._in_user_turn:
            return
        self._in_user_turn = False
        audio, self._turn_audio = bytes(self._turn_audio), bytearray()
        if self._streaming_turn():
            await self._flush_audio()
            await self._client.commit()
            self._pending.add(audio, sent=True)
            await self._create_response()
            return
        # the session that heard the start of the turn is gone (or none was up): keep the turn
        self._pending_audio = bytearray()
        if audio:
            self._pending.add(audio, sent=False)
        if self._client is not None and not self._reconnecting:
            await self._send_pending_turns()
            await self._create_response()

    async def _send_pending_turns(self) -> list[int]:
        """Give the current session every pending turn it lacks (audio, then commit); the
        attempts each turn had before (0: its first send)."""
        before: list[int] = []
        while self._client is not None and (unsent := self._pending.unsent()):
            turn = unsent[0]
            await self._client.clear_audio()
            for i in range(0, len(turn.audio), self._send_batch):
                await self._client.send_audio(turn.audio[i : i + self._send_batch])
            await self._client.commit()
            before.append(turn.attempts)
            turn.attempts += 1
            turn.sent = True
        return before

    async def _on_interruption(self) -> None:
        """Barge-in: cancel the response; the model keeps only what the caller heard.

        The model generates faster than real time, so the response is often already done on
        the service side while the caller is still hearing it: cancel (truncate) then too.
        """
        if self._line_playing and not self._response_requested:
            # The caller spoke over the verbatim greeting: its playout stops (the transport
            # drops the rest) and the turn is answered as if it had ended; the model keeps
            # the whole greeting (it was never a model response to cut).
            self._line_playing = False
            self._bot_speaking = False
            self._log.info("barge-in over the greeting: the caller's turn is answered next")
            return
        if self._client is None or not (self._response_requested or self._bot_speaking):
            return
        self._response_after_done = False
        heard_ms = self._heard_ms()
        self._log.info(f"barge-in: caller heard {heard_ms:.0f} ms of the response")
        await self._client.cancel_response(heard_ms)
        self._bot_speaking = False
        await self.stop_all_metrics()
        if self._response_requested:
            await self._end_response(interrupted=True)

    def _heard_ms(self) -> float:
        stats = self._response
        if stats is None:
            return 0.0
        sent_ms = stats.audio_bytes / 2 / self._sample_rate * 1000.0
        if stats.started_speaking_at is None:
            return 0.0
        start = stats.started_speaking_at
        if stats.holding_bytes:  # the model's audio played after the holding line
            if stats.model_audio_at is None:
                return 0.0
            holding_secs = stats.holding_bytes / 2 / self._sample_rate
            start = max(start + holding_secs, stats.model_audio_at)
        played_ms = (time.monotonic() - start) * 1000.0
        return max(0.0, min(sent_ms, played_ms))

    async def _handle_context(self, context: LLMContext, direction: FrameDirection) -> None:
        """Sync new instructions; respond only when the context asks for a response.

        - ``LLMRunFrame`` (greeting, flow node entered): new developer/system message at the
          end → respond.
        - The assistant aggregator after tool results: arrives UPSTREAM → respond.
        - The realtime-mode flush of a user turn (ends with a user message) → no response;
          the turn end already created one.
        """
        first = self._context is None
        self._context = context
        messages = context.get_messages()
        new_instructions = False
        for message in messages[self._synced_messages :]:
            if isinstance(message, LLMSpecificMessage) or not isinstance(message, dict):
                continue
            role = message.get("role")
            content = message.get("content")
            if role in ("system", "developer") and isinstance(content, str) and self._client:
                await self._client.append_text(content, "system")
                new_instructions = True
        self._synced_messages = len(messages)
        if first:
            await self._push_session_update()
        last = messages[-1] if messages else None
        last_role = last.get("role") if isinstance(last, dict) else None
        if direction == FrameDirection.UPSTREAM or (
            new_instructions and last_role in ("system", "developer")
        ):
            if self._response_requested:
                self._response_after_done = True  # e.g. tool results while the filler plays
            else:
                await self._create_response()

    async def _create_response(self, instructions: str | None = None) -> None:
        if self._response_requested or self._client is None:
            return
        self._response_requested = True
        self._response = stats = ResponseStats(for_turns=len(self._pending))
        await self.start_processing_metrics()
        await self.start_ttfb_metrics()
        await self._client.create_response(instructions)
        self._session_responses += 1
        if self._response_timeout > 0:
            if self._watchdog_task:
                await self.cancel_task(self._watchdog_task)
            timeout = (
                self._first_response_timeout
                if self._session_responses == 1
                else self._response_timeout
            )
            self._watchdog_task = self.create_task(self._watch_response(stats, timeout))
        if self._holding_line_secs > 0:
            if self._holding_task:
                await self.cancel_task(self._holding_task)
            self._holding_task = self.create_task(self._hold_the_line(stats))

    def _still_silent(self, stats: ResponseStats) -> bool:
        """True while ``stats``'s response runs and no bot audio of it has gone out."""
        return (
            self._response is stats
            and self._response_requested
            and not self._audio_started
            and not self._closing
        )

    async def _hold_the_line(self, stats: ResponseStats) -> None:
        """Play the holding line once if the response is still silent after
        ``holding_line_secs`` (once for the pending caller turns, across their retries)."""
        await asyncio.sleep(self._holding_line_secs)
        if not self._still_silent(stats) or (self._pending and self._held_for_pending):
            return
        try:
            pcm = await self._holding_audio()
        except Exception as e:
            self._log.warning(f"no holding line: its audio provider failed ({e})")
            return
        if not pcm:
            return
        async with self._output_lock:
            if not self._still_silent(stats):
                return  # the model's audio came (or the response ended) meanwhile
            self._audio_started = True  # the model's audio now follows this line's
            self._held_for_pending = bool(self._pending)
            self._log.info(
                f"no bot audio {self._holding_line_secs:g} s after the response was asked "
                "for: playing the holding line"
            )
            if not stats.start_pushed:
                stats.start_pushed = True
                await self.push_frame(LLMFullResponseStartFrame())
            await self.push_frame(TTSStartedFrame())
            for piece in self._chunks(pcm):
                if self._response is not stats or not self._response_requested:
                    break  # barge-in or the response ended: stop the line there
                stats.holding_bytes += len(piece)
                await self.push_frame(TTSAudioRawFrame(piece, self._sample_rate, 1))
            else:
                await self.push_frame(HoldingLineFrame())
        await self._call_event_handler("on_holding_line")

    async def _watch_response(self, stats: ResponseStats, limit_secs: float) -> None:
        """Treat a response that stays silent past ``limit_secs`` as a lost connection."""
        await asyncio.sleep(limit_secs)
        self._watchdog_task = None
        if self._response is not stats or not self._response_requested:
            return
        if stats.audio_bytes or stats.tool_call or self._closing:
            return
        reason = f"no answer within {limit_secs:g} s"
        self._log.warning(f"model service: {reason}; dropping the connection")
        client, self._client = self._client, None  # its Closed event is now ignored
        if self._receive_task:
            await self.cancel_task(self._receive_task, timeout=1.0)
            self._receive_task = None
        if client is not None:
            await client.close()
        self._failure_task = self.create_task(self._on_connection_lost(reason))

    # -- events out ----------------------------------------------------------------------------

    async def _receive_loop(self, client: mc.ModelServiceClient) -> None:
        async for event in client.events():
            if isinstance(event, mc.Closed):
                if not self._closing and client is self._client:
                    self._log.warning(
                        f"model service connection lost ({event.code}: {event.reason})"
                    )
                    self._failure_task = self.create_task(self._on_connection_lost(event.reason))
                return
            try:
                await self._handle_event(event)
            except Exception as e:  # keep the call alive; report upstream
                await self.push_error(
                    f"{self}: error handling {type(event).__name__}: {e}", exception=e
                )

    async def _on_connection_lost(self, reason: str) -> None:
        """Reconnect (``reconnect_attempts``) and carry on where the call was; otherwise
        apologise and end (or ``on_failure``)."""
        was_answering = self._response_requested
        if self._response_requested:
            await self._end_response(interrupted=False, release_end=False)
        self._client = None
        self._pending.session_lost()
        self._reconnecting = True
        try:
            while self._reconnects_left > 0 and not self._closing:
                self._reconnects_left -= 1
                if await self._connect():
                    self._log.info("reconnected to the model service")
                    await self._resume(reason, was_answering)
                    return
        finally:
            self._reconnecting = False
        await self._fail(reason)

    async def _resume(self, reason: str, was_answering: bool) -> None:
        """On a new session: the conversation so far, then the pending caller turns again
        (a retry, within ``turn_retries``) or the response that was dropped."""
        if self._context is not None:
            messages = self._context.get_messages()
            if self._client is not None:
                await replay_conversation(self._client, messages)
            self._synced_messages = len(messages)
        if self._pending:
            if not self._pending.can_retry:
                self._reconnecting = False
                await self._fail(f"{reason}; the caller's turn got no answer after a retry")
                return
            before = await self._send_pending_turns()
            self._reconnecting = False  # a turn ending from now on goes to this session
            retried = sum(1 for attempts in before if attempts > 0)
            self._log.warning(
                f"retrying {len(before)} unanswered caller turn(s) on the new model session"
            )
            for _ in range(retried):
                await self._call_event_handler("on_turn_retried")
            await self._create_response()
        elif was_answering:
            self._reconnecting = False
            await self._create_response()  # the greeting / the answer after a tool, again
        elif self._pending_end is not None:
            frame, self._pending_end = self._pending_end, None
            await self.queue_frame(frame)

    async def _give_up_pending_turns(self, why: str) -> None:
        """The pending caller turns will get no answer: count each one."""
        count = self._pending.give_up()
        self._held_for_pending = False
        if count:
            self._log.warning(f"{count} caller turn(s) unanswered: {why}")
        for _ in range(count):
            await self._call_event_handler("on_turn_unanswered")

    async def _fail(self, reason: str) -> None:
        """Play the cached apology, then end the call or run ``on_failure``."""
        if self._failed:
            return
        self._failed = True
        self._log.error(f"model service lost for good ({reason}): playing the apology")
        await self._give_up_pending_turns("the model service is lost")
        pcm = await asyncio.to_thread(apology_pcm, self._sample_rate, self._apology_text)
        await self._push_line(pcm)
        await self._call_event_handler("on_model_service_failed", reason)
        if self._on_failure is not None:
            try:
                await self._on_failure()
                return
            except Exception as e:
                self._log.exception(f"on_failure handler failed ({e}); ending the call")
        if self._pending_end is not None:
            frame, self._pending_end = self._pending_end, None
            await self.queue_frame(frame)
        else:
            await self.push_frame(
                EndWorkerFrame(reason="model service unavailable"), FrameDirection.UPSTREAM
            )

    async def _handle_event(self, event: Any) -> None:
        if isinstance(event, mc.ResponseStarted):
            if self._response is None:
                self._response = ResponseStats()
            self._response.response_id = event.response_id
            async with self._output_lock:
                if not self._response.start_pushed:  # the holding line may have pushed it
                    self._response.start_pushed = True
                    await self.push_frame(LLMFullResponseStartFrame())
        elif isinstance(event, mc.AudioChunk):
            async with self._output_lock:  # after a holding line that is being pushed
                await self._on_model_audio(event)
        elif isinstance(event, mc.TextDelta):
            if not self._response_requested:
                return
            text = LLMTextFrame(event.text)
            text.append_to_context = False  # TTSTextFrame feeds the assistant context
            await self.push_frame(text)
            spoken = TTSTextFrame(event.text, text_type=TextType.SENTENCE)
            spoken.includes_inter_frame_spaces = True
            await self.push_frame(spoken)
        elif isinstance(event, mc.ToolCall):
            if self._response is not None:
                self._response.tool_call = True
            self._turns_answered(self._response)
            await self.run_function_calls(
                [
                    FunctionCallFromLLM(
                        function_name=event.name,
                        tool_call_id=event.call_id,
                        arguments=event.arguments,
                        context=self._context,
                    )
                ]
            )
        elif isinstance(event, mc.ResponseDone):
            if self._response is not None:
                self._response.server_timings = dict(event.timings or {})
            usage = event.usage or {}
            prompt, completion = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
            if prompt or completion:
                await self.start_llm_usage_metrics(
                    LLMTokenUsage(
                        prompt_tokens=prompt,
                        completion_tokens=completion,
                        total_tokens=prompt + completion,
                    )
                )
            self._log.debug(f"response done: {event.status} timings={event.timings}")
            if event.status != "cancelled":
                await self.stop_processing_metrics()
                await self._end_response(interrupted=False)
            await self._flush_tool_results()
            if self._response_after_done and not self._response_requested:
                self._response_after_done = False
                await self._create_response()
        elif isinstance(event, mc.InputAudioTranscript):
            self._log.info(f"caller turn {event.item}: {event.text!r}")
            if event.text:
                await self.push_frame(
                    TranscriptionFrame(
                        text=event.text,
                        user_id=self._call_id or "caller",
                        timestamp=time_now_iso8601(),
                        finalized=True,
                    )
                )
        elif isinstance(event, mc.ErrorEvent):
            self._log.warning(f"model service error {event.code}: {event.message}")
            if event.code == "response_active":
                return
            if self._response_requested and event.fatal:
                await self._end_response(interrupted=False)

    async def _on_model_audio(self, event: mc.AudioChunk) -> None:
        stats = self._response
        if not self._response_requested or stats is None:
            return  # audio of a cancelled response still in flight
        if stats.model_audio_at is None:
            stats.model_audio_at = time.monotonic()
            await self.stop_ttfb_metrics()
            self._turns_answered(self._response)
        if not self._audio_started:
            self._audio_started = True
            await self.push_frame(TTSStartedFrame())
        stats.audio_bytes += len(event.pcm)
        await self.push_frame(TTSAudioRawFrame(event.pcm, event.sample_rate, 1))

    def _turns_answered(self, stats: ResponseStats | None) -> None:
        """The response produced audio or a tool call: the turns pending when it was asked for
        have their answer, and the session works (a later loss may reconnect again)."""
        if stats is not None and stats.for_turns:
            self._pending.answered(stats.for_turns)
            stats.for_turns = 0
            self._held_for_pending = False
        self._reconnects_left = self._reconnect_attempts

    def _chunks(self, pcm: bytes) -> Iterator[bytes]:
        """``pcm`` in 100 ms pieces: the frames a prerendered line goes out as."""
        step = self._sample_rate // 10 * 2
        for i in range(0, len(pcm), step):
            yield pcm[i : i + step]

    async def _push_line(self, pcm: bytes, text: str | None = None) -> None:
        """A prerendered line (the apology, a verbatim greeting) as one whole bot response;
        ``text`` goes to the assistant aggregator: the bot's turn in the context."""
        await self.push_frame(LLMFullResponseStartFrame())
        await self.push_frame(TTSStartedFrame())
        if text is not None:
            spoken = TTSTextFrame(text, text_type=TextType.SENTENCE)
            spoken.includes_inter_frame_spaces = True
            await self.push_frame(spoken)
        for piece in self._chunks(pcm):
            await self.push_frame(TTSAudioRawFrame(piece, self._sample_rate, 1))
        await self.push_frame(TTSStoppedFrame())
        await self.push_frame(LLMFullResponseEndFrame())

    async def _speak_line(self, frame: SpeakLineFrame) -> None:
        """Play a verbatim line at once and record it as the bot's turn (see SpeakLineFrame)."""
        if frame.pcm is None:
            self._log.warning("greeting not rendered: asking the model to say it")
            await self._create_response(
                instructions="Say exactly these words to the caller, and nothing else: "
                f"{frame.text}"
            )
            return
        if self._response_requested:
            self._log.warning("a response is under way: the verbatim line is skipped")
            return
        if frame.sample_rate != self._sample_rate:
            self._log.warning(
                f"line rendered at {frame.sample_rate} Hz, the call runs at {self._sample_rate} Hz"
            )
            return
        self._line_playing = True
        await self._push_line(frame.pcm, frame.text)
        if self._client is not None:
            await self._client.append_text(frame.text, "assistant")

    async def _end_response(self, *, interrupted: bool, release_end: bool = True) -> None:
        was_active = self._response_requested
        self._response_requested = False
        if self._audio_started:
            await self.push_frame(TTSStoppedFrame())
        if was_active and not interrupted:
            await self.push_frame(LLMFullResponseEndFrame())
        self._audio_started = False
        if release_end and self._pending_end is not None:
            frame, self._pending_end = self._pending_end, None
            await self.queue_frame(frame)
