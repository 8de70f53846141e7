"""token2wav batching across sessions in the model-service backends.

Concurrent sessions' code chunks go through the backend's one ``Token2WavBatcher``: chunks that
are ready together share one ``push_many`` flow pass, and each session still gets exactly the
audio it would get alone.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import pytest

from harness.checkpoints.tiny_checkpoint import build_tiny_checkpoint, default_script
from harness.checkpoints.tiny_tokenizer import build_tiny_tokenizer
from model_service.backends.base import AudioChunk, ResponseDone, SamplingParams, SessionConfig
from model_service.backends.reference import ReferenceBackend, load_reference_backend
from model_service.stepaudio2.tokenizer import StepAudio2Tokenizer

GREEDY = SamplingParams(temperature=0.0, repetition_penalty=1.0, max_tokens=400)


@pytest.fixture(scope="module")
def loaded_backend(tmp_path_factory) -> ReferenceBackend:
    d = tmp_path_factory.mktemp("tok")
    build_tiny_tokenizer(d)
    tok = StepAudio2Tokenizer.from_pretrained(d)
    script = default_script(tok, text="Hello! Thank you for calling the weather line.")
    ckpt: Path = build_tiny_checkpoint(tmp_path_factory.mktemp("speech"), script=script)
    backend = load_reference_backend(ckpt)
    assert backend.vocoder is not None, "the tiny checkpoint should include token2wav"
    return backend


def batched_backend(loaded: ReferenceBackend, wait_ms: float) -> ReferenceBackend:
    return ReferenceBackend(
        loaded.loaded, loaded.vocoder, voices=loaded.voices, t2w_wait_ms=wait_ms
    )


async def reply_audio(backend: ReferenceBackend, call_id: str) -> tuple[np.ndarray, ResponseDone]:
    session = await backend.open_session(
        SessionConfig(call_id=call_id, system_prompt="You are the weather line.", sampling=GREEDY)
    )
    await session.append_text("Hi, what's the weather?")
    events = [ev async for ev in session.respond()]
    await session.close()
    done = events[-1]
    assert isinstance(done, ResponseDone) and done.status == "completed"
    pcm = np.concatenate([e.pcm for e in events if isinstance(e, AudioChunk)])
    return pcm, done


async def test_concurrent_sessions_share_flow_passes_and_keep_their_audio(loaded_backend):
    solo_backend = batched_backend(loaded_backend, wait_ms=0.0)
    solo, solo_done = await reply_audio(solo_backend, "solo")
    assert max(solo_backend.t2w_batcher().batch_sizes) == 1
    await solo_backend.close()

    backend = batched_backend(loaded_backend, wait_ms=60.0)
    results = await asyncio.gather(*(reply_audio(backend, f"c{i}") for i in range(3)))
    sizes = backend.t2w_batcher().batch_sizes
    assert max(sizes) >= 2, f"no push_many call served two sessions: {sizes}"
    for pcm, done in results:
        assert done.audio_ms == solo_done.audio_ms
        np.testing.assert_allclose(pcm, solo, atol=1e-5)
    await backend.close()


async def test_batcher_follows_the_running_event_loop(loaded_backend):
    backend = batched_backend(loaded_backend, wait_ms=1.0)
    here = backend.t2w_batcher()
    assert backend.t2w_batcher() is here  # one per loop
    other: list = []

    def in_another_loop() -> None:
        async def grab() -> None:
            other.append(backend.t2w_batcher())

        asyncio.run(grab())

    t = threading.Thread(target=in_another_loop)
    t.start()
    t.join()
    assert other and other[0] is not here  # a new loop gets its own batcher
    pcm, done = await reply_audio(backend, "after-switch")  # and this loop gets a working one
    assert pcm.size and done.audio_ms > 0
    await backend.close()
