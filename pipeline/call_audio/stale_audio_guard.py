"""Keeps a barge-in from letting one more chunk of the interrupted reply play.

Pipecat 1.14's output media sender takes its next chunk with ``wait_for(queue.get(), ...)``, and
on Python 3.11 Pipecat's ``wait_for2`` runs that ``get()`` in a task of its own, so a chunk leaves
the queue a loop turn or two before the sender handles it. An interruption that lands in that gap
drains the queue (``FrameQueue.reset``) and reports the bot stopped, and then the chunk it could
not see is handled anyway: the caller hears 40 ms of the reply they talked over, and the
transport reports ``BotStartedSpeakingFrame`` again in the middle of the caller's turn (about 1
barge-in in 4 on the loopback call test). The bot server puts a 3.12-style ``wait_for`` in place
(:mod:`stepcall.runtime.realtime`), which has no such gap; the guard makes the call pipeline right
wherever it runs (tests, an app that embeds it, Pipecat changes).

:class:`StaleAudioGuard` marks each interruption with a frame id (ids only grow) and empties
every interruptible audio chunk made before it that still reaches the sender; the sender skips
empty audio before it reports speech, writes or pushes anything. A chunk that was already past
that point when the caller barged in (its write had not started) is refused at the write.
Uninterruptible audio (a goodbye, an apology) is never touched.
"""

from __future__ import annotations

from typing import Any

from pipecat.frames.frames import Frame, InterruptionFrame, OutputAudioRawFrame
from pipecat.transports.base_output import BaseOutputTransport
from pipecat.utils.base_object import obj_id


class StaleAudioGuard:
    """Installed on an output transport; guards each of its media senders once they exist."""

    def __init__(self) -> None:
        #: Interruptible chunks that reached a sender after an interruption made them stale.
        self.chunks_dropped = 0
        self._senders: list[Any] = []
        #: Per destination: interruptible chunks with a smaller id were made before its last
        #: interruption.
        self._stale_below: dict[str | None, int] = {}

    def is_stale(self, frame: Frame) -> bool:
        """Interruptible audio made before the last interruption of its destination."""
        return (
            isinstance(frame, OutputAudioRawFrame)
            and frame.interruptible
            and frame.id < self._stale_below.get(frame.transport_destination, 0)
        )

    @property
    def senders_guarded(self) -> int:
        """How many media senders the guard watches (0 until the transport is ready)."""
        return len(self._senders)

    def install(self, output: BaseOutputTransport) -> StaleAudioGuard:
        """Guard ``output``'s media senders as soon as ``set_transport_ready`` makes them."""
        ready = output.set_transport_ready
        write = output.write_audio_frame

        async def set_transport_ready(frame: Any) -> None:
            await ready(frame)
            for sender in output._media_senders.values():
                if sender not in self._senders:
                    self._guard(sender)

        async def write_audio_frame(frame: OutputAudioRawFrame) -> bool:
            if self.is_stale(frame):
                self.chunks_dropped += 1
                return False
            return await write(frame)

        output.set_transport_ready = set_transport_ready  # type: ignore[method-assign]
        output.write_audio_frame = write_audio_frame  # type: ignore[method-assign]
        return self

    def _guard(self, sender: Any) -> None:
        self._senders.append(sender)
        destination = sender._destination
        handle_interruptions = sender.handle_interruptions
        filter_audio = sender._filter_audio

        async def guarded_interruptions(frame: InterruptionFrame) -> None:
            self._stale_below[destination] = obj_id()
            await handle_interruptions(frame)

        async def guarded_filter(frame: Frame) -> None:
            if isinstance(frame, OutputAudioRawFrame) and frame.audio and self.is_stale(frame):
                frame.audio = b""  # the sender skips empty audio before it does anything
                self.chunks_dropped += 1
                return
            await filter_audio(frame)

        sender.handle_interruptions = guarded_interruptions
        sender._filter_audio = guarded_filter


__all__ = ["StaleAudioGuard"]
