"""LeanWorkerObserver: observers see what they look at, nothing is queued for the rest."""

from __future__ import annotations

import asyncio

from pipecat.frames.frames import EndFrame, InputAudioRawFrame, TextFrame
from pipecat.observers.base_observer import BaseObserver, FrameProcessed, FramePushed
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner

from pipeline.observers.fan_out import FanOutObserver
from pipeline.observers.worker_proxy import LeanWorkerObserver, use_lean_observer


class Relay(FrameProcessor):
    async def process_frame(self, frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        await self.push_frame(frame, direction)


class Seen(BaseObserver):
    def __init__(self, wants_audio: bool | None = None) -> None:
        super().__init__(observe_every_push=False)
        if wants_audio is not None:
            self.wants_audio = wants_audio
        self.pushed: list[str] = []

    async def on_push_frame(self, data: FramePushed) -> None:
        self.pushed.append(type(data.frame).__name__)


class SeesProcessed(BaseObserver):
    def __init__(self) -> None:
        super().__init__()
        self.processed = 0

    async def on_process_frame(self, data: FrameProcessed) -> None:
        self.processed += 1


async def run(observers: list[BaseObserver], idle_timeout_secs: float | None = None) -> float:
    worker = use_lean_observer(
        PipelineWorker(
            Pipeline([Relay(), Relay()]),
            params=PipelineParams(),
            observers=observers,
            idle_timeout_secs=idle_timeout_secs,
            cancel_on_idle_timeout=True,
            enable_rtvi=False,
        )
    )
    assert isinstance(worker._observer, LeanWorkerObserver)
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    task = asyncio.create_task(runner.run())
    audio = [InputAudioRawFrame(bytes(320), 8000, 1) for _ in range(5)]
    await worker.queue_frames([*audio, TextFrame("hello")])
    t0 = asyncio.get_running_loop().time()
    if idle_timeout_secs is None:
        await asyncio.sleep(0.3)
        await worker.queue_frames([EndFrame()])
    await asyncio.wait_for(task, 10)
    return asyncio.get_running_loop().time() - t0


async def test_audio_reaches_only_observers_that_want_it():
    deaf, hearing, default = Seen(wants_audio=False), Seen(wants_audio=True), Seen()
    await run([FanOutObserver([deaf]), hearing, default])
    assert "TextFrame" in deaf.pushed and "InputAudioRawFrame" not in deaf.pushed
    assert hearing.pushed.count("InputAudioRawFrame") == 5  # first pushes only
    assert default.pushed.count("InputAudioRawFrame") == 5  # no attribute: everything


async def test_processed_frames_reach_observers_that_handle_them():
    processed = SeesProcessed()
    await run([processed])
    assert processed.processed >= 2 * 6  # each frame processed by both relays


async def test_fan_out_wants_audio_when_a_child_does():
    assert not FanOutObserver([Seen(wants_audio=False)]).wants_audio
    assert FanOutObserver([Seen(wants_audio=False), Seen()]).wants_audio


class Deaf(Seen):
    wants_audio = False  # said by the class: never asked again


class Recorder(Seen):
    def __init__(self) -> None:
        super().__init__()
        self.recording = False

    @property
    def wants_audio(self) -> bool:  # changes while the call runs
        return self.recording


async def test_fan_out_asks_children_whose_answer_can_change():
    recorder = Recorder()
    hub = FanOutObserver([Deaf(), recorder])
    assert not hub.wants_audio
    recorder.recording = True
    assert hub.wants_audio
    hub.add(Seen())  # no attribute: takes audio
    recorder.recording = False
    assert hub.wants_audio


async def test_idle_timeout_still_ends_an_idle_pipeline():
    took = await run([Seen()], idle_timeout_secs=0.5)
    assert took < 5.0


def _proxied(*observers: BaseObserver) -> LeanWorkerObserver:
    """A LeanWorkerObserver with plain queues as its proxies (no tasks drain them)."""
    from pipecat.pipeline.worker_observer import Proxy

    lean = LeanWorkerObserver(observers=list(observers))
    lean._proxies = {o: Proxy(queue=asyncio.Queue(), task=None, observer=o) for o in observers}
    return lean


def _push(frame) -> FramePushed:
    relay = Relay()
    return FramePushed(source=relay, destination=relay, frame=frame,
                       direction=FrameDirection.DOWNSTREAM, timestamp=0)


async def test_processed_frames_skip_a_fan_out_whose_children_ignore_them():
    pushes_only, handles = FanOutObserver([Seen()]), FanOutObserver([SeesProcessed()])
    assert not pushes_only.handles_processed and handles.handles_processed
    lean = _proxied(pushes_only, handles)
    relay = Relay()
    await lean.on_process_frame(FrameProcessed(processor=relay, frame=TextFrame("x"),
                                               direction=FrameDirection.DOWNSTREAM, timestamp=0))
    assert lean._proxies[pushes_only].queue.qsize() == 0
    assert lean._proxies[handles].queue.qsize() == 1


async def test_audio_nobody_takes_costs_no_first_push_bookkeeping():
    deaf = FanOutObserver([Seen(wants_audio=False)])
    lean = _proxied(deaf)
    await lean.on_push_frame(_push(InputAudioRawFrame(bytes(320), 8000, 1)))
    assert len(lean._frames_pushed) == 0 and lean._proxies[deaf].queue.qsize() == 0
    text = TextFrame("hello")
    await lean.on_push_frame(_push(text))
    assert lean._proxies[deaf].queue.qsize() == 1 and text.id in lean._frames_pushed
