"""One call = one Pipecat pipeline: transport in → turn-taking → Step-Audio 2 → transport out.

Phone calls run the whole pipeline at 8 kHz: the Twilio serializer then only converts mu-law,
Silero runs natively at 8 kHz, and the model service receives and returns 8 kHz PCM, so no
stream resampler (and none of its ~95 ms bursts) sits on the call path in this process.

Layout: input → EchoGuard → user aggregator (Silero VAD, MinDuration start, Smart Turn stop) →
CallerAudioGate (turn audio + pre-roll only) → StepAudio2Service → [extra] → output → BotAudioTap → assistant aggregator. Per-turn latency is
logged by ``TurnMetricsObserver``. Phone calls use ``TwilioMediaTransport``
(``bots/twilio/media_transport.py``): caller audio pushed downstream by the receive task itself,
no interrupted audio sent after a ``clear``.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from loguru import logger
from pipecat.audio.turn.smart_turn.base_smart_turn import SmartTurnParams
from pipecat.audio.vad.vad_analyzer import VADParams
from pipecat.frames.frames import LLMRunFrame
from pipecat.observers.base_observer import BaseObserver
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    LLMContextAggregatorPair,
    LLMUserAggregatorParams,
)
from pipecat.turns.user_mute.mute_until_first_bot_complete_user_mute_strategy import (
    MuteUntilFirstBotCompleteUserMuteStrategy,
)
from pipecat.turns.user_stop.speech_timeout_user_turn_stop_strategy import (
    SpeechTimeoutUserTurnStopStrategy,
)
from pipecat.turns.user_stop.turn_analyzer_user_turn_stop_strategy import (
    TurnAnalyzerUserTurnStopStrategy,
)
from pipecat.turns.user_turn_strategies import UserTurnStrategies
from pipecat.workers.runner import WorkerRunner

from bots.profile import BotProfile
from bots.tracing import call_span_attributes, tracing_enabled
from pipeline.call_audio.batcher import QuietTest, SpeechHoldTest, quiet_hold, speech_hold
from pipeline.call_audio.echo_guard import BotAudioTap, EchoDetector, EchoGuard, EchoReference
from pipeline.call_audio.gate import CallerAudioGate
from pipeline.call_audio.stale_audio_guard import StaleAudioGuard
from pipeline.flows.call_control import CallControl
from pipeline.flows.runtime import FlowRuntime, attach_flow
from pipeline.observers.fan_out import FanOutObserver
from pipeline.observers.turn_metrics import TurnMetricsObserver
from pipeline.observers.worker_proxy import use_lean_observer
from pipeline.step_audio2.apology import DEFAULT_APOLOGY, FailurePolicy
from pipeline.step_audio2.frames import SpeakLineFrame
from pipeline.step_audio2.holding import DEFAULT_HOLDING_LINE, HoldingAudio, flite_holding_audio
from pipeline.step_audio2.service import StepAudio2Service, StepAudio2Settings
from pipeline.step_audio2.spoken_lines import SpokenLine, SpokenLines
from pipeline.turn_taking.endpoint_vad import EndpointVADAnalyzer
from pipeline.turn_taking.min_duration_start import MinDurationUserTurnStartStrategy
from pipeline.turn_taking.speculative_smart_turn import Judge, SpeculativeSmartTurnAnalyzer
from stepcall.settings import Settings

PHONE_RATE = 8000
#: Pipeline sample rate of browser (WebRTC) calls.
BROWSER_RATE = 16000
#: How long a call waits for its verbatim greeting still being rendered (the server's first
#: seconds) before asking the model to say it instead.
GREETING_WAIT_SECS = 3.0
#: Bot audio goes to Twilio in 100 ms media messages (Pipecat's default is 40 ms), paced in real
#: time behind the transport's lead (``STEPCALL_TWILIO_AUDIO_LEAD_MS``): each message costs the
#: event loop several task wake-ups and a WebSocket send, and 2.5 times fewer of them let one bot
#: server carry more calls. The model's audio arrives in larger pieces (token2wav's first chunk
#: is ~240 ms), so the first message waits for nothing.
PHONE_AUDIO_OUT_10MS_CHUNKS = 10
#: Smart Turn's silence fallback: an INCOMPLETE verdict holds the turn at most this long.
SMART_TURN_STOP_SECS = 2.0


@dataclass
class CallInfo:
    """Identifiers of one call."""

    call_id: str
    stream_sid: str
    from_number: str | None = None
    to_number: str | None = None
    params: dict[str, Any] = field(default_factory=dict)


def failure_policy(profile: BotProfile) -> FailurePolicy:
    """What a call does when the model service is lost (``profile.on_model_failure``)."""
    text = profile.apology or DEFAULT_APOLOGY
    if profile.on_model_failure == "transfer" and profile.transfer_to:
        return FailurePolicy("transfer", profile.transfer_to, text)
    return FailurePolicy("end", None, text)


def vad_analyzer(profile: BotProfile, sample_rate: int = PHONE_RATE) -> EndpointVADAnalyzer:
    """The call's Silero VAD: stop timer from the acoustic end of speech (``vad_stop_secs``)."""
    return EndpointVADAnalyzer(
        sample_rate=sample_rate, params=VADParams(stop_secs=profile.vad_stop_secs)
    )


def turn_strategies(
    profile: BotProfile,
    vad: EndpointVADAnalyzer,
    call_id: str = "",
    judge: Judge | None = None,
) -> UserTurnStrategies:
    """Turn strategies of a bot.

    Start: VAD, but while the bot speaks only after ``min_interrupt_secs`` of speech (so
    backchannels do not cut the bot off). Stop: Smart Turn v3 (default; its inference starts
    during the pause, before ``vad`` ends speech; run by ``judge``, the model service's turn
    model, when given and it answers) or a speech timeout.
    """
    start = [MinDurationUserTurnStartStrategy(min_secs=profile.min_interrupt_secs, call_id=call_id)]
    if profile.smart_turn:
        params = SmartTurnParams(stop_secs=SMART_TURN_STOP_SECS)
        analyzer = SpeculativeSmartTurnAnalyzer(vad=vad, params=params, judge=judge)
        # a realtime service: the turn ends on the analyzer's verdict, not on a transcript
        # (set here, Pipecat would otherwise flip it and log a warning on every call)
        stop = [TurnAnalyzerUserTurnStopStrategy(turn_analyzer=analyzer, wait_for_transcript=False)]
    else:
        stop = [SpeechTimeoutUserTurnStopStrategy(user_speech_timeout=0.6)]
    return UserTurnStrategies(start=start, stop=stop)


def mute_strategies(profile: BotProfile) -> list[Any]:
    """``profile.mute_during_greeting``: the caller cannot interrupt the greeting."""
    if profile.mute_during_greeting:
        return [MuteUntilFirstBotCompleteUserMuteStrategy()]
    return []


@dataclass
class CallPipelineParts:
    """The processors of one call that callers and tests look at."""

    service: StepAudio2Service
    context: LLMContext
    echo_guard: EchoGuard
    metrics: TurnMetricsObserver
    vad: EndpointVADAnalyzer | None = None
    aggregators: LLMContextAggregatorPair | None = None
    #: The call's one Pipecat observer; the metrics, records and flow observers sit behind it.
    observer_hub: FanOutObserver | None = None
    #: The running flow (set by :func:`conversation_starter` for a bot with a flow).
    flow: FlowRuntime | None = None
    #: Keeps audio of an interrupted reply from playing after the barge-in (every transport).
    stale_audio: StaleAudioGuard | None = None
    #: When a phone input may hold quiet caller audio back (its ``coalesce_while(quiet=...)``).
    quiet_hold: QuietTest | None = None
    #: When a phone input may hold the caller's speech back (its ``coalesce_while(speech=...)``).
    speech_hold: SpeechHoldTest | None = None
    #: How long a phone input may leave its socket unread while a hold fills
    #: (its ``coalesce_while(pause_reading=...)``; see :func:`read_pause`).
    read_pause: Callable[[], float] | None = None


def build_call(
    transport: Any,
    profile: BotProfile,
    settings: Settings,
    call: CallInfo,
    *,
    sample_rate: int = PHONE_RATE,
    extra_processors: list[Any] | None = None,
    call_control: CallControl | None = None,
    tools: Any = None,
    echo_guard: bool = True,
    lines: SpokenLines | None = None,
) -> tuple[Pipeline, CallPipelineParts]:
    """Assemble the per-call pipeline; pass ``parts.metrics`` to the worker's observers.

    ``transport`` is anything with ``input()`` and ``output()`` processors. ``call_control``
    performs the transfer when the profile's failure policy says so. ``tools``: tools the model
    may call from the start (register their handlers on ``parts.service``).
    """
    policy = failure_policy(profile)
    log = logger.bind(call_id=call.call_id)
    on_failure = None
    if policy.action == "transfer" and call_control is not None:
        to = policy.transfer_to or ""

        async def on_failure() -> None:
            log.warning(f"model service lost: transferring the caller to {to}")
            result = await call_control.transfer(to)
            if not result.ok:
                raise RuntimeError(f"transfer to {to} failed: {result.detail}")

    service = StepAudio2Service(
        url=settings.model_url,
        token=settings.model_token,
        call_id=call.call_id,
        sample_rate=sample_rate,
        settings=StepAudio2Settings(
            system_instruction=profile.persona, voice=profile.voice, style=profile.style
        ),
        tools=tools,
        apology_text=policy.text,
        on_failure=on_failure,
        holding_line_secs=settings.holding_line_secs,
        holding_audio=holding_audio(profile, sample_rate, lines),
    )
    messages: list[dict[str, Any]] = []
    # A flow's initial node brings its own greeting instruction (FlowRuntime.start).
    if profile.bot_speaks_first and profile.flow is None and not profile.greeting_say:
        messages.append(
            {"role": "developer", "content": profile.greeting or "Greet the caller briefly."}
        )
    context = LLMContext(messages)
    vad = vad_analyzer(profile, sample_rate)
    judge = service.check_turn if settings.turn_model_at == "service" else None
    strategies = turn_strategies(profile, vad, call.call_id, judge)
    aggregators = LLMContextAggregatorPair(
        context,
        user_params=LLMUserAggregatorParams(
            vad_analyzer=vad,
            user_turn_strategies=strategies,
            user_mute_strategies=mute_strategies(profile),
        ),
    )
    user_agg, assistant_agg = aggregators.user(), aggregators.assistant()
    slow_speaking_heartbeat(user_agg)
    reference = EchoReference(sample_rate)
    guard = EchoGuard(EchoDetector(reference), call_id=call.call_id, enabled=echo_guard)
    gate = CallerAudioGate()
    processors = [transport.input(), guard, user_agg, gate, service]
    processors += extra_processors or []
    output = transport.output()
    stale_audio = getattr(output, "stale_audio", None) or StaleAudioGuard().install(output)
    # the echo's clock: when the caller hears each chunk (a transport that sends ahead knows)
    clock = (lambda: output.playout_end) if hasattr(output, "playout_end") else None
    processors += [output, BotAudioTap(reference, play_clock=clock), assistant_agg]
    parts = CallPipelineParts(
        service=service,
        context=context,
        echo_guard=guard,
        metrics=TurnMetricsObserver(call.call_id),
        vad=vad,
        aggregators=aggregators,
        stale_audio=stale_audio,
        quiet_hold=quiet_hold(vad, turn_idle(gate, strategies)),
        speech_hold=speech_hold(
            vad, lambda: gate.in_turn and service.bot_idle, pause_acted_on(vad, strategies)
        ),
        read_pause=read_pause(vad, service),
    )
    return Pipeline(processors), parts


def batch_caller_audio(phone_input: Any, parts: CallPipelineParts) -> None:
    """A phone input's batching on a call (the Twilio input, the loopback phone): fewer, longer
    caller frames where that changes nothing. Up to 200 ms of a provably quiet line while no
    turn is open, ~80-100 ms of the caller's loud speech in a turn while the bot is idle, else
    40 ms pairs while nobody speaks or the caller speaks steadily (never in the pause at the end
    of speech; :mod:`pipeline.call_audio.batcher`); the socket is read in bursts during those
    holds (fewer wake-ups; :func:`read_pause` says how long)."""
    vad = parts.vad
    if vad is None:
        return
    phone_input.coalesce_while(
        lambda: vad.steady,
        quiet=parts.quiet_hold,
        pause_reading=parts.read_pause,
        speech=parts.speech_hold,
    )


def read_pause(vad: EndpointVADAnalyzer, service: StepAudio2Service) -> Callable[[], float]:
    """The longest a phone input may leave its socket unread while a hold fills: the whole
    hold while the bot is idle (a caller who starts talking is heard up to 200 ms later, never
    the end of a turn); while it answers, less than the VAD needs to start speech
    (:attr:`EndpointVADAnalyzer.start_lead_secs`), so a barge-in is decided on audio read live,
    on the frame it would have been frame by frame."""

    def secs() -> float:
        return math.inf if service.bot_idle else vad.start_lead_secs

    return secs


def turn_analyzers(strategies: UserTurnStrategies) -> list[Any]:
    """The turn analyzers (Smart Turn) of a bot's stop strategies."""
    return [
        analyzer
        for strategy in strategies.stop
        if (analyzer := getattr(strategy, "_turn_analyzer", None)) is not None
    ]


def pause_acted_on(vad: EndpointVADAnalyzer, strategies: UserTurnStrategies) -> Callable[[], float]:
    """The shortest pause in the caller's speech that something acts on: Smart Turn's early
    inference (``speculate_after_secs``), else VAD's ``stop_secs``."""
    analyzers = [
        a for a in turn_analyzers(strategies) if isinstance(a, SpeculativeSmartTurnAnalyzer)
    ]

    def secs() -> float:
        return min([vad.params.stop_secs] + [a.speculate_after_secs for a in analyzers])

    return secs


def turn_idle(gate: CallerAudioGate, strategies: UserTurnStrategies) -> Callable[[], bool]:
    """True while no user turn is open and no turn analyzer counts the caller's silence: Smart
    Turn's fallback ends a turn after ``stop_secs`` of audio it was given, so audio held back
    at the input would move that end."""
    analyzers = turn_analyzers(strategies)

    def idle() -> bool:
        return not gate.in_turn and not any(a.speech_triggered for a in analyzers)

    return idle


#: How often the user aggregator broadcasts ``UserSpeakingFrame`` while the caller talks.
SPEAKING_HEARTBEAT_SECS = 1.0


def slow_speaking_heartbeat(user_agg: Any) -> None:
    """One ``UserSpeakingFrame`` a second while the caller talks instead of Pipecat's five.

    Each is a frame broadcast up and down the pipeline (through the echo guard, the input
    transport and the worker's source). Nothing on a call reads it more finely than the
    worker's idle monitor (``idle_timeout_secs``, minutes); Pipecat's VAD controller takes the
    period as a constructor argument, which the aggregator does not pass on.
    """
    controller = getattr(user_agg, "_vad_controller", None)
    if controller is not None:
        controller._speech_activity_period = SPEAKING_HEARTBEAT_SECS


def holding_line(profile: BotProfile, sample_rate: int = PHONE_RATE) -> SpokenLine:
    """The holding line ("One moment, please.") in a bot's voice at a call's rate."""
    return SpokenLine(DEFAULT_HOLDING_LINE, profile.voice, profile.style, sample_rate)


def holding_audio(
    profile: BotProfile, sample_rate: int, lines: SpokenLines | None
) -> HoldingAudio:
    """The holding line a slow answer plays: the one the model service rendered in the bot's
    voice at start-up (``lines``), else the local speech engine's (never a wait for a render
    at the moment the caller is already waiting)."""
    fallback = flite_holding_audio(sample_rate)
    line = holding_line(profile, sample_rate)

    async def audio() -> bytes | None:
        pcm = lines.cached(line) if lines is not None else None
        return pcm if pcm is not None else await fallback()

    return audio


def greeting_line(profile: BotProfile, sample_rate: int = PHONE_RATE) -> SpokenLine | None:
    """The verbatim greeting of a bot (``greeting.say``) at a call's rate; None without one."""
    if not (profile.greeting_say and profile.bot_speaks_first):
        return None
    return SpokenLine(profile.greeting_say.strip(), profile.voice, profile.style, sample_rate)


def conversation_starter(
    worker: PipelineWorker,
    parts: CallPipelineParts,
    profile: BotProfile,
    call_control: CallControl | None = None,
    *,
    lines: SpokenLines | None = None,
    sample_rate: int = PHONE_RATE,
) -> Callable[[], Awaitable[None]]:
    """What to run once the caller is connected; call before the worker runs.

    A bot with a flow gets a :class:`FlowRuntime` (``parts.flow``): nodes, tools, silence
    re-prompts, the end and transfer of the call through ``call_control``; starting it enters
    the initial node. A bot with a verbatim greeting (``greeting.say``) plays it from ``lines``
    (rendered at server start-up) at once; otherwise a plain bot greets first (an
    ``LLMRunFrame``) when its profile says so.
    """
    line = greeting_line(profile, sample_rate)

    async def say_greeting() -> None:
        assert line is not None
        pcm = await lines.get(line, GREETING_WAIT_SECS) if lines is not None else None
        await worker.queue_frame(SpeakLineFrame(line.text, pcm, sample_rate))

    if profile.flow is not None:
        if parts.aggregators is None:
            raise ValueError("a flow needs the pipeline's context aggregators (use build_call)")
        runtime = attach_flow(
            profile.flow,
            service=parts.service,
            context_aggregator=parts.aggregators,
            worker=worker,
            call_control=call_control,
            observer_hub=parts.observer_hub,
        )
        parts.flow = runtime
        if line is None:
            return runtime.start

        async def start_flow() -> None:
            await say_greeting()  # first: the caller hears it while the node is entered
            await runtime.start()

        return start_flow

    async def start() -> None:
        if line is not None:
            await say_greeting()
        elif profile.bot_speaks_first:
            await worker.queue_frames([LLMRunFrame()])

    return start


def call_worker(
    pipeline: Pipeline,
    parts: CallPipelineParts,
    call_id: str,
    *,
    sample_rate: int = PHONE_RATE,
    observers: list[BaseObserver] | None = None,
    idle_timeout_secs: float | None = 600,
    span_attributes: dict[str, str] | None = None,
) -> PipelineWorker:
    """The worker a call runs in: metrics on, the turn-metrics observer attached, no RTVI
    (a phone caller has no RTVI client; its processor and observer would see every frame), and
    an observer proxy that queues only what the call's observers look at
    (:class:`pipeline.observers.worker_proxy.LeanWorkerObserver`).

    OpenTelemetry spans (a conversation span per call, a span per turn) are on when
    ``bots.tracing.setup_tracing`` ran in this process (``STEPCALL_OTEL_EXPORTER``).
    """
    parts.observer_hub = FanOutObserver([parts.metrics, *(observers or [])])
    worker = PipelineWorker(
        pipeline,
        params=PipelineParams(
            audio_in_sample_rate=sample_rate,
            audio_out_sample_rate=sample_rate,
            enable_metrics=True,
            enable_usage_metrics=True,
        ),
        observers=[parts.observer_hub],
        idle_timeout_secs=idle_timeout_secs,
        cancel_on_idle_timeout=True,
        conversation_id=call_id,
        enable_rtvi=False,
        enable_tracing=tracing_enabled(),
        enable_turn_tracking=tracing_enabled(),  # its observer only feeds the trace spans
        additional_span_attributes=span_attributes,
    )
    return use_lean_observer(worker)




def watch_service_events(service: StepAudio2Service, observers: list[Any] | None) -> None:
    """Hand the call's service to each observer that counts its events (one with a
    ``watch_service(service)`` method, e.g. the call record's: holding lines, retried and
    unanswered turns)."""
    for observer in observers or []:
        watch = getattr(observer, "watch_service", None)
        if callable(watch):
            watch(service)


class CallRunner:
    """One call's run on a transport, the same for every transport.

    It assembles the pipeline (:func:`build_call`) and its worker (:func:`call_worker`), starts
    the conversation when the transport says the caller is connected (:meth:`caller_connected`:
    the flow's first node or the greeting), ends the worker when either side hangs up
    (:meth:`end`) and runs it (:meth:`run`). A transport's own module adds only what is its own:
    the Twilio call its media transport, marks and batching; the browser call its data-channel
    messages and connect watchdog.
    """

    def __init__(
        self,
        transport: Any,
        call: CallInfo,
        profile: BotProfile,
        settings: Settings,
        *,
        sample_rate: int = PHONE_RATE,
        extra_processors: list[Any] | None = None,
        call_control: CallControl | None = None,
        echo_guard: bool = True,
        observers: list[BaseObserver] | None = None,
        lines: SpokenLines | None = None,
    ) -> None:
        self.log = logger.bind(call_id=call.call_id)
        pipeline, self.parts = build_call(
            transport,
            profile,
            settings,
            call,
            sample_rate=sample_rate,
            extra_processors=extra_processors,
            call_control=call_control,
            echo_guard=echo_guard,
            lines=lines,
        )
        self.worker = call_worker(
            pipeline,
            self.parts,
            call.call_id,
            sample_rate=sample_rate,
            observers=observers,
            span_attributes=call_span_attributes(call, profile.name),
        )
        self._start = conversation_starter(
            self.worker, self.parts, profile, call_control, lines=lines, sample_rate=sample_rate
        )
        watch_service_events(self.parts.service, observers)

    async def caller_connected(self, what: str) -> None:
        """The caller is on the line: log ``what`` and start the conversation."""
        self.log.info(what)
        await self._start()

    async def end(self, why: str) -> None:
        """End the call's pipeline (the caller hung up, the peer left, ...)."""
        self.log.info(why)
        await self.worker.cancel()

    async def run(self) -> None:
        """Run the call until it ends."""
        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(self.worker)
        await runner.run()
