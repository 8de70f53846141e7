"""OpenTelemetry traces of a real call: a conversation span named by the call id, turn spans.

The call is real (bots.call.build_call + call_worker: Silero VAD, Smart Turn, StepAudio2Service
against the model service on the demo checkpoint, a loopback phone); the spans go to the SDK's
in-memory exporter instead of a collector (the external edge).
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from pipecat.workers.runner import WorkerRunner

from bots import tracing
from bots.call import CallInfo, build_call, call_worker
from bots.profile import BotProfile
from harness.loopback_phone import LoopbackPhone, Say
from model_service.server import create_app, serving
from stepcall.settings import Settings

pytest.importorskip("opentelemetry.sdk")
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)


@pytest.fixture(scope="module")
def spans():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.enable_tracing_with(provider)
    yield exporter
    tracing._enabled = False  # later tests in this process run untraced, as by default


def test_exporter_names_are_checked() -> None:
    assert tracing.setup_tracing("none") is False
    with pytest.raises(ValueError, match="STEPCALL_OTEL_EXPORTER must be one of"):
        tracing.setup_tracing("jaeger")


async def test_a_call_leaves_a_conversation_span_and_turn_spans(spans, demo_backend, caller_speech):
    assert tracing.tracing_enabled()
    app = create_app(demo_backend, token=None, max_sessions=2)
    phone = LoopbackPhone([Say(caller_speech("What is the weather like in Paris today?"), 0.3)])
    call = CallInfo("CA-traced", "MZ-traced", from_number="+15550111")
    async with serving(app) as url:
        pipeline, parts = build_call(phone, BotProfile(name="test"), Settings(model_url=url), call)
        worker = call_worker(
            pipeline,
            parts,
            call.call_id,
            span_attributes=tracing.call_span_attributes(call, "test"),
        )
        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(worker)
        task = asyncio.create_task(runner.run())
        replied = asyncio.Event()

        @parts.metrics.event_handler("on_turn_metrics")
        async def _on_turn(_observer, _metrics) -> None:
            replied.set()

        try:
            await asyncio.wait_for(replied.wait(), 20)
            await asyncio.sleep(0.5)
        finally:
            await worker.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 5)
    finished = spans.get_finished_spans()
    conversations = [s for s in finished if s.name == "conversation"]
    assert conversations, [s.name for s in finished]
    conv = conversations[-1]
    assert conv.attributes.get("conversation.id") == "CA-traced"
    assert conv.attributes.get("stepcall.bot") == "test"
    assert conv.attributes.get("stepcall.from_number") == "+15550111"
    turns = [s for s in finished if s.name == "turn" and s.parent is not None]
    assert turns and all(t.context.trace_id == conv.context.trace_id for t in turns)
