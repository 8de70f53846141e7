"""FanOutObserver: the observers of one call behind a single Pipecat observer.

Pipecat gives every observer of a worker its own queue and task, and queues every frame push and
every frame *processed* by every processor to each of them: with three observers a 20 ms audio
frame crossing ten processors costs ~60 queue hand-offs, whether the observer looks at it or
not. Behind one ``FanOutObserver`` the call pays that once; children are called directly, each
only for what it asked for (first pushes only when ``observe_every_push`` is False; processed
frames only when it overrides ``on_process_frame``).
"""

from __future__ import annotations

from pipecat.observers.base_observer import (
    BaseObserver,
    FrameProcessed,
    FramePushed,
    ProcessorSetUp,
)


def _overrides(observer: BaseObserver, method: str) -> bool:
    return getattr(type(observer), method) is not getattr(BaseObserver, method)


class FanOutObserver(BaseObserver):
    """Calls its child observers in order, from one Pipecat observer task."""

    def __init__(self, observers: list[BaseObserver] | None = None) -> None:
        super().__init__(observe_every_push=True)
        self._every: list[BaseObserver] = []
        self._first: list[BaseObserver] = []
        self._processed: list[BaseObserver] = []
        self._all: list[BaseObserver] = []
        self._audio_children: list[BaseObserver] = []
        for observer in observers or []:
            self.add(observer)

    @property
    def wants_audio(self) -> bool:
        """Whether a child looks at audio frames (one without ``wants_audio`` is assumed to).
        Read on every audio push of the call: children whose class says False are not asked."""
        for observer in self._audio_children:
            if getattr(observer, "wants_audio", True):
                return True
        return False

    @property
    def handles_processed(self) -> bool:
        """Whether a child handles processed frames: if none does, the worker's proxy need not
        queue the ~150 processed-frame events per second of a call's audio to this observer."""
        return bool(self._processed)

    @property
    def observers(self) -> list[BaseObserver]:
        """The children, in the order they were added."""
        return list(self._all)

    def add(self, observer: BaseObserver) -> None:
        """Add a child (before or while the call runs)."""
        self._all.append(observer)
        if getattr(type(observer), "wants_audio", True) is not False:  # True, absent or a property
            self._audio_children.append(observer)
        if _overrides(observer, "on_push_frame"):
            (self._every if observer.observe_every_push else self._first).append(observer)
        if _overrides(observer, "on_process_frame"):
            self._processed.append(observer)

    async def on_push_frame(self, data: FramePushed) -> None:
        """Every push to the children that want every push; first pushes to the rest."""
        for observer in self._every:
            await observer.on_push_frame(data)
        if data.first_push:
            for observer in self._first:
                await observer.on_push_frame(data)

    async def on_process_frame(self, data: FrameProcessed) -> None:
        """Only to the children that handle processed frames."""
        for observer in self._processed:
            await observer.on_process_frame(data)

    async def on_pipeline_started(self) -> None:
        """Tell every child the pipeline started."""
        for observer in self._all:
            await observer.on_pipeline_started()

    async def on_processor_setup(self, data: ProcessorSetUp) -> None:
        """Forward processor set-up timings."""
        for observer in self._all:
            await observer.on_processor_setup(data)

    async def cleanup(self) -> None:
        """Clean up every child."""
        await super().cleanup()
        for observer in self._all:
            await observer.cleanup()
