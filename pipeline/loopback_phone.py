"""LoopbackPhone: a caller's phone in the same process, for tests and benchmarks of a call pipeline.

It stands where Twilio and the handset would be. ``input()`` is the caller's microphone: it plays
a script of utterances (:class:`Say`, anchored to the call start or to the bot's first audio) into
the pipeline as 20 ms ``InputAudioRawFrame``s in real time, optionally with the bot's own audio
fed back (a speakerphone echo at ``echo_gain`` after ``echo_delay``). ``output()`` is the earpiece:
a real ``BaseOutputTransport`` that "plays" the bot's audio at real-time pace and remembers what
it played and when.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import numpy as np
from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    Frame,
    InputAudioRawFrame,
    OutputAudioRawFrame,
    StartFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.transports.base_output import BaseOutputTransport
from pipecat.transports.base_transport import TransportParams


@dataclass
class Say:
    """Caller speech: ``pcm`` starts ``offset`` s after the anchor ("call" or "bot" start)."""

    pcm: np.ndarray
    offset: float
    anchor: str = "call"
    gain: float = 1.0


class PhoneSpeaker(BaseOutputTransport):
    """The caller's earpiece: plays the bot's audio at real-time pace and remembers it."""

    def __init__(self, sample_rate: int = 8000) -> None:
        super().__init__(
            TransportParams(
                audio_out_enabled=True,
                audio_out_sample_rate=sample_rate,
                audio_out_end_silence_secs=0,
            )
        )
        self.rate = sample_rate
        self.chunks: list[tuple[float, np.ndarray]] = []
        self.bytes_written = 0
        self.first_audio_at: float | None = None

    async def start(self, frame: StartFrame) -> None:
        await super().start(frame)
        await self.set_transport_ready(frame)

    async def write_audio_frame(self, frame: OutputAudioRawFrame) -> bool:
        now = time.monotonic()
        if self.first_audio_at is None:
            self.first_audio_at = now
        x = np.frombuffer(frame.audio, dtype=np.int16).astype(np.float32)
        # a handset plays from a buffer: a chunk written a little late still follows the
        # previous one seamlessly (event-loop jitter must not chop the audio)
        start = now
        if self.chunks:
            t0, prev = self.chunks[-1]
            end = t0 + prev.size / self.rate
            if now - end < 0.03:
                start = end
        self.chunks.append((start, x))
        self.bytes_written += len(frame.audio)
        await asyncio.sleep(len(frame.audio) / 2 / frame.sample_rate)
        return True

    def played(self, t_from: float, n: int) -> np.ndarray:
        """What the earpiece played from ``t_from`` for ``n`` samples (zeros where silent)."""
        out = np.zeros(n, dtype=np.float32)
        t_to = t_from + n / self.rate
        for t0, x in reversed(self.chunks):
            t1 = t0 + x.size / self.rate
            if t1 <= t_from:
                break
            if t0 >= t_to:
                continue
            a = max(0, int(round((t0 - t_from) * self.rate)))
            b = max(0, int(round((t_from - t0) * self.rate)))
            m = min(n - a, x.size - b)
            if m > 0:
                out[a : a + m] += x[b : b + m]
        return out


class PhoneMicrophone(FrameProcessor):
    """The caller's microphone: 20 ms frames in real time of the script (+ speakerphone echo)."""

    def __init__(
        self, speaker: PhoneSpeaker, script: list[Say], echo_gain: float, echo_delay: float
    ) -> None:
        super().__init__()
        self.speaker = speaker
        self.script = script
        self.echo_gain = echo_gain
        self.echo_delay = echo_delay
        self._task: asyncio.Task | None = None
        self.started_at = 0.0
        self.rate = speaker.rate
        self.frame_samples = self.rate // 50  # 20 ms

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        await self.push_frame(frame, direction)
        if isinstance(frame, StartFrame):
            self._task = self.create_task(self._feed())
        elif isinstance(frame, (EndFrame, CancelFrame)) and self._task:
            await self.cancel_task(self._task)
            self._task = None

    def _mix(self, t: float) -> np.ndarray:
        out = np.zeros(self.frame_samples, dtype=np.float32)
        for say in self.script:
            base = self.started_at if say.anchor == "call" else self.speaker.first_audio_at
            if base is None:
                continue
            i = int(round((t - base - say.offset) * self.rate))
            if i + self.frame_samples <= 0 or i >= say.pcm.size:
                continue
            lo, hi = max(i, 0), min(i + self.frame_samples, say.pcm.size)
            out[lo - i : hi - i] += say.gain * say.pcm[lo:hi].astype(np.float32)
        if self.echo_gain:
            out += self.echo_gain * self.speaker.played(t - self.echo_delay, self.frame_samples)
        return out

    async def _feed(self) -> None:
        self.started_at = time.monotonic()
        k = 0
        while True:
            k += 1
            due = self.started_at + k * self.frame_samples / self.rate
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            mixed = self._mix(due - self.frame_samples / self.rate)
            pcm = np.clip(mixed, -32768, 32767).astype(np.int16)
            await self.push_frame(InputAudioRawFrame(pcm.tobytes(), self.rate, 1))


@dataclass
class LoopbackPhone:
    """A transport: ``input()`` is the caller's microphone, ``output()`` the earpiece."""

    script: list[Say] = field(default_factory=list)
    echo_gain: float = 0.0
    echo_delay: float = 0.12

    sample_rate: int = 8000

    def __post_init__(self) -> None:
        self.speaker = PhoneSpeaker(self.sample_rate)
        self.mic = PhoneMicrophone(self.speaker, self.script, self.echo_gain, self.echo_delay)

    def input(self) -> FrameProcessor:
        """The caller's microphone (first processor of the pipeline)."""
        return self.mic

    def output(self) -> FrameProcessor:
        """The caller's earpiece (the output transport)."""
        return self.speaker
