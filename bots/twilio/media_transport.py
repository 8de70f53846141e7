"""TwilioMediaTransport: Pipecat's FastAPI WebSocket transport with a lean path for caller audio.

Pipecat's input transport hands every received audio frame to a queue and a task of its own,
which takes it off again with ``asyncio.wait_for`` (Pipecat swaps in ``wait_for2`` on Python
3.11, which wraps each wait in a new task, a future and a timer): for a phone call's 50 frames a
second that was a task, two futures and a timer per 20 ms of audio, before any processor saw it.
Here the receive task pushes each audio frame downstream itself, in arrival order with the
call's other messages (DTMF, marks), exactly as the audio task would have: audio filters and
``audio_in_passthrough`` are honoured, nothing is pushed before the transport is ready or while
it is paused.

While nobody speaks or the caller speaks steadily (``coalesce_while``: the call's
``EndpointVADAnalyzer.steady``), two 20 ms frames go down as one 40 ms frame: every processor,
the VAD's bookkeeping and the observers then handle half as many frames for most of a call. A
frame waits at most one frame time (20 ms) for its partner, and never in the pause at the end of
the caller's speech, where latency counts; the start of speech is seen at most 20 ms later. Any
other message (DTMF, a mark) sends the waiting frame first, so the order stays the order of
arrival.

On the way out, no chunk of an answer the caller barged in on goes out after Twilio's ``clear``
(:class:`~pipeline.stale_audio_guard.StaleAudioGuard`): Pipecat's sender takes each chunk off
its queue with ``wait_for``, i.e. a task that runs on a later loop turn, and a chunk taken just
before the interruption otherwise reached the caller after the ``clear`` (40 ms of the
interrupted answer after Twilio had flushed the rest), with a fresh "bot started speaking" in
the middle of the caller's turn. Uninterruptible audio still plays.

Pipecat paces a WebSocket's audio at exactly real time, so the caller's phone holds only its own
small jitter buffer: any event-loop stall longer than that (a busy server) is a gap the caller
hears. Twilio plays whatever it has been sent, in order, and a ``clear`` flushes all of it, so
here the sender keeps ``lead_secs`` of the bot's audio queued ahead of the caller's playout (one
chunk more right after each send): the first chunks of a response go out at once, then one per
chunk time, and after a stall the sender catches up instead of staying behind (``lead_secs=0.1``
with 100 ms chunks is Pipecat's own pacing). A barge-in loses nothing by it: the ``clear``
empties Twilio's buffer, and what the caller heard is still counted from when playout started.
``playout_end`` tells when the caller will have heard everything sent so far (the echo guard's
clock for the bot's audio). Pipecat ends the bot's speaking state once the last chunk is sent,
so up to the lead before the caller has heard it (Twilio's ``mark`` says when it has).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from pipecat.frames.frames import Frame, InputAudioRawFrame, InterruptionFrame, OutputAudioRawFrame
from pipecat.processors.frame_processor import FrameDirection
from pipecat.transports.websocket.fastapi import (
    FastAPIWebsocketInputTransport,
    FastAPIWebsocketOutputTransport,
    FastAPIWebsocketParams,
    FastAPIWebsocketTransport,
)

from pipeline.stale_audio_guard import StaleAudioGuard


class DirectAudioInputTransport(FastAPIWebsocketInputTransport):
    """WebSocket input whose receive task pushes caller audio downstream directly."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._audio_ready = False
        self._steady: Callable[[], bool] | None = None
        self._held: InputAudioRawFrame | None = None
        self._max_held_bytes = 0
        #: Audio frames pushed downstream / of them, pairs pushed as one (tests, diagnostics).
        self.audio_frames_pushed = 0
        self.frames_coalesced = 0

    def coalesce_while(self, steady: Callable[[], bool] | None, frame_secs: float = 0.02) -> None:
        """Push pairs of caller frames (each at most ``frame_secs`` long) as one while
        ``steady()`` is true; None: every frame on its own (the default)."""
        self._steady = steady
        rate = self._params.audio_in_sample_rate or 8000
        self._max_held_bytes = int(frame_secs * rate) * 2 * self._params.audio_in_channels

    def _create_audio_task(self) -> None:
        """No audio queue and task: :meth:`push_audio_frame` does their work inline."""
        self._audio_ready = True

    async def _cancel_audio_task(self) -> None:
        """Stop taking audio (end, cancel, pause) until the transport is ready again."""
        self._audio_ready = False
        self._held = None

    async def push_audio_frame(self, frame: InputAudioRawFrame) -> None:
        """Filter and push one caller frame downstream, from the receive task."""
        if not (self._params.audio_in_enabled and self._audio_ready) or self._paused:
            return
        if self._params.audio_in_filter:
            frame.audio = await self._params.audio_in_filter.filter(frame.audio)
        if not frame.audio:
            return  # e.g. a filter still buffering
        if not self._params.audio_in_passthrough:
            return
        if self._held is not None:
            held, self._held = self._held, None
            if held.sample_rate == frame.sample_rate and held.num_channels == frame.num_channels:
                self.frames_coalesced += 1
                frame = type(frame)(
                    audio=held.audio + frame.audio,
                    sample_rate=frame.sample_rate,
                    num_channels=frame.num_channels,
                )
            else:
                await self._push_audio(held)
        elif self._steady is not None and len(frame.audio) <= self._max_held_bytes and self._steady():
            self._held = frame  # its partner is due in one frame time
            return
        await self._push_audio(frame)

    async def _push_audio(self, frame: InputAudioRawFrame) -> None:
        self.audio_frames_pushed += 1
        await super().push_frame(frame)

    async def push_frame(self, frame: Frame, direction: FrameDirection = FrameDirection.DOWNSTREAM):
        """Pushes from the receive task (DTMF, marks, ...) send a waiting audio frame first."""
        if self._held is not None and direction == FrameDirection.DOWNSTREAM:
            held, self._held = self._held, None
            await self._push_audio(held)
        await super().push_frame(frame, direction)


class ClearAwareOutputTransport(FastAPIWebsocketOutputTransport):
    """WebSocket output that sends no interruptible audio queued before the last ``clear``,
    and keeps ``lead_secs`` of the bot's audio queued ahead of the caller's playout."""

    def __init__(self, *args: Any, lead_secs: float = 0.1, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if lead_secs < 0:
            raise ValueError(f"lead_secs must be >= 0, got {lead_secs}")
        self.lead_secs = lead_secs
        #: Sends no chunk of a reply the caller barged in on (and reports no speech for it).
        self.stale_audio = StaleAudioGuard().install(self)
        self._playout_end = 0.0  # monotonic: the caller has heard everything sent by then
        self._chunk_secs = 0.0  # duration of the chunk being written

    @property
    def playout_end(self) -> float:
        """Monotonic time at which the caller will have heard all audio sent so far."""
        return self._playout_end

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Pipecat's handling; after an interruption nothing is queued at the caller's end."""
        await super().process_frame(frame, direction)
        if isinstance(frame, InterruptionFrame):
            self._playout_end = 0.0  # the clear flushed Twilio's buffer: nothing is queued

    async def write_audio_frame(self, frame: OutputAudioRawFrame) -> bool:
        """Send one chunk and note how long it plays."""
        rate = frame.sample_rate or self.sample_rate
        self._chunk_secs = len(frame.audio) / (2 * frame.num_channels * rate) if rate else 0.0
        return await super().write_audio_frame(frame)

    async def _write_audio_sleep(self) -> None:
        """After a chunk went out: wait until the caller's buffer is down to ``lead_secs``."""
        now = time.monotonic()
        self._playout_end = max(self._playout_end, now) + self._chunk_secs
        wait = self._playout_end - now - self.lead_secs
        await asyncio.sleep(wait if wait > 0 else 0)


class TwilioMediaTransport(FastAPIWebsocketTransport):
    """A call's Twilio Media Streams WebSocket: :class:`DirectAudioInputTransport` in,
    :class:`ClearAwareOutputTransport` out."""

    def __init__(
        self,
        websocket: Any,
        params: FastAPIWebsocketParams,
        *,
        audio_lead_secs: float = 0.1,
        **kwargs: Any,
    ) -> None:
        """``audio_lead_secs``: how much of the bot's audio to keep queued ahead of the caller's
        playout (0.1 s with 100 ms chunks: Pipecat's pacing)."""
        super().__init__(websocket, params, **kwargs)
        self._input = DirectAudioInputTransport(
            self, self._client, self._params, name=self._input_name
        )
        self._output = ClearAwareOutputTransport(
            self, self._client, self._params, name=self._output_name, lead_secs=audio_lead_secs
        )

    def input(self) -> DirectAudioInputTransport:
        """The input processor (caller audio, DTMF, marks)."""
        return self._input

    def output(self) -> ClearAwareOutputTransport:
        """The output processor (bot audio the lead ahead of playout, marks, clear)."""
        return self._output
