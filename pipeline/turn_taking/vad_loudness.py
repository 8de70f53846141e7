"""LazyVADVolume: Pipecat's smoothed VAD volume, measured only for windows where it can matter.

Pipecat's VAD measures the loudness (ITU-R BS.1770) of the last 400 ms on every 32 ms window and
smooths it (``v <- v + 0.2 (loudness - v)``); speech needs ``volume >= min_volume``. The
measurement is a K-weighting filter over the 400 ms and cost about as much as Silero itself on a
call (~190 us a window after a 20 ms pause on a 2-core VM). While nobody speaks most windows are
far too quiet to pass, and that can be told without measuring them: K-weighting gains at most
4.3 dB at any frequency (``K_WEIGHTING_MAX_GAIN``; a filtered block cannot hold more energy than
that times the block's own), so the plain energy of the last 400 ms, from ``audioop.rms`` on each
window, bounds the loudness from above. When that bound, smoothed the same way, stays under
``min_volume``, the window is left unmeasured. When it does not, the windows left unmeasured are
measured first, back to back, oldest first (the smoothing needs every one), then the new one:
the same numbers as measuring every window as it came, as long as at most ``MAX_DEFERRED``
windows (2 s at 8 kHz) were left; after longer quiet the oldest are dropped, which changes the
smoothed value by at most 0.8^64 (~6e-7).
"""

from __future__ import annotations

import math
from collections import deque

from pipecat.audio.utils import audioop, calculate_audio_volume, exp_smoothing, normalize_value
from pipecat.audio.volume import VOLUME_WINDOW_SECS

#: The largest power gain of BS.1770's K-weighting at 8 and 16 kHz, with margin: measured
#: 2.69 (4.3 dB) over a sine sweep of the ``loudness`` package Pipecat uses; 4.0 is 6 dB.
K_WEIGHTING_MAX_GAIN = 4.0
#: Unmeasured windows kept for the catch-up; older ones are dropped (see the module text).
MAX_DEFERRED = 64
# Pipecat's loudness scale: -110..-10 LUFS normalised to 0..1 (calculate_audio_volume)
_LUFS_RANGE = (-110.0, -10.0)
_FULL_SCALE_SQ = 32768.0**2


class LazyVADVolume:
    """The smoothed volume of one VAD stream (a fixed sample rate and window size)."""

    def __init__(self, sample_rate: int, window_samples: int, smoothing: float = 0.2) -> None:
        if sample_rate <= 0 or window_samples <= 0:
            raise ValueError(f"bad stream: {sample_rate} Hz, {window_samples}-sample windows")
        self.sample_rate = sample_rate
        self.smoothing = smoothing
        self._volume_bytes = math.ceil(VOLUME_WINDOW_SECS * sample_rate) * 2
        self._window_bytes = window_samples * 2
        #: windows that cover the loudness block (at least its 400 ms), kept for measuring
        self._span = math.ceil(self._volume_bytes / self._window_bytes)
        self._recent: deque[bytes] = deque(maxlen=MAX_DEFERRED + self._span)
        self._energy: deque[float] = deque()  # upper bounds of each window's sum of squares
        self._energy_sum = 0.0
        self._seen_bytes = 0
        self._deferred = 0  # windows pushed but not measured
        self.smoothed = 0.0  # the smoothed volume after the last measured window
        self._upper = 0.0  # an upper bound of the smoothed volume after the last window
        #: Windows measured as they came / left unmeasured (tests, diagnostics).
        self.measured = 0
        self.deferred_total = 0

    def push(self, window: bytes) -> None:
        """The next window of the stream (``window_samples`` of 16-bit PCM)."""
        self._recent.append(window)
        self._seen_bytes += len(window)
        n = len(window) // 2
        bound = (audioop.rms(window, 2) + 1.0) ** 2 * n  # rms is rounded down
        self._energy.append(bound)
        self._energy_sum += bound
        if len(self._energy) > self._span:
            self._energy_sum -= self._energy.popleft()
        self._deferred += 1

    def _loudness_bound(self, energy: float) -> float:
        """Pipecat's normalised loudness of a 400 ms block whose plain sum of squares is at most
        ``energy`` (an upper bound: K-weighting gains at most ``K_WEIGHTING_MAX_GAIN``)."""
        mean_square = energy / (self._volume_bytes // 2) / _FULL_SCALE_SQ
        if mean_square <= 0.0:
            return 0.0
        lufs = -0.691 + 10.0 * math.log10(K_WEIGHTING_MAX_GAIN * mean_square)
        return normalize_value(lufs, *_LUFS_RANGE)

    def stays_below(self, threshold: float, energy: float) -> bool:
        """True when the smoothed volume stays under ``threshold`` after every window the stream
        may complete next from audio whose windows' energy bounds (see :meth:`push`) sum to at
        most ``energy``, whatever that audio is; nothing is pushed or measured here.

        Each such window's 400 ms block is made of windows already pushed (their bounds sum to
        at most the ones kept) and new ones, so its loudness is at most the bound of their sum;
        exponential smoothing stays between its old value and that bound.
        """
        if self._seen_bytes < self._volume_bytes:
            return False  # Pipecat's 0-until-400-ms start is not modelled here
        loud = self._loudness_bound(self._energy_sum + energy)
        return max(self._upper, loud) < threshold

    def certainly_below(self, threshold: float) -> bool:
        """True when the smoothed volume after the last pushed window is below ``threshold``
        whatever the measurement would say; the window then stays unmeasured (until
        :meth:`volume`). False when only measuring can tell (nothing is measured here)."""
        if self._seen_bytes < self._volume_bytes:
            return False  # Pipecat reads 0 until 400 ms have come: measuring is free
        loud = self._loudness_bound(self._energy_sum)
        upper = exp_smoothing(loud, self._upper, self.smoothing)
        if upper >= threshold:
            return False
        self._upper = upper
        self.deferred_total += 1
        return True

    def volume(self) -> float:
        """The smoothed volume after the last pushed window (Pipecat's ``_get_smoothed_volume``),
        measuring the windows left unmeasured first."""
        count = min(self._deferred - 1, MAX_DEFERRED) + 1  # the unmeasured ones and the last
        audio = b"".join(list(self._recent)[-(count - 1 + self._span) :])
        smoothed = self.smoothed
        for k in range(count - 1, -1, -1):  # oldest first; k windows after it remain
            end = len(audio) - k * self._window_bytes
            if self._seen_bytes - k * self._window_bytes < self._volume_bytes:
                loud = 0.0  # as Pipecat's tracker: 0 until 400 ms have come
            else:
                loud = calculate_audio_volume(audio[end - self._volume_bytes : end], self.sample_rate)
            smoothed = exp_smoothing(loud, smoothed, self.smoothing)
        self.smoothed = smoothed
        self._upper = self.smoothed
        self._deferred = 0
        self.measured += 1
        return self.smoothed
