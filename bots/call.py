"""One call = one Pipecat pipeline: transport in → turn-taking → Step-Audio 2 → transport out.

Phone calls run the whole pipeline at 8 kHz: the Twilio serializer then only converts mu-law,
Silero runs natively at 8 kHz, and the model service receives and returns 8 kHz PCM, so no
stream resampler (and none of its ~95 ms bursts) sits on the call path in this process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from loguru import logger
from pipecat.audio.turn.smart_turn.base_smart_turn import SmartTurnParams
from pipecat.audio.turn.smart_turn.local_smart_turn_v3 import LocalSmartTurnAnalyzerV3
from pipecat.audio.vad.silero import SileroVADAnalyzer
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
from pipecat.serializers.twilio import TwilioFrameSerializer
from pipecat.transports.websocket.fastapi import (
    FastAPIWebsocketParams,
    FastAPIWebsocketTransport,
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
from bots.settings import Settings
from pipeline.step_audio2_service import StepAudio2Service, StepAudio2Settings
from pipeline.twilio_marks import TwilioMarkProcessor

PHONE_RATE = 8000


@dataclass
class CallInfo:
    """Identifiers of one call."""

    call_id: str
    stream_sid: str
    from_number: str | None = None
    to_number: str | None = None
    params: dict[str, Any] = field(default_factory=dict)


def turn_strategies(profile: BotProfile) -> UserTurnStrategies:
    """Turn-stop strategy for a bot: Smart Turn v3 (default) or a plain speech timeout."""
    if profile.smart_turn:
        analyzer = LocalSmartTurnAnalyzerV3(params=SmartTurnParams(stop_secs=2.0))
        stop = [TurnAnalyzerUserTurnStopStrategy(turn_analyzer=analyzer)]
    else:
        stop = [SpeechTimeoutUserTurnStopStrategy(user_speech_timeout=0.6)]
    return UserTurnStrategies(stop=stop)


def build_call_pipeline(
    transport: Any,
    profile: BotProfile,
    settings: Settings,
    call: CallInfo,
    *,
    sample_rate: int = PHONE_RATE,
    extra_processors: list[Any] | None = None,
) -> tuple[Pipeline, StepAudio2Service, Any]:
    """Assemble the per-call pipeline around a transport."""
    service = StepAudio2Service(
        url=settings.model_url,
        token=settings.model_token,
        call_id=call.call_id,
        sample_rate=sample_rate,
        settings=StepAudio2Settings(
            system_instruction=profile.persona, voice=profile.voice, style=profile.style
        ),
    )
    messages: list[dict[str, Any]] = []
    if profile.bot_speaks_first:
        messages.append(
            {"role": "developer", "content": profile.greeting or "Greet the caller briefly."}
        )
    context = LLMContext(messages)
    user_agg, assistant_agg = LLMContextAggregatorPair(
        context,
        user_params=LLMUserAggregatorParams(
            vad_analyzer=SileroVADAnalyzer(
                sample_rate=sample_rate, params=VADParams(stop_secs=profile.vad_stop_secs)
            ),
            user_turn_strategies=turn_strategies(profile),
        ),
    )
    processors = [transport.input(), user_agg, service, *(extra_processors or [])]
    processors += [transport.output(), assistant_agg]
    return Pipeline(processors), service, context


async def run_twilio_call(
    websocket: Any,
    call: CallInfo,
    profile: BotProfile,
    settings: Settings,
    *,
    observers: list[BaseObserver] | None = None,
) -> None:
    """Run one Twilio Media Streams call on an accepted WebSocket until it ends."""
    log = logger.bind(call_id=call.call_id)
    hang_up = bool(settings.twilio_account_sid and settings.twilio_auth_token)
    serializer = TwilioFrameSerializer(
        stream_sid=call.stream_sid,
        call_sid=call.call_id,
        account_sid=settings.twilio_account_sid,
        auth_token=settings.twilio_auth_token,
        params=TwilioFrameSerializer.InputParams(auto_hang_up=hang_up),
    )
    transport = FastAPIWebsocketTransport(
        websocket=websocket,
        params=FastAPIWebsocketParams(
            audio_in_enabled=True,
            audio_out_enabled=True,
            audio_in_sample_rate=PHONE_RATE,
            audio_out_sample_rate=PHONE_RATE,
            add_wav_header=False,
            serializer=serializer,
            allowed_origins=[],  # Twilio's media socket is server-to-server: no Origin header
        ),
    )
    pipeline, service, _ = build_call_pipeline(
        transport,
        profile,
        settings,
        call,
        extra_processors=[TwilioMarkProcessor(call.stream_sid)],
    )
    worker = PipelineWorker(
        pipeline,
        params=PipelineParams(
            audio_in_sample_rate=PHONE_RATE,
            audio_out_sample_rate=PHONE_RATE,
            enable_metrics=True,
            enable_usage_metrics=True,
        ),
        observers=observers or [],
        idle_timeout_secs=600,
        conversation_id=call.call_id,
    )

    @transport.event_handler("on_client_connected")
    async def _on_connected(_transport: Any, _ws: Any) -> None:
        log.info(f"call connected: bot {profile.name}, stream {call.stream_sid}")
        if profile.bot_speaks_first:
            await worker.queue_frames([LLMRunFrame()])

    @transport.event_handler("on_client_disconnected")
    async def _on_disconnected(_transport: Any, _ws: Any) -> None:
        log.info("caller hung up")
        await worker.cancel()

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    await runner.run()
    log.info("call ended")
