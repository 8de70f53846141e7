"""The vllm backend on the real engine (vLLM 0.32; its CPU build here, ``make install``).

One ``AsyncLLM`` serves the whole module (starting one takes ~25 s on 2 cores), on a tiny
checkpoint whose random weights are scaled so that its greedy reply depends on the whole
history, the audio and the positions (``build_tiny_checkpoint(context=True)``,
tests/model/test_context_checkpoint.py proves it), so a dropped cache, a wrong audio merge or a lost turn breaks the equality with
the reference backend. The engine runs eager (no torch.compile: start-up time) in float32.
The counters come from vLLM itself (its Prometheus metrics in this process, and
``RequestOutput.num_cached_tokens``).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import prometheus_client
import pytest
import pytest_asyncio

from harness.checkpoints.tiny_checkpoint import build_tiny_checkpoint, speechlike_wav
from model_service.backends.base import (
    ResponseDone,
    SamplingParams,
    SessionConfig,
)
from model_service.backends.reference import ReferenceBackend, load_reference_backend
from model_service.backends.vllm import EngineOptions, VLLMBackend, load_vllm_backend

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

MAX_AUDIO_CHUNKS = 4
SYSTEM = (
    "You are the front desk of the Harbour Hotel. You answer questions about rooms, breakfast, "
    "parking, late check-out and the spa, briefly and kindly, and you never invent prices. "
) * 4  # > one KV block (128 tokens on CPU), so a shared system prompt hits the prefix cache


def config(call_id: str, max_tokens: int = 16, system: str = SYSTEM) -> SessionConfig:
    return SessionConfig(
        call_id=call_id,
        system_prompt=system,
        sampling=SamplingParams(temperature=0.0, repetition_penalty=1.0, max_tokens=max_tokens),
    )


async def respond(session) -> list:
    return [ev async for ev in session.respond()]


def done_of(events: list) -> ResponseDone:
    dones = [e for e in events if isinstance(e, ResponseDone)]
    assert len(dones) == 1 and events[-1] is dones[0], events[-3:]
    return dones[0]


async def audio_turn(session, seconds: float, seed: int) -> None:
    for piece in np.array_split(speechlike_wav(seconds, seed), 3):
        await session.append_audio(piece)
    await session.commit()


def vllm_counter(name: str) -> float:
    """A vLLM Prometheus sample (summed over engines) from this process's default registry."""
    total = 0.0
    for metric in prometheus_client.REGISTRY.collect():
        for sample in metric.samples:
            if sample.name == name:
                total += sample.value
    return total


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return build_tiny_checkpoint(tmp_path_factory.mktemp("context-ckpt"), seed=0, context=True)


@pytest.fixture(scope="module")
def reference(checkpoint) -> ReferenceBackend:
    return load_reference_backend(checkpoint)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine_backend(checkpoint):
    backend = await asyncio.to_thread(
        load_vllm_backend,
        checkpoint,
        "cpu",
        "float32",
        options=EngineOptions(
            enforce_eager=True,
            max_num_seqs=8,
            cpu_kv_cache_gib=1,
            max_audio_chunks=MAX_AUDIO_CHUNKS,
        ),
    )
    yield backend
    await backend.close()


async def run_turns(backend, call_id: str, turns: list) -> list[tuple[list[int], list[int]]]:
    """Each turn ("text", str) or ("audio", seconds, seed); returns (prompt ids, reply ids)."""
    session = await backend.open_session(config(call_id))
    out = []
    try:
        for turn in turns:
            if turn[0] == "text":
                await session.append_text(turn[1])
            else:
                await audio_turn(session, turn[1], turn[2])
            done = done_of(await respond(session))
            assert done.status == "completed", done
            out.append((list(session.last_prompt_ids), session.conversation.last_reply_ids()))
    finally:
        await session.close()
    return out


async def test_the_backend_runs_on_the_cpu_engine(engine_backend):
    assert isinstance(engine_backend, VLLMBackend)
    assert type(engine_backend.engine).__name__ == "AsyncLLM"
    assert engine_backend.failure() is None
    assert engine_backend.max_audio_chunks == MAX_AUDIO_CHUNKS


async def test_greedy_equals_the_reference_on_text_audio_chunks_and_turns(
    engine_backend, reference
):
    turns = [
        ("text", "Hello, is breakfast included?"),
        ("audio", 1.5, 7),  # one audio chunk
        ("audio", 27.0, 8),  # > 25 s: two chunks in one turn
        ("text", "And parking?"),
    ]
    want = await run_turns(reference, "ref", turns)
    got = await run_turns(engine_backend, "vllm", turns)
    for i, ((w_prompt, w_reply), (g_prompt, g_reply)) in enumerate(zip(want, got, strict=True)):
        assert g_prompt == w_prompt, f"turn {i}: prompts differ"
        assert g_reply == w_reply, f"turn {i}: greedy replies differ"
    # the replies really depend on what came before: no two turns answer alike
    assert len({tuple(r) for _, r in got}) == len(turns)


async def test_concurrent_sessions_batch_and_each_equals_its_reference(engine_backend, reference):
    calls = [[("audio", 1.0 + 0.25 * i, 20 + i)] for i in range(4)]
    want = [await run_turns(reference, f"r{i}", t) for i, t in enumerate(calls)]
    got = await asyncio.gather(
        *(run_turns(engine_backend, f"b{i}", t) for i, t in enumerate(calls))
    )
    assert got == want
    assert len({tuple(r[0][1]) for r in got}) == len(calls)  # the audio changed every reply


async def test_cancel_frees_the_engine_request_at_once_and_keeps_what_was_heard(engine_backend):
    session = await engine_backend.open_session(config("cancel", max_tokens=400))
    await session.append_text("Tell me everything about the spa.")
    events = []
    async for ev in session.respond():
        events.append(ev)
        if len(events) == 1:  # the first streamed event: the engine is decoding this request
            assert vllm_counter("vllm:num_requests_running") == 1
            assert engine_backend.engine.output_processor.get_num_unfinished_requests() == 1
            await session.cancel(heard_ms=0.0)  # the caller heard none of the audio
            # aborted in the engine before the response finished
            assert engine_backend.engine.output_processor.get_num_unfinished_requests() == 0
    done = done_of(events)
    assert done.status == "cancelled"
    for _ in range(50):  # the engine core's own count follows within a step
        if vllm_counter("vllm:num_requests_running") == 0:
            break
        await asyncio.sleep(0.02)
    assert vllm_counter("vllm:num_requests_running") == 0
    generated = session.last_stats.generated
    assert 0 < generated < 400
    kept = session.conversation.last_reply_ids()
    assert kept and len(kept) <= generated + 1  # + the <tts_end> that closes the cut reply
    assert not [t for t in kept if engine_backend.tok.is_audio(t)]  # nothing heard, none kept
    await session.close()


async def test_prefix_cache_hits_on_a_second_turn_and_a_second_session(engine_backend):
    bot = "You are the night desk. " + SYSTEM  # a system prompt no earlier test used
    first = await engine_backend.open_session(config("prefix-a", system=bot))
    await first.append_text("Do you have rooms tonight?")
    done_of(await respond(first))
    assert first.last_stats.reused_tokens == 0
    hits1 = vllm_counter("vllm:prefix_cache_hits_total")
    await first.append_text("With a sea view?")
    done_of(await respond(first))
    assert first.last_stats.reused_tokens >= 128  # turn 2 reuses the call's history
    hits2 = vllm_counter("vllm:prefix_cache_hits_total")
    assert hits2 - hits1 >= 128
    second = await engine_backend.open_session(config("prefix-b", system=bot))
    await second.append_text("What time is breakfast?")
    done_of(await respond(second))
    assert second.last_stats.reused_tokens >= 128  # the same bot's system prompt
    # ... all of it, up to vLLM's block granularity (128 tokens per KV block on CPU)
    n_prefix = second.shared_prefix_len()
    assert n_prefix >= 128
    assert second.last_stats.reused_tokens >= n_prefix // 128 * 128
    assert vllm_counter("vllm:prefix_cache_hits_total") - hits2 >= 128
    await first.close()
    await second.close()


async def test_a_call_with_more_audio_chunks_than_the_engine_takes_keeps_working(engine_backend):
    session = await engine_backend.open_session(config("long-call", max_tokens=4))
    chunks_seen = []
    for turn in range(MAX_AUDIO_CHUNKS + 3):
        await audio_turn(session, 0.6, 100 + turn)
        done = done_of(await respond(session))
        assert done.status == "completed", (turn, done)
        chunks_seen.append(len(session.last_request.multi_modal_data["audio"]["audio_mels"]))
    assert max(chunks_seen) <= MAX_AUDIO_CHUNKS
    assert chunks_seen[-1] < MAX_AUDIO_CHUNKS + 3  # older turns were trimmed, not refused
    await session.close()
