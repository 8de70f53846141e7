"""Echo safety for speakerphone callers: the bot's own voice coming back must not barge in.

Three pieces share one :class:`EchoReference`:

- :class:`BotAudioTap` sits right after the output transport. The transport pushes each audio
  frame downstream once it has written it, so the tap sees the bot's audio at play time and
  records it on a sample clock.
- :class:`EchoGuard` sits right after the input transport (before VAD). While the bot has been
  heard in the last ``max_delay_secs``, it compares each caller frame's recent window, ending
  when the frame came (``CallerAudioFrame.captured_at``), with the played audio delayed by
  0..``max_delay_secs`` (normalized cross-correlation, via FFT). A
  window that is mostly the bot's echo (NCC >= ``threshold``) reaches VAD and the model as
  silence. A caller really talking over the bot adds energy the bot's audio does not explain, so
  the correlation drops and the frame passes: barge-in still works on a speakerphone. An echo is
  also never much louder than what the bot played (``max_echo_gain_db``): a caller's word that
  happens to resemble the bot's audio at some lag, but is far louder, is the caller.
- :class:`EchoDetector` is the numeric part (no Pipecat), unit-testable on its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from loguru import logger
from pipecat.audio.utils import audioop
from pipecat.frames.frames import Frame, InputAudioRawFrame, OutputAudioRawFrame
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from pipeline.call_audio.caller_frame import captured_at


class EchoReference:
    """The bot's played audio on a sample clock (the last ``keep_secs``)."""

    #: Gaps between chunks shorter than this are scheduling jitter, not silence: the chunks are
    #: kept back to back (zeros there would break the waveform the detector correlates with).
    JITTER_SECS = 0.08

    def __init__(self, sample_rate: int, keep_secs: float = 2.0) -> None:
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        self.sample_rate = sample_rate
        self._keep = int(keep_secs * sample_rate)
        # the last ``_count`` samples played, in a ring (no copy of the whole buffer per chunk)
        self._ring = np.zeros(self._keep, dtype=np.float32)
        self._head = 0  # ring index of the next sample
        self._count = 0
        self._end_time: float | None = None  # monotonic time of the sample after the last one

    @property
    def last_played_at(self) -> float | None:
        """Monotonic time at which the last recorded bot sample was played."""
        return self._end_time

    def record(self, pcm16: bytes, sample_rate: int, played_at: float | None = None) -> None:
        """Add bot audio that finished playing at ``played_at`` (monotonic; now by default)."""
        if sample_rate != self.sample_rate or not pcm16:
            return
        now = time.monotonic() if played_at is None else played_at
        x = np.frombuffer(pcm16, dtype=np.int16)
        start = now - x.size / self.sample_rate
        if self._end_time is not None:
            gap_secs = start - self._end_time
            gap = int(round(gap_secs * self.sample_rate))
            if gap >= self._keep:
                self._count = 0
            elif gap_secs > self.JITTER_SECS:  # real silence between responses
                self._append(None, gap)
        self._append(x, x.size)
        self._end_time = max(now, self._end_time or now)

    def _append(self, x: np.ndarray | None, n: int) -> None:
        """Append ``x`` (PCM16; None: ``n`` zeros) to the ring."""
        keep = self._keep
        if n >= keep:
            self._ring[:] = 0.0 if x is None else x[-keep:]
            self._head, self._count = 0, keep
            return
        end = self._head + n
        first = min(end, keep) - self._head
        self._ring[self._head : self._head + first] = 0.0 if x is None else x[:first]
        if first < n:
            self._ring[: n - first] = 0.0 if x is None else x[first:]
        self._head = end % keep
        self._count = min(keep, self._count + n)

    def window(self, end_time: float, secs: float) -> np.ndarray:
        """The ``secs`` of bot audio played up to ``end_time`` (zeros where nothing played)."""
        n = int(round(secs * self.sample_rate))
        out = np.zeros(n, dtype=np.float32)
        if self._end_time is None or self._count == 0:
            return out
        # index (0 = oldest sample held) of the sample played at end_time
        end_idx = self._count - int(round((self._end_time - end_time) * self.sample_rate))
        lo = end_idx - n
        src_lo, src_hi = max(lo, 0), min(end_idx, self._count)
        if src_hi <= src_lo:
            return out
        keep = self._keep
        ring_lo = (self._head - self._count + src_lo) % keep
        length = src_hi - src_lo
        first = min(length, keep - ring_lo)
        out[src_lo - lo : src_lo - lo + first] = self._ring[ring_lo : ring_lo + first]
        if first < length:
            out[src_lo - lo + first : src_hi - lo] = self._ring[: length - first]
        return out


@dataclass
class EchoVerdict:
    """What :meth:`EchoDetector.check` found for one input window."""

    is_echo: bool
    ncc: float
    delay_ms: float


class EchoDetector:
    """Is the caller's recent audio the bot's own audio, delayed by 0..max_delay?"""

    def __init__(
        self,
        reference: EchoReference,
        *,
        max_delay_secs: float = 0.5,
        window_secs: float = 0.2,
        threshold: float = 0.6,
        min_rms: float = 60.0,
        min_ref_rms: float = 30.0,
        decimate: int = 2,
        max_echo_gain_db: float = 10.0,
    ) -> None:
        """``max_echo_gain_db``: the loudest an echo can be relative to the bot's played audio
        (a phone's acoustic path and gain stages do not amplify the far end by more; typical
        line and handset echo is 10-30 dB weaker). Lags that would need a louder echo to explain
        the input are not considered.

        ``decimate``: correlate at the sample rate divided by this (pairs of samples
        averaged): a voice's echo on a phone line is mostly under 2 kHz, and the FFTs of a 4 kHz
        correlation cost less than half of an 8 kHz one's."""
        if decimate < 1:
            raise ValueError(f"decimate must be >= 1, got {decimate}")
        self.reference = reference
        self.max_delay_secs = max_delay_secs
        self.window_secs = window_secs
        self.threshold = threshold
        self.min_rms = min_rms
        self.min_ref_rms = min_ref_rms
        self.decimate = decimate
        self.max_echo_power = 10 ** (max_echo_gain_db / 10)
        rate = reference.sample_rate / decimate
        self._nfft = 1 << int(np.ceil(np.log2((2 * window_secs + max_delay_secs) * rate + 1)))

    def bot_recently_heard(self, now: float) -> bool:
        """True while an echo of the bot's audio can still arrive."""
        last = self.reference.last_played_at
        return last is not None and now - last <= self.max_delay_secs + self.window_secs

    def check(self, x: np.ndarray, now: float) -> EchoVerdict:
        """``x``: the caller's last ``window_secs`` of audio (float, PCM16 scale) ending at ``now``."""
        if x.size == 0 or float(np.dot(x, x)) < x.size * self.min_rms**2:
            return EchoVerdict(False, 0.0, 0.0)
        ref = self.reference.window(now, self.max_delay_secs + x.size / self.reference.sample_rate)
        ref_energy = ref * ref
        if float(ref_energy.sum()) <= 0.0:
            return EchoVerdict(False, 0.0, 0.0)
        if self.decimate > 1:
            x, ref = _decimated(x, self.decimate), _decimated(ref, self.decimate)
            ref_energy = ref * ref
        n = x.size
        # corr[k] = sum_i x[i] * ref[k + i]; lag k = len(ref) - n - k' samples of delay
        X = np.fft.rfft(x[::-1], self._nfft)
        R = np.fft.rfft(ref, self._nfft)
        full = np.fft.irfft(X * R, self._nfft)[n - 1 : ref.size]  # k = 0 .. len(ref) - n
        csum = np.concatenate([[0.0], np.cumsum(ref_energy, dtype=np.float64)])
        seg_energy = csum[n:] - csum[:-n]  # energy of ref[k : k + n]
        x_energy = float(np.dot(x, x))
        norm = np.sqrt(np.maximum(seg_energy, 0.0) * x_energy) + 1e-9
        ncc = full[: seg_energy.size] / norm
        # lags where the bot was (nearly) silent cannot explain audible input: an echo of
        # silence is silence (and the ratio there is only floating-point noise); nor can lags
        # where the bot was so much quieter than the input that the echo would be amplified
        ncc[
            (seg_energy < n * self.min_ref_rms**2)
            | (seg_energy * self.max_echo_power < x_energy)
        ] = 0.0
        k = int(np.argmax(ncc))
        delay = (ref.size - n - k) * self.decimate / self.reference.sample_rate
        best = float(ncc[k])
        return EchoVerdict(best >= self.threshold, best, delay * 1000.0)


#: The verdict on input too quiet to be an echo or a barge-in.
QUIET_VERDICT = EchoVerdict(False, 0.0, 0.0)


def _decimated(x: np.ndarray, factor: int) -> np.ndarray:
    """``x`` at a ``factor`` times lower rate (groups averaged), its last sample kept aligned."""
    x = x[x.size % factor :]
    return x.reshape(-1, factor).mean(axis=1, dtype=np.float32)


class BotAudioTap(FrameProcessor):
    """After the output transport: records the bot's audio as it is played, and ends its trip.

    The output transport pushes every chunk it has written downstream (25 a second while the
    bot talks); nothing after this tap uses them (the assistant aggregator builds the context
    from text, call recordings take the transport's own push), so the tap drops them instead of
    paying two more queue hops per chunk. ``forward_audio=True`` passes them on.
    """

    def __init__(
        self,
        reference: EchoReference,
        *,
        forward_audio: bool = False,
        play_clock: Callable[[], float] | None = None,
        **kwargs,
    ) -> None:
        """``play_clock``: when the caller will have heard the chunk just written (monotonic),
        for a transport that sends audio ahead of playout; None: as it is written."""
        kwargs.setdefault("enable_direct_mode", True)  # a few µs per frame: no queue and task
        super().__init__(**kwargs)
        self.reference = reference
        self.forward_audio = forward_audio
        self.play_clock = play_clock

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Record played audio; pass every other frame on."""
        await super().process_frame(frame, direction)
        if isinstance(frame, OutputAudioRawFrame) and direction == FrameDirection.DOWNSTREAM:
            played_at = self.play_clock() if self.play_clock is not None else None
            self.reference.record(frame.audio, frame.sample_rate, played_at or None)
            if not self.forward_audio:
                return
        await self.push_frame(frame, direction)


class EchoGuard(FrameProcessor):
    """Before VAD: replaces caller frames that are the bot's own echo with silence."""

    #: A fresh correlation at most every this many seconds of input; frames in between reuse
    #: the last verdict (the 200 ms window moves little in 20 ms; this halves the FFT work).
    CHECK_HOP_SECS = 0.04

    def __init__(
        self, detector: EchoDetector, *, call_id: str = "", enabled: bool = True, **kwargs
    ) -> None:
        kwargs.setdefault("enable_direct_mode", True)  # ~20 µs per frame: no queue and task
        super().__init__(**kwargs)
        self.detector = detector
        self.enabled = enabled
        self.frames_silenced = 0
        self.checks = 0
        self._hist = bytearray()  # the caller's last window_secs, PCM16
        self._keep = int(detector.window_secs * detector.reference.sample_rate)
        self._hop = int(self.CHECK_HOP_SECS * detector.reference.sample_rate)
        self._since_check = 0
        self._last: EchoVerdict | None = None
        self._log = logger.bind(call_id=call_id)
        self._in_echo = False

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Silence echo frames; everything else passes unchanged."""
        await super().process_frame(frame, direction)
        if (
            self.enabled
            and isinstance(frame, InputAudioRawFrame)
            and frame.sample_rate == self.detector.reference.sample_rate
            and frame.num_channels == 1
        ):
            frame = self._filter(frame)
        await self.push_frame(frame, direction)

    def _filter(self, frame: InputAudioRawFrame) -> InputAudioRawFrame:
        self._hist += frame.audio  # raw PCM16: converted only when a correlation is due
        if len(self._hist) > 2 * self._keep:
            del self._hist[: len(self._hist) - 2 * self._keep]
        # when the caller's audio came, not when it is seen (a read pause hands it over late)
        now = captured_at(frame)
        if not self.detector.bot_recently_heard(now) or len(self._hist) < 2 * self._keep:
            self._set_echo(False, None)
            self._last = None
            return frame
        self._since_check += len(frame.audio) // 2
        verdict = self._last
        if verdict is None or self._since_check >= self._hop:
            if audioop.rms(self._hist, 2) + 1 < self.detector.min_rms:
                # too quiet for the detector to look at (its own first test), told from the
                # bytes: the usual case while the bot talks and the caller listens
                verdict = QUIET_VERDICT
            else:
                x = np.frombuffer(self._hist, dtype=np.int16).astype(np.float32)
                verdict = self.detector.check(x, now)
                self.checks += 1
            self._since_check = 0
            self._last = verdict
        self._set_echo(verdict.is_echo, verdict)
        if not verdict.is_echo:
            return frame
        self.frames_silenced += 1
        silent = InputAudioRawFrame(
            audio=bytes(len(frame.audio)),
            sample_rate=frame.sample_rate,
            num_channels=frame.num_channels,
        )
        silent.transport_source = frame.transport_source
        return silent

    def _set_echo(self, on: bool, verdict: EchoVerdict | None) -> None:
        if on != self._in_echo:
            self._in_echo = on
            if on and verdict is not None:
                self._log.debug(
                    f"echo of the bot's audio (ncc {verdict.ncc:.2f}, delay "
                    f"{verdict.delay_ms:.0f} ms): muting it before VAD"
                )
