"""Speech holds: the caller's loud speech waits at the phone input, and nothing acts later.

The VAD is the real ``EndpointVADAnalyzer`` (real Silero) fed what the batcher hands back, the
way the user aggregator gets it; the audio is the caller simulator's real voice on a phone line.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from pipecat.audio.vad.vad_analyzer import VADParams, VADState

from pipeline.call_audio.batcher import HOLD_SECS, BatchingInput, CallerAudioBatcher, speech_hold
from pipeline.turn_taking.endpoint_vad import (
    SPEECH_HOLD_MARGIN_SECS,
    STEADY_LOUD_SECS,
    EndpointVADAnalyzer,
)

RATE = 8000
FRAME = 160  # 20 ms
ACT_AFTER = 0.1  # Smart Turn's early look with VAD stop 0.2 s


def _vad(stop_secs: float = 0.2) -> EndpointVADAnalyzer:
    vad = EndpointVADAnalyzer(sample_rate=RATE, params=VADParams(stop_secs=stop_secs))
    vad.set_sample_rate(RATE)
    return vad


def _frames(pcm: np.ndarray):
    for i in range(0, pcm.size - FRAME + 1, FRAME):
        yield pcm[i : i + FRAME].tobytes()


def _line(speech, seed: int = 3) -> np.ndarray:
    """Two questions and a "yeah" with pauses between, on a line with a little hiss."""
    rng = np.random.default_rng(seed)

    def hiss(secs: float) -> np.ndarray:
        return rng.normal(0, 12.0, int(secs * RATE)).astype(np.int16)

    question = speech("What is the weather like in Paris today?")
    other = speech("Actually, I wanted to ask about London tomorrow morning, please.")
    return np.concatenate(
        [hiss(1.0), question, hiss(1.5), speech("Yeah."), hiss(0.7), other, hiss(1.5)]
    ).astype(np.int16)


def _run(pcm: np.ndarray, *, hold: bool):
    """Feed ``pcm`` in 20 ms frames into a VAD, frame by frame or batched as the Twilio call
    batches a turn's audio (speech holds, pairs); returns (the VAD, the batcher, [(stream sample
    at the end of each buffer the VAD got, its length, state, pause after it)])."""
    vad = _vad()
    batcher = CallerAudioBatcher(
        RATE,
        steady=(lambda: vad.steady) if hold else None,
        speech=speech_hold(vad, lambda: True, lambda: ACT_AFTER) if hold else None,
    )
    seen, fed = [], 0

    def analyze(out: bytes | None) -> None:
        nonlocal fed
        if out is not None:
            fed += len(out) // 2
            state = vad._run_analyzer(out)
            seen.append((fed, len(out) // 2, state, vad.pause_secs))

    for frame in _frames(pcm):
        analyze(batcher.offer(frame))
    analyze(batcher.take())
    return vad, batcher, seen


def _stops(seen) -> list[int]:
    """Stream samples where the VAD ended speech."""
    out, prev = [], VADState.QUIET
    for at, _, state, _ in seen:
        if state == VADState.QUIET and prev != VADState.QUIET:
            out.append(at)
        prev = state
    return out


def _pause_acts(seen, after: float) -> list[int]:
    """Stream samples where a pause first reached ``after`` (the early Smart Turn look starts
    at the end of that buffer)."""
    out, prev = [], 0.0
    for at, _, _, pause in seen:
        if pause >= after > prev:
            out.append(at)
        prev = pause
    return out


def test_speech_holds_leave_every_turn_decision_at_the_same_frame(speech):
    """Frame by frame, or with the caller's speech held: VAD ends speech at the same samples,
    each pause reaches Smart Turn's early look at the same frame, Silero scores the same
    windows and ends in the same state; and the holds really batched the speech."""
    pcm = _line(speech)
    alone_vad, _, alone = _run(pcm, hold=False)
    held_vad, batcher, held = _run(pcm, hold=True)
    assert len(_stops(alone)) >= 3  # the utterances (and pauses at commas) were heard and ended
    assert _stops(held) == _stops(alone)
    for after in (ACT_AFTER, 0.15, 0.2):
        assert _pause_acts(held, after) == _pause_acts(alone, after)
        assert _pause_acts(alone, after)  # not vacuous
    assert (held_vad.scored_windows, held_vad.skipped_windows) == (
        alone_vad.scored_windows,
        alone_vad.skipped_windows,
    )
    assert held_vad.energy.last_loud_end == alone_vad.energy.last_loud_end
    state_a, state_h = alone_vad._model._state, held_vad._model._state
    assert np.array_equal(np.asarray(state_a), np.asarray(state_h))
    # the holds: most of the ~5 s of speech went down 80-100 ms at a time
    assert batcher.speech_frames > 100
    longest = max(n for _, n, _, _ in held)
    assert 4 * FRAME <= longest <= 5 * FRAME
    assert len(held) < 0.5 * len(alone)
    # no held buffer carried a pause past the early look (it went down at the next frame)
    assert all(p < ACT_AFTER for _, n, _, p in held if n > 2 * FRAME)


def test_speech_hold_secs_only_while_the_caller_speaks_loudly(speech):
    vad = _vad()
    assert vad.speech_hold_secs(ACT_AFTER) == 0.0  # no audio yet
    hiss = np.random.default_rng(1).normal(0, 12.0, RATE).astype(np.int16)
    for frame in _frames(hiss):
        vad._run_analyzer(frame)
    assert vad.state == VADState.QUIET and vad.speech_hold_secs(ACT_AFTER) == 0.0
    words = speech("What is the weather like in Paris today?")
    held = []
    states = set()
    for frame in _frames(np.concatenate([words, hiss]).astype(np.int16)):
        vad._run_analyzer(frame)
        secs = vad.speech_hold_secs(ACT_AFTER)
        states.add(vad.state)
        if vad.state != VADState.SPEAKING or vad.energy.quiet_secs >= STEADY_LOUD_SECS:
            assert secs == 0.0, vad.state  # starting, stopping, a pause, quiet
        else:
            quiet = vad.energy.quiet_secs
            assert secs == pytest.approx(ACT_AFTER - quiet - SPEECH_HOLD_MARGIN_SECS)
            held.append(secs)
            # bounded by the VAD's own stop too, and by nothing else
            assert vad.speech_hold_secs(1.0) == pytest.approx(0.2 - quiet - 0.016)
            assert vad.speech_hold_secs(0.0) == 0.0
    assert {VADState.STARTING, VADState.SPEAKING, VADState.QUIET} <= states
    assert len(held) > 40 and min(held) > ACT_AFTER - STEADY_LOUD_SECS - 0.02


def test_speech_hold_test_waits_for_the_vad_and_the_call():
    vad = _vad()
    allowed = {"on": True}
    secs = speech_hold(vad, lambda: allowed["on"], lambda: ACT_AFTER)
    tone = (8000 * np.sin(2 * np.pi * 200 * np.arange(RATE) / RATE)).astype(np.int16)
    last = None
    for frame in _frames(np.random.default_rng(2).normal(0, 12.0, RATE // 2).astype(np.int16)):
        last = frame
        vad._run_analyzer(last)
    for frame in _frames(tone):  # Silero takes a tone for speech only sometimes: force it
        last = frame
        vad._run_analyzer(last)
    vad._vad_state = VADState.SPEAKING
    assert secs(last) == pytest.approx(vad.speech_hold_secs(ACT_AFTER)) and secs(last) > 0.05
    assert secs(bytes(bytearray(last))) == 0.0  # audio sent after it, not analyzed yet
    allowed["on"] = False  # no turn open, or the bot is not idle
    assert secs(last) == 0.0


def test_batcher_speech_hold_rules_and_read_pauses():
    state = {"secs": 0.07, "quiet": False}
    asked: list[bytes | None] = []
    quiet_asked = []

    def speech(last: bytes | None) -> float:
        asked.append(last)
        return state["secs"]

    def quiet(ss: float, n: int, last: bytes | None) -> bool:
        quiet_asked.append(n)
        return state["quiet"]

    inp = BatchingInput()  # the phone inputs' mixin on its own
    inp._use_batching(
        RATE, lambda: True, quiet, HOLD_SECS, 0.02, pause_reading=lambda: math.inf, speech=speech
    )
    batcher = inp.batcher
    assert batcher is not None
    a, b = b"\x01\x00" * FRAME, b"\x02\x00" * FRAME
    assert batcher.offer(a) is None  # 20 of the 70 ms may wait
    assert asked == [None]
    assert batcher.hold_left_secs() == pytest.approx(0.05)
    assert inp.read_pause_secs() == pytest.approx(0.05)
    inp._count_read_pause(0.05)
    assert batcher.offer(b) is None and batcher.offer(a) is None
    assert inp.read_pause_secs() == 0.0  # once per hold
    assert batcher.offer(b) == a + b + a + b  # would be 80 > 70 ms: down with the waiting
    assert batcher.speech_frames == 3 and len(asked) == 1  # decided once, at the hold's start
    assert batcher.last_sent == a + b + a + b
    assert batcher.offer(a) is None and asked[-1] is batcher.last_sent  # the next hold
    batcher.take()
    # capped by hold_secs
    state["secs"] = 1.0
    for _ in range(10):
        assert batcher.offer(a) is None
    assert len(batcher.offer(b)) == 11 * 2 * FRAME
    # under one frame: the pair rule as before
    state["secs"] = 0.015
    assert batcher.offer(a) is None and batcher.hold_left_secs() == 0.0
    assert batcher.offer(b) == a + b
    # never a long frame
    state["secs"] = 0.07
    long_frame = a * 3
    assert batcher.offer(long_frame) is long_frame
    # the quiet test comes first; it is not asked while a speech hold fills
    state["quiet"] = True
    assert batcher.offer(a) is None and batcher.quiet_frames == 1 and batcher.speech_frames == 14
    batcher.take()
    state["quiet"] = False
    quiet_asked.clear()
    assert batcher.offer(a) is None  # a speech hold (the quiet test said no)
    n_quiet = len(quiet_asked)
    state["quiet"] = True
    assert batcher.offer(b) is None and len(quiet_asked) == n_quiet
    assert batcher.quiet_frames == 1
    # speech holds alone also allow read pauses
    inp._use_batching(
        RATE, None, None, HOLD_SECS, 0.02, pause_reading=lambda: math.inf, speech=speech
    )
    assert inp._may_pause_reading is not None
    with pytest.raises(ValueError):
        CallerAudioBatcher(RATE, hold_secs=-1, speech=speech)
