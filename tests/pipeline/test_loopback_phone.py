"""The loopback phone delivers the caller's script as the Twilio input does."""

from __future__ import annotations

import asyncio
import math
import time

import numpy as np
from pipecat.frames.frames import (
    InputAudioRawFrame,
    StartFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner

from harness.loopback_phone import LoopbackPhone, Say
from pipeline.call_audio.caller_frame import CallerAudioFrame

RATE = 8000


class Ear(FrameProcessor):
    """Keeps the caller's frames (and passes nothing on)."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: list[InputAudioRawFrame] = []

    async def process_frame(self, frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame):
            self.frames.append(frame)
            return
        await self.push_frame(frame, direction)


async def _listen(phone: LoopbackPhone, secs: float, ear: Ear | None = None) -> Ear:
    """Run ``phone`` for ``secs`` with ``ear`` (or a new Ear) between its microphone and
    earpiece."""
    ear = ear if ear is not None else Ear()
    await _run(phone, ear, secs)
    return ear


async def _run(phone: LoopbackPhone, middle: FrameProcessor, secs: float) -> None:
    worker = PipelineWorker(
        Pipeline([phone.input(), middle, phone.output()]),
        params=PipelineParams(audio_in_sample_rate=RATE, audio_out_sample_rate=RATE),
        enable_rtvi=False,
        idle_timeout_secs=None,
    )
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    task = asyncio.create_task(runner.run())
    await asyncio.sleep(secs)
    await worker.cancel()
    await asyncio.wait_for(task, 10.0)


async def test_script_arrives_sample_exact_in_pairs_while_the_predicate_holds() -> None:
    rng = np.random.default_rng(1)
    a = rng.integers(-8000, 8000, int(0.3 * RATE)).astype(np.int16)
    b = rng.integers(-8000, 8000, int(0.2 * RATE)).astype(np.int16)
    phone = LoopbackPhone([Say(a, 0.1), Say(b, 0.35, gain=0.5)])
    pairs = {"on": True}
    phone.mic.coalesce_while(lambda: pairs["on"])

    async def flip() -> None:
        await asyncio.sleep(0.45)
        pairs["on"] = False

    flipper = asyncio.create_task(flip())
    ear = await _listen(phone, 0.9)
    await flipper
    assert all(isinstance(f, CallerAudioFrame) and str(f) == f.name for f in ear.frames)
    sizes = [len(f.audio) for f in ear.frames]
    assert 640 in sizes[:5] and set(sizes[-5:]) == {320}  # pairs, then frames alone
    got = np.frombuffer(b"".join(f.audio for f in ear.frames), dtype=np.int16)
    expected = np.zeros(got.size, dtype=np.float32)
    expected[800 : 800 + a.size] += a
    expected[2800 : 2800 + b.size] += 0.5 * b
    np.testing.assert_array_equal(got, np.clip(expected, -32768, 32767).astype(np.int16))
    assert phone.mic.frames_coalesced >= 5
    assert phone.mic.frames_pushed == len(ear.frames)
    assert phone.own_cpu_secs > 0.0


async def test_line_noise_is_white_at_the_asked_level_and_quiet_holds_go_down_in_order() -> None:
    rng = np.random.default_rng(2)
    a = rng.integers(-8000, 8000, int(0.2 * RATE)).astype(np.int16)
    phone = LoopbackPhone([Say(a, 0.5)], noise_dbfs=-40.0)
    offers: list[int] = []

    def hold_quiet(sum_squares: float, samples: int, _last: bytes | None) -> bool:
        offers.append(samples)
        return sum_squares / samples < 400.0**2  # below the words, above the hiss

    phone.mic.coalesce_while(None, quiet=hold_quiet)
    ear = await _listen(phone, 1.0)
    got = np.frombuffer(b"".join(f.audio for f in ear.frames), dtype=np.int16).astype(float)
    hiss = got[: int(0.45 * RATE)]
    level = 20 * np.log10(np.sqrt(np.mean(hiss**2)) / 32768.0)
    assert abs(level + 40.0) < 1.0
    assert abs(np.corrcoef(hiss[:-1], hiss[1:])[0, 1]) < 0.1  # white
    # the hiss waited in 200 ms holds; the words went down with what waited, in order
    sizes = [len(f.audio) // 2 for f in ear.frames]
    assert sizes[:2] == [1600, 1600] and max(offers) == 1600
    words = got[4000 : 4000 + a.size] - a
    assert np.sqrt(np.mean(words**2)) < 2 * 32768 * 10 ** (-40 / 20)  # the words + the hiss
    assert phone.mic.frames_pushed == len(ear.frames) < 50


class TimedEar(Ear):
    """Also notes when each frame arrived."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    async def process_frame(self, frame, direction: FrameDirection) -> None:
        if isinstance(frame, InputAudioRawFrame):
            self.times.append(asyncio.get_running_loop().time())
        await super().process_frame(frame, direction)


async def test_read_pauses_hand_over_the_same_audio_at_most_a_hold_late() -> None:
    rng = np.random.default_rng(3)
    a = rng.integers(-8000, 8000, int(0.2 * RATE)).astype(np.int16)
    phone = LoopbackPhone([Say(a, 0.5)])
    phone.mic.coalesce_while(
        None, quiet=lambda ss, n, _last: ss <= n, pause_reading=lambda: math.inf
    )
    ear = TimedEar()
    await _listen(phone, 1.0, ear)
    got = np.frombuffer(b"".join(f.audio for f in ear.frames), dtype=np.int16)
    expected = np.zeros(got.size, dtype=np.int16)
    expected[4000 : 4000 + a.size] = a
    np.testing.assert_array_equal(got, expected)  # every sample, in order
    assert phone.mic.read_pauses >= 2
    # the words' first frame was due at 0.5 s: it went down at most a hold (200 ms) later
    t0 = phone.mic.started_at - time.monotonic() + asyncio.get_running_loop().time()
    ends = np.cumsum([len(f.audio) // 2 for f in ear.frames])
    first_loud = int(np.searchsorted(ends, 4000, side="right"))
    assert ear.times[first_loud] - t0 <= 0.5 + 0.02 + 0.2 + 0.05


class Talker(FrameProcessor):
    """Sends 0.8 s of bot audio once the pipeline has started."""

    async def process_frame(self, frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        await self.push_frame(frame, direction)
        if isinstance(frame, StartFrame):
            await self.push_frame(TTSStartedFrame())
            await self.push_frame(TTSAudioRawFrame(b"\x01\x02" * int(0.8 * RATE), RATE, 1))
            await self.push_frame(TTSStoppedFrame())


async def test_the_earpiece_writes_the_bots_audio_in_the_chunks_asked_for() -> None:
    for chunks, samples in ((4, 320), (10, 800)):
        phone = LoopbackPhone(out_10ms_chunks=chunks)
        await _run(phone, Talker(), 1.2)
        sizes = [x.size for _, x in phone.speaker.chunks]
        assert sum(sizes) == int(0.8 * RATE)
        assert set(sizes) == {samples}, (chunks, sizes)
