"""LeanWorkerObserver: Pipecat's observer proxy without the events nobody on the call looks at.

Pipecat's ``WorkerObserver`` queues, for every observer, every frame push and every frame
*processed* by every processor, and a task per observer takes them off the queue. On a phone call
that is ~500 queue hand-offs a second while nobody speaks (50 audio frames/s through three
processors), almost all for observers that ignore them. This proxy keeps Pipecat's queues and
order for what observers do see, and drops, before queueing:

- processed-frame events for observers that do not handle them (no ``on_process_frame``, or a
  ``handles_processed`` attribute that says False, see
  :class:`pipeline.observers.fan_out.FanOutObserver`);
- audio-frame pushes for observers that say they ignore audio (``wants_audio`` False); observers
  without the attribute get all. When no observer takes audio, an audio push costs a few
  attribute reads: not even Pipecat's first-push bookkeeping (a weak reference per frame) runs.

Pipecat's idle-timeout observer (an ``isinstance`` check and an event ``set``) is called inline
instead of through a queue and task of its own, and only for the frame types it watches.
"""

from __future__ import annotations

import functools

from pipecat.frames.frames import InputAudioRawFrame, OutputAudioRawFrame
from pipecat.observers.base_observer import BaseObserver, FrameProcessed, FramePushed
from pipecat.pipeline.worker import IdleFrameObserver, PipelineWorker
from pipecat.pipeline.worker_observer import WorkerObserver

_AUDIO = (InputAudioRawFrame, OutputAudioRawFrame)


def _handles_processed(observer: BaseObserver) -> bool:
    declared = getattr(observer, "handles_processed", None)
    if declared is not None:
        return bool(declared)
    return type(observer).on_process_frame is not BaseObserver.on_process_frame


@functools.cache
def _is_idle_observer(cls: type) -> bool:
    # observers are ABCs: an isinstance check walks ABCMeta's hooks on every audio push
    return issubclass(cls, IdleFrameObserver)


def _takes_audio(observer: BaseObserver, frame: object) -> bool:
    """Whether ``observer`` looks at this audio push at all (first-push rules aside)."""
    if _is_idle_observer(type(observer)):
        return isinstance(frame, observer._idle_timeout_frames)
    return getattr(observer, "wants_audio", True)


class LeanWorkerObserver(WorkerObserver):
    """A ``WorkerObserver`` that queues only the events its observers look at."""

    async def on_process_frame(self, data: FrameProcessed) -> None:
        """Queue to the observers that handle processed frames."""
        if not self._proxies:
            return
        for observer, proxy in self._proxies.items():
            if _handles_processed(observer):
                await proxy.queue.put(data)

    async def on_push_frame(self, data: FramePushed) -> None:
        """Pipecat's first-push bookkeeping; audio only to observers that want it."""
        if not self._proxies:
            return
        frame = data.frame
        audio = isinstance(frame, _AUDIO)
        if audio:  # the common case (50 pushes a second per hop): usually nobody takes it
            for observer in self._proxies:
                if _takes_audio(observer, frame):
                    break
            else:
                return
        data.first_push = frame.id not in self._frames_pushed
        if data.first_push:
            self._frames_pushed[frame.id] = frame
        for observer, proxy in self._proxies.items():
            if audio and not _takes_audio(observer, frame):
                continue
            if not (data.first_push or observer.observe_every_push):
                continue
            if _is_idle_observer(type(observer)):
                await observer.on_push_frame(data)  # cheap and non-blocking: no queue hop
                continue
            await proxy.queue.put(data)


def use_lean_observer(worker: PipelineWorker) -> PipelineWorker:
    """Swap ``worker``'s observer proxy for a :class:`LeanWorkerObserver` (before it runs)."""
    current = worker._observer
    if current._proxies is not None:
        raise RuntimeError("use_lean_observer: the worker has already started")
    worker._observer = LeanWorkerObserver(observers=list(current._observers))
    return worker
