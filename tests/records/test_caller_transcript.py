"""The caller's words reach the call record: the model service's ``input_audio.transcript``
becomes a ``TranscriptionFrame`` from ``StepAudio2Service`` and the text of the user turn.

A real call pipeline (``bots.call.build_call``: Silero VAD, Smart Turn, StepAudio2Service, a
loopback phone speaking flite) against the model-service stand-in, which "transcribes" every
committed caller turn with a fixed text when the session asks for ``input_transcription``.
"""

from __future__ import annotations

import asyncio
import contextlib

from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.workers.runner import WorkerRunner

from bots.call import CallInfo, build_call
from bots.profile import BotProfile
from bots.records.observer import CallRecordObserver
from harness.canned_model_service import CannedModelService
from harness.loopback_phone import LoopbackPhone, Say
from stepcall.settings import Settings

RATE = 8000
HEARD = "what is the weather like in paris today"


async def test_caller_transcript_fills_the_user_turn(store, caller_speech):
    reply = caller_speech("It is sunny in Paris.")
    canned = CannedModelService(reply.tobytes(), "It is sunny in Paris.", heard=HEARD)
    phone = LoopbackPhone([Say(caller_speech("What is the weather like in Paris today?"), 0.3)])
    call = CallInfo("CA-heard", "MZ-heard")
    async with canned.serving() as url:
        pipeline, parts = build_call(phone, BotProfile(name="test"), Settings(model_url=url), call)
        observer = CallRecordObserver(store, call.call_id, bot="test")
        worker = PipelineWorker(
            pipeline,
            params=PipelineParams(audio_in_sample_rate=RATE, audio_out_sample_rate=RATE),
            observers=[parts.metrics, observer],
            cancel_on_idle_timeout=False,
        )
        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(worker)
        task = asyncio.create_task(runner.run())
        try:
            for _ in range(200):  # the transcript follows the bot's reply
                store.writer.flush()
                record = store.get_call(call.call_id)
                if record is not None and any(t.role == "user" and t.text for t in record.turns):
                    break
                await asyncio.sleep(0.1)
        finally:
            await worker.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 5)
    await observer.finish()
    assert store.writer.flush()
    record = store.get_call("CA-heard")
    users = [t for t in record.turns if t.role == "user"]
    assert users and users[0].text == HEARD
    assert canned.responses >= 1
