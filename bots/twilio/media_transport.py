"""TwilioMediaTransport: Pipecat's FastAPI WebSocket transport with a lean path for caller audio.

Pipecat's input transport hands every received audio frame to a queue and a task of its own,
which takes it off again with ``asyncio.wait_for`` (Pipecat swaps in ``wait_for2`` on Python
3.11, which wraps each wait in a new task, a future and a timer): for a phone call's 50 frames a
second that was a task, two futures and a timer per 20 ms of audio, before any processor saw it.
Here the receive task pushes each audio frame downstream itself, in arrival order with the
call's other messages (DTMF, marks), exactly as the audio task would have: audio filters and
``audio_in_passthrough`` are honoured, nothing is pushed before the transport is ready or while
it is paused.

Caller frames go down together where that changes nothing (``coalesce_while``, the rules of
:class:`~pipeline.call_audio.batcher.CallerAudioBatcher`): every processor, the VAD's
bookkeeping and the observers then handle far fewer frames. While no user turn is open and the
caller's line is provably too quiet for the VAD to hear speech, up to 200 ms of frames go down as
one; the first frame that is not goes down at once with them. While a user turn is open, the bot
is idle and the caller speaks loudly, frames wait as long as no pause anything acts on could grow
inside them (~80-100 ms; a speech hold). Otherwise, while nobody speaks or
the caller speaks steadily (the call's ``EndpointVADAnalyzer.steady``), two 20 ms frames go down
as one 40 ms frame: a frame waits at most one frame time for its partner, and never in the pause
at the end of the caller's speech, where latency counts. Any other message (DTMF, a mark) sends
the waiting audio first, so the order stays the order of arrival. While a hold fills, the
WebSocket is left unread (:func:`socket_transport`: uvicorn's transport under the ASGI
connection) until the hold is full or for what ``pause_reading`` allows (on a call: the whole
hold while the bot is idle, less than the VAD needs to start speech while it answers): the
kernel keeps Twilio's messages, the first read after the pause takes them all, and the process
is woken about twice per hold instead of once per 20 ms message. Each frame keeps the time it
came (:class:`~bots.twilio.stream_clock.StreamClock`), for the echo guard.

On the way out, no chunk of an answer the caller barged in on goes out after Twilio's ``clear``
(:class:`~pipeline.call_audio.stale_audio_guard.StaleAudioGuard`): Pipecat's sender takes each chunk off
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
import dataclasses
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

from pipeline.call_audio.batcher import (
    HOLD_SECS,
    BatchingInput,
    CallerAudioBatcher,
    QuietTest,
    SpeechHoldTest,
)
from pipeline.call_audio.stale_audio_guard import StaleAudioGuard


class DirectAudioInputTransport(BatchingInput, FastAPIWebsocketInputTransport):
    """WebSocket input whose receive task pushes caller audio downstream directly."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._audio_ready = False
        self._batcher: CallerAudioBatcher | None = None
        #: The last frame offered to the batcher: the format, type and stamp of what waits
        #: (a joined frame ends with it, so it carries its ``captured_at``).
        self._held: InputAudioRawFrame | None = None
        #: Audio frames pushed downstream (tests, diagnostics).
        self.audio_frames_pushed = 0

    def coalesce_while(
        self,
        steady: Callable[[], bool] | None,
        frame_secs: float = 0.02,
        *,
        quiet: QuietTest | None = None,
        hold_secs: float = HOLD_SECS,
        pause_reading: Callable[[], float] | None = None,
        speech: SpeechHoldTest | None = None,
    ) -> None:
        """Push pairs of caller frames (each at most ``frame_secs`` long) as one while
        ``steady()`` is true, hold quiet frames up to ``hold_secs`` while ``quiet`` allows and
        the caller's speech while ``speech`` allows
        (:class:`~pipeline.call_audio.batcher.CallerAudioBatcher`); all None: every frame
        on its own (the default). While a hold fills, the WebSocket is left unread until the
        hold has what it may take, for at most ``pause_reading()`` seconds (None: never)."""
        rate = self._params.audio_in_sample_rate or 8000
        self._use_batching(rate, steady, quiet, hold_secs, frame_secs, pause_reading, speech)

    def _create_audio_task(self) -> None:
        """No audio queue and task: :meth:`push_audio_frame` does their work inline."""
        self._audio_ready = True

    async def _cancel_audio_task(self) -> None:
        """Stop taking audio (end, cancel, pause) until the transport is ready again."""
        self._audio_ready = False
        if self._batcher is not None:
            self._batcher.drop()

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
        batcher = self._batcher
        if batcher is None or frame.num_channels != 1:
            await self._send_waiting()
            await self._push_audio(frame)
            return
        held = self._held
        if batcher.waiting and held is not None and held.sample_rate != frame.sample_rate:
            await self._send_waiting()
        self._held = frame
        audio = batcher.offer(frame.audio)
        if audio is None:
            await self._pause_reading()
            return
        if audio is not frame.audio:
            frame = dataclasses.replace(frame, audio=audio)
        await self._push_audio(frame)

    async def _pause_reading(self) -> None:
        """Leave the socket unread while a hold fills (``read_pause_secs``): the kernel
        keeps Twilio's messages, and the first read after the pause takes them all."""
        secs = self.read_pause_secs()
        if secs <= 0:
            return
        reader = socket_transport(self._client)
        if reader is None or reader.is_closing() or not reader.is_reading():
            return
        reader.pause_reading()
        self._count_read_pause(secs)
        try:
            await asyncio.sleep(secs)
        finally:
            if not reader.is_closing():
                reader.resume_reading()

    async def _send_waiting(self) -> None:
        """Push the audio that waits for a partner or in a quiet hold, if any."""
        audio = self._batcher.take() if self._batcher is not None else None
        if audio is not None and self._held is not None:
            await self._push_audio(dataclasses.replace(self._held, audio=audio))

    async def _push_audio(self, frame: InputAudioRawFrame) -> None:
        self.audio_frames_pushed += 1
        await super().push_frame(frame)

    async def push_frame(self, frame: Frame, direction: FrameDirection = FrameDirection.DOWNSTREAM):
        """Pushes from the receive task (DTMF, marks, ...) send the waiting audio first."""
        if direction == FrameDirection.DOWNSTREAM:
            await self._send_waiting()
        await super().push_frame(frame, direction)


def socket_transport(client: Any) -> asyncio.Transport | None:
    """The asyncio transport under a Pipecat FastAPI WebSocket client, where the server shows
    it (uvicorn: the protocol behind the ASGI ``receive``); None elsewhere."""
    websocket = getattr(client, "_websocket", None)
    protocol = getattr(getattr(websocket, "_receive", None), "__self__", None)
    transport = getattr(protocol, "transport", None)
    if all(hasattr(transport, m) for m in ("pause_reading", "resume_reading", "is_reading")):
        return transport
    return None


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
