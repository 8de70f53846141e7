"""A real call pipeline (bots.call.build_call: Silero VAD, Smart Turn, StepAudio2Service against
the real model service with the demo checkpoint, a loopback phone) with the CallRecordObserver
attached: the record, the recording and the metrics come from the frames a real call produces."""

from __future__ import annotations

import asyncio
import contextlib
import wave

import numpy as np
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.workers.runner import WorkerRunner

from bots.call import CallInfo, build_call
from bots.metrics import BotMetrics
from bots.profile import BotProfile
from bots.records.models import RecordingPolicy
from bots.records.observer import CallRecordObserver
from harness.checkpoints.demo_checkpoint import DEMO_REPLY
from harness.loopback_phone import LoopbackPhone, Say
from model_service.server import create_app, serving
from stepcall.settings import Settings
from tests.support.metrics import sample

RATE = 8000


async def test_real_call_is_recorded(store, demo_backend, caller_speech, tmp_path):
    app = create_app(demo_backend, token=None, max_sessions=2)
    phone = LoopbackPhone([Say(caller_speech("What is the weather like in Paris today?"), 0.3)])
    metrics = BotMetrics()
    call = CallInfo("CA-real", "MZ-real", from_number="+15550111")
    async with serving(app) as url:
        pipeline, parts = build_call(phone, BotProfile(name="test"), Settings(model_url=url), call)
        observer = CallRecordObserver(
            store,
            call.call_id,
            bot="test",
            from_number=call.from_number,
            metrics=metrics,
            recording=RecordingPolicy(enabled=True, retention_days=1),
            recordings_dir=tmp_path / "rec",
        )
        worker = PipelineWorker(
            pipeline,
            params=PipelineParams(audio_in_sample_rate=RATE, audio_out_sample_rate=RATE),
            observers=[parts.metrics, observer],
            cancel_on_idle_timeout=False,
        )
        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(worker)
        task = asyncio.create_task(runner.run())
        replied = asyncio.Event()

        @parts.metrics.event_handler("on_turn_metrics")
        async def _on_turn(_observer, _metrics) -> None:
            replied.set()  # the bot's reply has finished playing

        try:
            await asyncio.wait_for(replied.wait(), 20)
        finally:
            await worker.cancel()  # the caller hangs up
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 5)
    await observer.finish()
    assert store.writer.flush()
    record = store.get_call("CA-real")
    assert record.outcome == "caller_hung_up"
    roles = [t.role for t in record.turns]
    assert roles[:2] == ["user", "bot"], roles
    user, bot = record.turns[0], record.turns[1]
    assert user.audio_ms and 1000 < user.audio_ms < 6000  # the flite question, ~2-3 s
    assert bot.text and bot.text.split()[:3] == DEMO_REPLY.split()[:3]
    said = " ".join(
        m.get("content") or "" for m in parts.context.get_messages() if m.get("role") == "assistant"
    )
    assert bot.text == said.strip()  # the record says what the assistant context says
    assert bot.latency_ms is not None and 0 < bot.latency_ms < 5000
    assert abs(bot.latency_ms - parts.metrics.turns[0].response_ms) < 100  # agrees with TurnMetrics
    assert record.recording_path, (observer._recorder.duration_secs, observer._recorder._lengths)
    with wave.open(record.recording_path) as w:
        assert w.getnchannels() == 2 and w.getframerate() == RATE
        assert w.getnframes() / RATE > 3.0  # question + reply
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).reshape(-1, 2)
    caller_on = np.flatnonzero(np.abs(pcm[:, 0]) > 500)
    bot_on = np.flatnonzero(np.abs(pcm[:, 1]) > 500)
    assert caller_on.size and bot_on.size
    gap = (bot_on[0] - caller_on[-1]) / RATE  # the caller's last sound → the bot's first
    assert 0 < gap < 5, gap
    assert sample(metrics, "stepcall_voice_to_voice_seconds_count") == 1
    assert sample(metrics, "stepcall_calls_total", bot="test", outcome="caller_hung_up") == 1
