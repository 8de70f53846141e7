"""LoopbackPhone: a caller's phone in the same process, for tests and benchmarks of a call pipeline.

It stands where Twilio and the handset would be. ``input()`` is the caller's microphone: it plays
a script of utterances (:class:`Say`, anchored to the call start or to the bot's first audio) into
the pipeline as 20 ms ``CallerAudioFrame``s in real time, optionally with the bot's own audio
fed back (a speakerphone echo at ``echo_gain`` after ``echo_delay``). ``output()`` is the earpiece:
a real ``BaseOutputTransport`` that "plays" the bot's audio at real-time pace and remembers what
it played and when.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    Frame,
    OutputAudioRawFrame,
    StartFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.transports.base_output import BaseOutputTransport
from pipecat.transports.base_transport import TransportParams

from pipeline.caller_audio_frame import CallerAudioFrame


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
        #: CPU time spent remembering what was played (benchmarks leave it out).
        self.own_cpu_secs = 0.0

    async def start(self, frame: StartFrame) -> None:
        await super().start(frame)
        await self.set_transport_ready(frame)

    async def write_audio_frame(self, frame: OutputAudioRawFrame) -> bool:
        cpu0 = time.thread_time()
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
        self.own_cpu_secs += time.thread_time() - cpu0
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
    """The caller's microphone: 20 ms frames in real time of the script (+ speakerphone echo).

    Frames are :class:`CallerAudioFrame`s, as the Twilio input delivers; with
    :meth:`coalesce_while`, pairs of them go down as one 40 ms frame while the call's VAD says so
    (``EndpointVADAnalyzer.steady``), as the Twilio input does. The utterances anchored to the call start are mixed once,
    when the call starts; those anchored to the bot's first audio and the echo are mixed as the
    frames are made. ``own_cpu_secs``: the CPU time the microphone spent making its frames
    (benchmarks leave it out of the bot's share).
    """

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
        self._steady: Callable[[], bool] | None = None
        self._track = np.zeros(0, dtype=np.int16)
        self.own_cpu_secs = 0.0
        #: Frames pushed / of them, pairs pushed as one.
        self.frames_pushed = 0
        self.frames_coalesced = 0

    def coalesce_while(self, steady: Callable[[], bool] | None) -> None:
        """Push pairs of 20 ms frames as one while ``steady()`` is true (None: never)."""
        self._steady = steady

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        await self.push_frame(frame, direction)
        if isinstance(frame, StartFrame):
            self._task = self.create_task(self._feed())
        elif isinstance(frame, (EndFrame, CancelFrame)) and self._task:
            await self.cancel_task(self._task)
            self._task = None

    def _mix_call_track(self) -> np.ndarray:
        """The utterances anchored to the call start, mixed on one int16 track."""
        says = [say for say in self.script if say.anchor == "call"]
        starts = [int(round(say.offset * self.rate)) for say in says]
        n = max([0] + [i + say.pcm.size for i, say in zip(starts, says, strict=True)])
        track = np.zeros(n, dtype=np.float32)
        for i, say in zip(starts, says, strict=True):
            lo = max(i, 0)
            if i + say.pcm.size <= 0:
                continue
            track[lo : i + say.pcm.size] += say.gain * say.pcm[lo - i :].astype(np.float32)
        return np.clip(track, -32768, 32767).astype(np.int16)

    def _live(self, t: float) -> np.ndarray | None:
        """The bot-anchored utterances and the echo for the frame starting at ``t``, if any."""
        out = None
        for say in self.script:
            base = self.speaker.first_audio_at if say.anchor != "call" else None
            if base is None:
                continue
            i = int(round((t - base - say.offset) * self.rate))
            if i + self.frame_samples <= 0 or i >= say.pcm.size:
                continue
            if out is None:
                out = np.zeros(self.frame_samples, dtype=np.float32)
            lo, hi = max(i, 0), min(i + self.frame_samples, say.pcm.size)
            out[lo - i : hi - i] += say.gain * say.pcm[lo:hi].astype(np.float32)
        if self.echo_gain:
            echo = self.echo_gain * self.speaker.played(t - self.echo_delay, self.frame_samples)
            out = echo if out is None else out + echo
        return out

    def _frame_pcm(self, k: int, t: float) -> bytes:
        """PCM16 of the ``k``-th 20 ms frame (from 0), which starts at ``t``."""
        n = self.frame_samples
        base = self._track[k * n : (k + 1) * n]
        live = self._live(t)
        if live is None:
            if base.size == n:
                return base.tobytes()
            return base.tobytes() + bytes(2 * (n - base.size))
        if base.size:
            live[: base.size] += base
        return np.clip(live, -32768, 32767).astype(np.int16).tobytes()

    async def _feed(self) -> None:
        self.started_at = time.monotonic()
        cpu0 = time.thread_time()
        self._track = self._mix_call_track()
        self.own_cpu_secs += time.thread_time() - cpu0
        held: bytes | None = None
        k = 0
        while True:
            k += 1
            due = self.started_at + k * self.frame_samples / self.rate
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            cpu0 = time.thread_time()
            pcm = self._frame_pcm(k - 1, due - self.frame_samples / self.rate)
            if held is not None:
                pcm, held = held + pcm, None
                self.frames_coalesced += 1
            elif self._steady is not None and self._steady():
                held = pcm  # its partner is due in one frame time
                self.own_cpu_secs += time.thread_time() - cpu0
                continue
            frame = CallerAudioFrame(audio=pcm, sample_rate=self.rate, num_channels=1)
            self.frames_pushed += 1
            self.own_cpu_secs += time.thread_time() - cpu0
            await self.push_frame(frame)


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

    @property
    def own_cpu_secs(self) -> float:
        """CPU time the phone itself spent (making the caller's frames, keeping the bot's)."""
        return self.mic.own_cpu_secs + self.speaker.own_cpu_secs
