"""A real conversation on a CPU, end to end, on loopback.

`stepcall call` (flite speech, Twilio Media Streams) → `stepcall serve` (Pipecat) →
`stepcall model --backend cpu` (Whisper tiny.en → Qwen2.5-1.5B via llama.cpp → Piper) → the
bot's mu-law reply, which we transcribe with the same Whisper model and check is on topic.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest

from harness.callers import CallerTurn, CallOptions, run_call
from model_service.backends.cpu import model_files as cpu_models
from stepcall.audio.mulaw import ulaw_to_pcm16
from stepcall.audio.speech import SpeechUnavailableError, synthesize

from .conftest import Proc, _start, _stop, _wait_http, free_port

pytestmark = pytest.mark.slow

@dataclass
class CpuStack:
    """`stepcall model --backend cpu` + `stepcall serve`."""

    model: Proc
    web: Proc
    web_port: int

    @property
    def stream_url(self) -> str:
        return f"ws://127.0.0.1:{self.web_port}/twilio/stream"


@pytest.fixture(scope="module")
def cpu_stack(tmp_path_factory) -> Iterator[CpuStack]:
    try:
        cpu_models.resolve_cpu_models()  # also assembles the Qwen GGUF once, before the clock
    except cpu_models.MissingModelError as e:
        pytest.skip(f"cpu backend models not installed: {e}")
    logs = tmp_path_factory.mktemp("cpu-logs")
    flows = tmp_path_factory.mktemp("cpu-flows")  # empty: the default bot answers
    model_port, web_port = free_port(), free_port()
    env = {
        **os.environ,
        "STEPCALL_MODEL_PORT": str(model_port),
        "STEPCALL_PORT": str(web_port),
        "STEPCALL_MODEL_URL": f"ws://127.0.0.1:{model_port}/v1/session",
        "STEPCALL_FLOWS_DIR": str(flows),
        "STEPCALL_LOG_LEVEL": "DEBUG",
        "STEPCALL_DATABASE_URL": f"sqlite:///{logs}/calls.db",
        "PYTHONUNBUFFERED": "1",
    }
    for name in ("TWILIO_AUTH_TOKEN", "STEPCALL_STREAM_SECRET", "STEPCALL_MODEL_TOKEN"):
        env.pop(name, None)
    model = _start(["model", "--backend", "cpu"], env, logs / "model.log")
    web = None
    try:
        _wait_http(f"http://127.0.0.1:{model_port}/readyz", model, timeout=240)
        web = _start(["serve"], env, logs / "web.log")
        _wait_http(f"http://127.0.0.1:{web_port}/healthz", web, timeout=120)
        yield CpuStack(model, web, web_port)
    finally:
        if web is not None:
            _stop(web)
        _stop(model)


@pytest.fixture(scope="module")
def whisper():
    from model_service.backends.cpu.asr import WhisperASR

    path, _ = cpu_models.find_asr_model()
    return WhisperASR(path)


async def test_cpu_bot_answers_a_spoken_question_on_topic(cpu_stack, whisper):
    import soxr

    try:
        question = synthesize("What is the capital of France?", rate=8000)
    except SpeechUnavailableError as e:
        pytest.skip(f"no speech engine: {e}")
    result = await run_call(
        cpu_stack.stream_url,
        [CallerTurn(audio=question)],
        CallOptions(wait_secs=60.0, greeting_wait_secs=0.5, quiet_secs=2.5),
    )
    logs = f"\nweb:\n{cpu_stack.web.tail()}\nmodel:\n{cpu_stack.model.tail()}"
    assert not result.errors, str(result.errors) + logs
    turn = result.turns[0]
    assert turn.replied, "no reply" + logs
    assert turn.first_bot_media_ms > turn.speech_end_ms
    pcm8 = ulaw_to_pcm16(bytes(turn.bot_audio)).astype(np.float32) / 32768.0
    assert pcm8.size >= 8000 * 0.5, f"only {pcm8.size / 8000:.2f} s of bot audio" + logs
    heard = whisper.transcribe(soxr.resample(pcm8, 8000, 16000).astype(np.float32))
    assert "paris" in heard.lower(), f"bot said {heard!r}" + logs
    assert "backend: cpu" in cpu_stack.model.log.read_text(errors="replace")
