"""Async batcher: concurrent sessions share batched steps and get the same audio as alone."""

from __future__ import annotations

import asyncio

import numpy as np

from model_service.token2wav import Token2Wav, Token2WavBatcher, Voice


def codes_of(n: int, seed: int) -> list[int]:
    return np.random.default_rng(seed).integers(0, 6561, n).tolist()


def alone(t2w: Token2Wav, voice: Voice, codes: list[int], step: int) -> np.ndarray:
    st = t2w.new_stream(voice)
    out: list[np.ndarray] = []
    for i in range(0, len(codes), step):
        out += t2w.push(st, codes[i : i + step])
    out.append(t2w.flush(st))
    return np.concatenate(out)


async def test_concurrent_sessions_are_batched_and_correct(
    t2w: Token2Wav, voice: Voice, voice_b: Voice
) -> None:
    batcher = Token2WavBatcher(t2w, max_wait_ms=20)
    seqs = [codes_of(60, 1), codes_of(60, 2), codes_of(45, 3)]
    voices = [voice, voice_b, voice]

    async def session(v: Voice, codes: list[int]) -> np.ndarray:
        st = t2w.new_stream(v)
        out: list[np.ndarray] = []
        for i in range(0, len(codes), 15):
            out += await batcher.push(st, codes[i : i + 15])
        out.append(await batcher.flush(st))
        return np.concatenate(out)

    try:
        results = await asyncio.gather(*(session(v, c) for v, c in zip(voices, seqs, strict=True)))
    finally:
        await batcher.close()
    assert max(batcher.batch_sizes) >= 2  # sessions really shared a push_many call
    for v, c, got in zip(voices, seqs, results, strict=True):
        np.testing.assert_allclose(got, alone(t2w, v, c, 15), atol=2e-4)


async def test_same_stream_requests_keep_order_and_errors_are_isolated(
    t2w: Token2Wav, voice: Voice
) -> None:
    batcher = Token2WavBatcher(t2w, max_wait_ms=20)
    codes = codes_of(40, 4)
    st = t2w.new_stream(voice)
    done = t2w.new_stream(voice)
    t2w.flush(done)
    try:
        parts = await asyncio.gather(
            batcher.push(st, codes[:20]),
            batcher.push(st, codes[20:]),
            batcher.flush(st),
            batcher.push(done, [1, 2, 3]),
            return_exceptions=True,
        )
    finally:
        await batcher.close()
    assert isinstance(parts[3], RuntimeError)
    got = np.concatenate([*parts[0], *parts[1], parts[2]])
    np.testing.assert_array_equal(got, alone(t2w, voice, codes, 20))
