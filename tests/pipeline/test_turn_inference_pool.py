"""Smart Turn of every call on one process-wide, low-priority inference pool."""

from __future__ import annotations

import asyncio
import os
import threading

import numpy as np
import pytest
from pipecat.audio.turn.base_turn_analyzer import EndOfTurnState
from pipecat.audio.vad.vad_analyzer import VADState

from pipeline.turn_taking.endpoint_vad import EndpointVADAnalyzer
from pipeline.turn_taking.shared_analyzers import SharedSmartTurnAnalyzerV3
from pipeline.turn_taking.speculative_smart_turn import SpeculativeSmartTurnAnalyzer
from stepcall.audio import inference as turn_models
from stepcall.audio.inference import (
    TurnInferencePool,
    configure_inference,
    default_inference_threads,
    inference_pool,
)

RATE = 8000


@pytest.fixture
def pool():
    """A fresh two-thread pool for the test; the default one is put back afterwards."""
    before = inference_pool()
    pool = configure_inference(threads=2, nice=5)
    yield pool
    configure_inference(before.threads, before.nice)


def _analyzer() -> SharedSmartTurnAnalyzerV3:
    analyzer = SharedSmartTurnAnalyzerV3()
    analyzer.set_sample_rate(RATE)
    return analyzer


def _speak(analyzer: SharedSmartTurnAnalyzerV3, secs: float = 1.0) -> None:
    rng = np.random.default_rng(0)
    for _ in range(int(secs / 0.02)):
        chunk = (rng.standard_normal(160) * 3000).astype(np.int16)
        analyzer.append_audio(chunk.tobytes(), is_speech=True)


async def test_calls_share_the_process_pool_and_cleanup_leaves_it_running(pool) -> None:
    a, b = _analyzer(), _analyzer()
    assert a._model_executor is b._model_executor is pool.executor
    _speak(a)
    await a.cleanup()  # a strategy update cleans its analyzer up mid-call
    _speak(b)
    state, metrics = await b.analyze_end_of_turn()  # the pool still runs inferences
    assert state in (EndOfTurnState.COMPLETE, EndOfTurnState.INCOMPLETE)
    assert metrics is not None and metrics.e2e_processing_time_ms > 0


async def test_pool_threads_run_at_lower_priority_and_at_most_threads_at_once(pool) -> None:
    seen: list[tuple[int, int]] = []
    running = 0
    peak = 0
    lock = threading.Lock()
    release = threading.Event()

    def job() -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        tid = threading.get_native_id()
        seen.append((tid, os.getpriority(os.PRIO_PROCESS, tid)))
        release.wait(5)
        with lock:
            running -= 1

    loop = asyncio.get_running_loop()
    futures = [loop.run_in_executor(pool.executor, job) for _ in range(5)]
    await asyncio.sleep(0.2)
    release.set()
    await asyncio.gather(*futures)
    base = os.getpriority(os.PRIO_PROCESS, 0)
    assert peak == 2  # five inferences, never more than the pool's two threads at once
    assert {nice for _, nice in seen} == {min(19, base + 5)}
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == base  # loop untouched
    assert {tid for tid, _ in seen} == pool.native_ids  # for per-thread CPU accounting


async def test_a_cancelled_inference_still_queued_never_runs(pool) -> None:
    gate = threading.Event()
    ran: list[str] = []
    loop = asyncio.get_running_loop()
    busy = [loop.run_in_executor(pool.executor, gate.wait, 5) for _ in range(2)]
    queued = loop.run_in_executor(pool.executor, ran.append, "stale")
    await asyncio.sleep(0.05)
    queued.cancel()  # the caller spoke again: the early look is dropped
    await asyncio.sleep(0.01)  # asyncio cancels the executor job from a done-callback
    gate.set()
    await asyncio.gather(*busy)
    await asyncio.sleep(0.05)
    assert ran == []


async def test_speculative_early_inference_goes_through_the_pool(pool) -> None:
    vad = EndpointVADAnalyzer(sample_rate=RATE)
    vad.set_sample_rate(RATE)
    analyzer = SpeculativeSmartTurnAnalyzer(vad=vad, speculate_after_secs=0.0)
    analyzer.set_sample_rate(RATE)
    names: list[str] = []
    original = analyzer._process_speech_segment

    def spy(buffer):
        names.append(threading.current_thread().name)
        return original(buffer)

    analyzer._process_speech_segment = spy
    vad._vad_state = VADState.SPEAKING  # a pause under way: pause_secs > 0 below
    vad.energy.samples = RATE  # one second since the last loud sub-frame
    _speak(analyzer, 0.5)
    analyzer.append_audio(bytes(320), is_speech=False)
    await analyzer.analyze_end_of_turn()
    assert names and all(n.startswith("smart-turn") for n in names)


def test_pool_settings_are_checked() -> None:
    assert TurnInferencePool().threads == default_inference_threads() >= 1
    with pytest.raises(ValueError, match="threads"):
        TurnInferencePool(threads=0)
    with pytest.raises(ValueError, match="nice"):
        TurnInferencePool(nice=25)


def test_configure_keeps_a_pool_with_the_same_settings(pool) -> None:
    executor = pool.executor
    assert configure_inference(2, 5) is pool and pool.executor is executor
    replaced = configure_inference(1, 5)
    assert replaced is not pool and turn_models.inference_pool() is replaced
