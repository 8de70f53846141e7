"""Streaming token2wav: equivalence with one-shot synthesis, boundaries, sessions, batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model_service.token2wav import ChunkSchedule, Token2Wav, Voice


def codes_of(n: int, seed: int = 0) -> list[int]:
    return np.random.default_rng(seed).integers(0, 6561, n).tolist()


def stream_all(
    t2w: Token2Wav, voice: Voice, codes: list[int], step: int, schedule=None
) -> list[np.ndarray]:
    st = t2w.new_stream(voice, schedule)
    out: list[np.ndarray] = []
    for i in range(0, len(codes), step):
        out += t2w.push(st, codes[i : i + step])
    out.append(t2w.flush(st))
    return [o for o in out if o.size]


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a - b) ** 2)) / np.sqrt(np.mean(b**2)))


def test_flow_is_causal_with_three_code_lookahead(t2w: Token2Wav, voice: Voice) -> None:
    # The property streaming relies on: frames of code i depend on codes <= i + 3 only.
    codes = codes_of(40, seed=1)
    full = t2w.mel(voice, codes)
    part = t2w.mel(voice, codes[:23])  # 20 codes + 3 look-ahead
    torch.testing.assert_close(part[:, :40], full[:, :40], atol=1e-4, rtol=1e-4)
    # ...and they do depend on the look-ahead codes
    short = t2w.mel(voice, codes[:20])
    assert (short[:, 30:40] - full[:, 30:40]).abs().max() > 1e-3


def test_streaming_matches_one_shot(t2w: Token2Wav, voice: Voice) -> None:
    codes = codes_of(110, seed=2)
    ref = t2w.synthesize(voice, codes)
    assert ref.shape == (110 * 960,) and ref.dtype == np.float32
    out = np.concatenate(
        stream_all(t2w, voice, codes, step=7, schedule=ChunkSchedule(max_context=250))
    )
    assert out.shape == ref.shape
    # The flow mel is identical (causal flow, noise by frame index); what differs is the vocoder
    # seeing only 8 frames of left context and no right context at each chunk edge, plus the
    # crossfade. Measured ~0.2 % RMS; 3 % leaves room for numeric noise yet fails on any
    # misalignment (a one-frame shift gives ~100 %).
    assert rel_err(out, ref) < 0.03


def test_chunk_sizes_follow_schedule(t2w: Token2Wav, voice: Voice) -> None:
    sched = ChunkSchedule(first_chunk=10, chunk=25, overlap_frames=8)
    st = t2w.new_stream(voice, sched)
    assert t2w.push(st, codes_of(12)) == []  # needs 10 + 3 look-ahead
    first = t2w.push(st, codes_of(1, seed=3))
    assert [len(a) for a in first] == [(20 - 8) * 480]  # 10 codes, 8 frames withheld
    assert t2w.push(st, codes_of(24, seed=4)) == []  # 3 + 24 < 25 + 3
    second = t2w.push(st, codes_of(1, seed=5))
    assert [len(a) for a in second] == [50 * 480]
    tail = t2w.flush(st)
    assert len(tail) == (3 * 2 + 8) * 480  # 3 buffered codes + the withheld 8 frames
    with pytest.raises(RuntimeError):
        t2w.push(st, [1, 2, 3])


def test_no_click_at_chunk_boundaries(t2w: Token2Wav, voice: Voice) -> None:
    codes = codes_of(90, seed=6)
    chunks = stream_all(t2w, voice, codes, step=5, schedule=ChunkSchedule(first_chunk=10, chunk=15))
    out = np.concatenate(chunks)
    d = np.abs(np.diff(out))
    typical = np.percentile(d, 99.5)
    boundaries = np.cumsum([len(c) for c in chunks[:-1]])
    assert len(boundaries) >= 4
    for b in boundaries:
        jump = float(np.max(d[b - 3 : b + 2]))
        assert jump <= 1.5 * typical, f"jump {jump:.4f} at sample {b} vs p99.5 {typical:.4f}"


def test_boundaries_match_one_shot_locally(t2w: Token2Wav, voice: Voice) -> None:
    # The random-weight audio is noise-like, so sample jumps alone are a weak click detector;
    # a click/gap/misaligned crossfade shows up as local error against the one-shot audio.
    codes = codes_of(90, seed=6)
    ref = t2w.synthesize(voice, codes)
    chunks = stream_all(t2w, voice, codes, step=5, schedule=ChunkSchedule(first_chunk=10, chunk=15))
    out = np.concatenate(chunks)
    for b in np.cumsum([len(c) for c in chunks[:-1]]):
        w = slice(b - 240, b + 240)  # +-10 ms around the boundary
        assert rel_err(out[w], ref[w]) < 0.05, f"boundary at sample {b}"


def test_interleaved_sessions_equal_each_alone(
    t2w: Token2Wav, voice: Voice, voice_b: Voice
) -> None:
    ca, cb = codes_of(70, seed=10), codes_of(55, seed=11)
    alone_a = np.concatenate(stream_all(t2w, voice, ca, step=6))
    alone_b = np.concatenate(stream_all(t2w, voice_b, cb, step=9))
    sa, sb = t2w.new_stream(voice), t2w.new_stream(voice_b)
    out_a: list[np.ndarray] = []
    out_b: list[np.ndarray] = []
    for i in range(0, 72, 6):
        out_a += t2w.push(sa, ca[i : i + 6])
        out_b += t2w.push(sb, cb[(i // 6) * 9 : (i // 6) * 9 + 9])
    out_b.append(t2w.flush(sb))
    out_a.append(t2w.flush(sa))
    np.testing.assert_array_equal(np.concatenate(out_a), alone_a)
    np.testing.assert_array_equal(np.concatenate(out_b), alone_b)


def test_push_many_equals_sequential(t2w: Token2Wav, voice: Voice, voice_b: Voice) -> None:
    ca, cb, cc = codes_of(60, seed=12), codes_of(60, seed=13), codes_of(41, seed=14)
    voices = [voice, voice_b, voice]
    seqs = [ca, cb, cc]
    sequential = [
        np.concatenate(stream_all(t2w, v, c, step=10)) for v, c in zip(voices, seqs, strict=False)
    ]
    states = [t2w.new_stream(v) for v in voices]
    outs: list[list[np.ndarray]] = [[] for _ in states]
    for i in range(0, 60, 10):
        res = t2w.push_many([(st, c[i : i + 10]) for st, c in zip(states, seqs, strict=False)])
        for k, chunks in enumerate(res):
            outs[k] += chunks
    for k, tail in enumerate(t2w.flush_many(states)):
        outs[k].append(tail)
    for k in range(3):
        batched = np.concatenate(outs[k])
        assert batched.shape == sequential[k].shape
        # different batch shapes change float summation order only
        np.testing.assert_allclose(batched, sequential[k], atol=2e-4)


def test_push_many_rejects_duplicate_state(t2w: Token2Wav, voice: Voice) -> None:
    st = t2w.new_stream(voice)
    with pytest.raises(ValueError, match="twice"):
        t2w.push_many([(st, [1]), (st, [2])])


def test_out_of_range_codes_are_dropped(t2w: Token2Wav, voice: Voice) -> None:
    good = codes_of(30, seed=15)
    noisy = good[:10] + [-1, 6561, 99999] + good[10:]
    st = t2w.new_stream(voice)
    out = t2w.push(st, noisy)
    out.append(t2w.flush(st))
    assert st.dropped == 3
    np.testing.assert_array_equal(
        np.concatenate(out), np.concatenate(stream_all(t2w, voice, good, 100))
    )
    np.testing.assert_array_equal(t2w.synthesize(voice, noisy), t2w.synthesize(voice, good))


def test_flush_of_empty_stream_is_empty(t2w: Token2Wav, voice: Voice) -> None:
    st = t2w.new_stream(voice)
    assert t2w.flush(st).size == 0
    assert t2w.synthesize(voice, []).size == 0


def test_stream_step_form(t2w: Token2Wav, voice: Voice) -> None:
    codes = codes_of(30, seed=16)
    st = t2w.new_stream(voice)
    first = t2w.stream_step([(st, codes[:20])])[0]
    rest = t2w.stream_step([(st, codes[20:])], last=True)[0]
    np.testing.assert_array_equal(
        np.concatenate([first, rest]), np.concatenate(stream_all(t2w, voice, codes, 20))
    )


def test_long_response_beyond_context_window_stays_close(t2w: Token2Wav, voice: Voice) -> None:
    codes = codes_of(100, seed=17)
    ref = t2w.synthesize(voice, codes)
    out = np.concatenate(stream_all(t2w, voice, codes, 25, ChunkSchedule(max_context=20)))
    assert out.shape == ref.shape
    assert rel_err(out, ref) < 0.1  # approximation once context is dropped (measured ~0.2 %)
