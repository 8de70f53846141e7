"""A barge-in that lands while the output sender holds a chunk it took off its queue.

The test makes that interleaving happen every time: the sender's queue hands out its third chunk
only after the interruption has been handled, as Pipecat's ``wait_for2`` (Python 3.11) lets
happen now and then on a real call. The control case shows what Pipecat 1.14 does then without
the guard: the chunk plays and the bot "starts speaking" again in the caller's turn.
"""

from __future__ import annotations

import asyncio

import pytest
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    InterruptionFrame,
    TTSAudioRawFrame,
)
from pipecat.observers.base_observer import BaseObserver, FramePushed
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection
from pipecat.workers.runner import WorkerRunner

from harness.loopback_phone import PhoneSpeaker
from pipeline.call_audio.stale_audio_guard import StaleAudioGuard

RATE = 8000
CHUNK = 4 * 80 * 2  # Pipecat's output chunk: 4 x 10 ms of 16-bit audio at 8 kHz


class BotSpeech(BaseObserver):
    """The speaker's bot started/stopped reports, in order (downstream copies, once each)."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[str] = []
        self._seen: set[int] = set()

    async def on_push_frame(self, data: FramePushed) -> None:
        f = data.frame
        if (
            data.direction == FrameDirection.DOWNSTREAM
            and isinstance(f, (BotStartedSpeakingFrame, BotStoppedSpeakingFrame))
            and f.id not in self._seen
        ):
            self._seen.add(f.id)
            self.events.append(type(f).__name__)


def _reply(interruptible: bool) -> TTSAudioRawFrame:
    """Ten chunks of a reply; chunk ``k``'s samples are all ``k + 1``."""
    audio = b"".join(int(k + 1).to_bytes(2, "little") * (CHUNK // 2) for k in range(10))
    reply = TTSAudioRawFrame(audio, RATE, 1)
    reply.interruptible = interruptible
    return reply


def _chunk_number(item: object) -> int | None:
    audio = getattr(item, "audio", b"")
    return int.from_bytes(audio[:2], "little") if audio else None


async def _interrupt_while_a_chunk_is_out(*, guard: bool, interruptible: bool):
    speaker = PhoneSpeaker(RATE)
    stale = StaleAudioGuard().install(speaker) if guard else None
    speech = BotSpeech()
    worker = PipelineWorker(
        Pipeline([speaker]),
        params=PipelineParams(audio_in_sample_rate=RATE, audio_out_sample_rate=RATE),
        observers=[speech],
        enable_rtvi=False,
        idle_timeout_secs=None,
    )
    started = asyncio.Event()

    @worker.event_handler("on_pipeline_started")
    async def _started(_worker, _frame) -> None:
        started.set()

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    task = asyncio.create_task(runner.run())
    await asyncio.wait_for(started.wait(), 5.0)
    sender = speaker._media_senders[None]
    queue = sender._audio_queue
    interrupted = asyncio.Event()
    handle_interruptions = sender.handle_interruptions

    async def handle_then_tell(frame: InterruptionFrame) -> None:
        await handle_interruptions(frame)
        interrupted.set()

    async def get_with_interruption():
        item = await type(queue).get(queue)
        if _chunk_number(item) == 3:  # the third chunk is off the queue, not yet handled: barge in
            await worker.queue_frame(InterruptionFrame())
            await interrupted.wait()
        return item

    sender.handle_interruptions = handle_then_tell
    queue.get = get_with_interruption
    await worker.queue_frame(_reply(interruptible))
    await asyncio.sleep(0.6)
    await worker.cancel()
    await asyncio.wait_for(task, 10.0)
    return speaker, speech, stale


async def test_the_chunk_taken_before_a_barge_in_does_not_play() -> None:
    speaker, speech, stale = await _interrupt_while_a_chunk_is_out(
        guard=True, interruptible=True
    )
    assert stale is not None and stale.senders_guarded == 1
    assert [int(x[0]) for _, x in speaker.chunks] == [1, 2]  # heard before the barge-in
    assert speech.events == ["BotStartedSpeakingFrame", "BotStoppedSpeakingFrame"]
    assert stale.chunks_dropped == 1


async def test_without_the_guard_pipecat_plays_it_and_starts_speaking_again() -> None:
    speaker, speech, _ = await _interrupt_while_a_chunk_is_out(
        guard=False, interruptible=True
    )
    assert [int(x[0]) for _, x in speaker.chunks] == [1, 2, 3]
    assert speech.events[:3] == [
        "BotStartedSpeakingFrame",
        "BotStoppedSpeakingFrame",
        "BotStartedSpeakingFrame",
    ]


@pytest.mark.parametrize("guard", [True, False])
async def test_uninterruptible_audio_plays_through_a_barge_in(guard: bool) -> None:
    speaker, speech, stale = await _interrupt_while_a_chunk_is_out(
        guard=guard, interruptible=False
    )
    assert [int(x[0]) for _, x in speaker.chunks] == list(range(1, 11))  # a goodbye is never cut
    assert speech.events.count("BotStartedSpeakingFrame") == 1
    assert stale is None or stale.chunks_dropped == 0
