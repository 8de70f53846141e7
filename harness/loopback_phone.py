"""LoopbackPhone: a caller's phone in the same process, for tests and benchmarks of a call pipeline.

It stands where Twilio and the handset would be. ``input()`` is the caller's microphone: it plays
a script of utterances (:class:`Say`, anchored to the call start or to the bot's first audio) into
the pipeline as 20 ms ``CallerAudioFrame``s in real time, optionally with the bot's own audio
fed back (a speakerphone echo at ``echo_gain`` after ``echo_delay``) and line noise
(``noise_dbfs``). ``output()`` is the earpiece:
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

from pipeline.call_audio.batcher import (
    HOLD_SECS,
    BatchingInput,
    CallerAudioBatcher,
    QuietTest,
    SpeechHoldTest,
)
from pipeline.call_audio.caller_frame import CallerAudioFrame


@dataclass
class Say:
    """Caller speech: ``pcm`` starts ``offset`` s after the anchor ("call" or "bot" start)."""

    pcm: np.ndarray
    offset: float
    anchor: str = "call"
    gain: float = 1.0


class PhoneSpeaker(BaseOutputTransport):
    """The caller's earpiece: plays the bot's audio at real-time pace and remembers it."""

    def __init__(self, sample_rate: int = 8000, out_10ms_chunks: int = 4) -> None:
        """``out_10ms_chunks``: the bot's audio is written in chunks of this many 10 ms
        (Pipecat's default 4; the Twilio call sends 10:
        ``bots.call.PHONE_AUDIO_OUT_10MS_CHUNKS``)."""
        super().__init__(
            TransportParams(
                audio_out_enabled=True,
                audio_out_sample_rate=sample_rate,
                audio_out_end_silence_secs=0,
                audio_out_10ms_chunks=out_10ms_chunks,
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


class PhoneMicrophone(BatchingInput, FrameProcessor):
    """The caller's microphone: 20 ms frames in real time of the script (+ speakerphone echo).

    Frames are :class:`CallerAudioFrame`s, as the Twilio input delivers; with
    :meth:`coalesce_while` they go down together by the Twilio input's rules
    (:class:`~pipeline.call_audio.batcher.CallerAudioBatcher`: quiet holds, pairs). The
    utterances anchored to the call start are mixed once, when the call starts; those anchored to
    the bot's first audio, the echo and the line noise are mixed as the frames are made.
    ``own_cpu_secs``: the CPU time the microphone spent making its frames (benchmarks leave it
    out of the bot's share; what the batching costs is the bot's, as on the Twilio input).
    """

    def __init__(
        self,
        speaker: PhoneSpeaker,
        script: list[Say],
        echo_gain: float,
        echo_delay: float,
        noise_dbfs: float | None = None,
    ) -> None:
        super().__init__()
        self.speaker = speaker
        self.script = script
        self.echo_gain = echo_gain
        self.echo_delay = echo_delay
        #: The line's own noise (white, ``noise_dbfs`` RMS; None: digital silence between words).
        self.noise_dbfs = noise_dbfs
        self._noise: np.ndarray | None = None
        self._task: asyncio.Task | None = None
        self.started_at = 0.0
        self.rate = speaker.rate
        self.frame_samples = self.rate // 50  # 20 ms
        self._batcher: CallerAudioBatcher | None = None
        self._track = np.zeros(0, dtype=np.int16)
        self.own_cpu_secs = 0.0
        #: Frames pushed (tests, benchmarks).
        self.frames_pushed = 0

    def coalesce_while(
        self,
        steady: Callable[[], bool] | None,
        *,
        quiet: QuietTest | None = None,
        hold_secs: float = HOLD_SECS,
        pause_reading: Callable[[], float] | None = None,
        speech: SpeechHoldTest | None = None,
    ) -> None:
        """Send frames together as the Twilio input does: pairs while ``steady()`` is true,
        quiet holds while ``quiet`` allows, speech holds while ``speech`` allows (all None:
        every frame on its own); while a hold fills, for at most ``pause_reading()`` seconds,
        the frames are taken as an unread socket would hand them over: the phone is not woken
        for them, and takes them all at once when the pause ends (each stamped with the time
        it was due, as the Twilio input stamps them with the time they came)."""
        self._use_batching(self.rate, steady, quiet, hold_secs, 0.02, pause_reading, speech)

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, EndFrame) and self._batcher is not None:
            waiting = self._batcher.take()  # the audio waiting goes down before the end
            if waiting is not None:
                self.frames_pushed += 1
                await self.push_frame(
                    CallerAudioFrame(audio=waiting, sample_rate=self.rate, num_channels=1)
                )
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
        if self._noise is not None:
            i = (k * n) % self._noise.size
            noise = self._noise[i : i + n]
            live = noise.copy() if live is None else live + noise
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
        if self.noise_dbfs is not None:  # 10 s of seeded noise, looped (a whole number of frames)
            rms = 32768.0 * 10.0 ** (self.noise_dbfs / 20.0)
            rng = np.random.default_rng(7)
            self._noise = (rms * rng.standard_normal(10 * self.rate)).astype(np.float32)
        self.own_cpu_secs += time.thread_time() - cpu0
        k = 0
        while True:
            k += 1
            due = self.started_at + k * self.frame_samples / self.rate
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            cpu0 = time.thread_time()
            pcm = self._frame_pcm(k - 1, due - self.frame_samples / self.rate)
            self.own_cpu_secs += time.thread_time() - cpu0
            # what the input decides and pushes is the bot's work (the Twilio input does it)
            if self._batcher is not None:
                out = self._batcher.offer(pcm)
                if out is None:
                    pause = self.read_pause_secs()
                    if pause > 0:  # the frames due meanwhile are then overdue: no wake-ups
                        self._count_read_pause(pause)
                        await asyncio.sleep(pause)
                    continue
                pcm = out
            self.frames_pushed += 1
            # overdue after a read pause: the frame came at ``due``, not now
            frame = CallerAudioFrame(
                audio=pcm, sample_rate=self.rate, num_channels=1, captured_at=due
            )
            await self.push_frame(frame)


@dataclass
class LoopbackPhone:
    """A transport: ``input()`` is the caller's microphone, ``output()`` the earpiece."""

    script: list[Say] = field(default_factory=list)
    echo_gain: float = 0.0
    echo_delay: float = 0.12
    #: The caller's line noise, dBFS RMS (None: digital silence between the words).
    noise_dbfs: float | None = None

    sample_rate: int = 8000
    #: The bot's audio is written in chunks of this many 10 ms (Pipecat's default: 4).
    out_10ms_chunks: int = 4

    def __post_init__(self) -> None:
        self.speaker = PhoneSpeaker(self.sample_rate, self.out_10ms_chunks)
        self.mic = PhoneMicrophone(
            self.speaker, self.script, self.echo_gain, self.echo_delay, self.noise_dbfs
        )

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
