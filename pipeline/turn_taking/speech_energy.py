"""SpeechEnergyTracker: where the caller's speech energy last stood above the silence level.

Silero VAD keeps reporting speech for ~60–130 ms after a phrase really ends (its recurrent state
lingers over the decaying tail), so a stop timer started from Silero alone waits that much longer
than configured. The energy of the audio shows the end more sharply: this tracker measures short
sub-frames (8 ms) and remembers the end of the last one louder than an adaptive threshold,
``max(noise floor + noise_margin_db, recent speech peak - drop_db)``, so the stop timer can count
silence from the acoustic end of speech (see :class:`pipeline.turn_taking.endpoint_vad.EndpointVADAnalyzer`).

Levels are in dB of int16 RMS (``10 log10(rms² + 1)`` with audioop's integer RMS: 0 dB is digital
silence, a loud voice is ~70–80 dB). Each sub-frame is judged against the noise floor and
peak as they stood after it, and again after the next one (the sub-frame where a sound ends is
loud against the floor the silence shows), so the result is the same however the stream comes
in buffers (a phone input's 20 ms frames, 40 ms pairs or a 200 ms quiet hold). Cheap: one C
call per sub-frame, no NumPy.
"""

from __future__ import annotations

import audioop
import math
from collections import deque

SUBFRAME_SECS = 0.008
#: Speech ends where the level falls this far below the recent speech peak ...
DROP_DB = 30.0
#: ... but never below this margin above the noise floor.
NOISE_MARGIN_DB = 10.0
#: The speech peak is the loudest sub-frame of the last this many seconds.
PEAK_SECS = 2.0
#: The noise floor follows quieter audio at once and rises at most this fast.
NOISE_RISE_DB_PER_SEC = 3.0


class SpeechEnergyTracker:
    """Sub-frame levels of one audio stream and the end of its last loud sub-frame (in samples)."""

    def __init__(
        self,
        sample_rate: int,
        *,
        drop_db: float = DROP_DB,
        noise_margin_db: float = NOISE_MARGIN_DB,
        peak_secs: float = PEAK_SECS,
    ) -> None:
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be > 0, got {sample_rate}")
        self.sample_rate = sample_rate
        self._n = max(1, round(SUBFRAME_SECS * sample_rate))
        self._drop_db = drop_db
        self._margin_db = noise_margin_db
        self._peak_samples = int(peak_secs * sample_rate)
        self._rest = bytearray()
        self._peaks: deque[tuple[int, float]] = deque()  # (end sample, dB) of falling levels
        self._noise_db: float | None = None
        self._prev_db = 0.0  # the last sub-frame's level
        #: Samples measured so far (whole sub-frames).
        self.samples = 0
        #: Sample index just after the last sub-frame above the threshold.
        self.last_loud_end = 0

    @property
    def quiet_secs(self) -> float:
        """Seconds since the end of the last loud sub-frame."""
        return (self.samples - self.last_loud_end) / self.sample_rate

    @property
    def noise_db(self) -> float:
        """Current noise-floor estimate (0 before any audio)."""
        return self._noise_db or 0.0

    def threshold_db(self) -> float:
        """The level a sub-frame must exceed to count as speech."""
        peak = self._peaks[0][1] if self._peaks else 0.0
        return max(self.noise_db + self._margin_db, peak - self._drop_db)

    def update(self, audio: bytes) -> None:
        """Measure ``audio`` (16-bit mono PCM) and move ``last_loud_end`` if it holds speech."""
        rest = self._rest
        rest += audio
        n, size = self._n, 2 * self._n
        k = len(rest) // size
        if k == 0:
            return
        # audioop's RMS is C on the bytes (integer result): ~no cost against NumPy's ~5 calls
        # per buffer, each several µs on a call's cold caches (20 ms between buffers)
        db = [
            10.0 * math.log10(audioop.rms(rest[i : i + size], 2) ** 2 + 1.0)
            for i in range(0, k * size, size)
        ]
        del rest[: k * size]
        # level by level, so the result is the same however the audio came in buffers
        rise = NOISE_RISE_DB_PER_SEC * n / self.sample_rate
        noise, peaks, margin, drop = self._noise_db, self._peaks, self._margin_db, self._drop_db
        prev, end = self._prev_db, self.samples
        for level in db:
            end += n
            noise = level if noise is None else min(level, noise + rise)
            # sliding maximum: the deque's levels decrease from its head, which is the peak
            while peaks and peaks[-1][1] <= level:
                peaks.pop()
            peaks.append((end, level))
            while peaks[0][0] < end - self._peak_samples:
                peaks.popleft()
            threshold = max(noise + margin, peaks[0][1] - drop)
            if level > threshold:
                self.last_loud_end = end
            elif prev > threshold and self.last_loud_end < end - n:
                # judged again one sub-frame later: the one straddling the end of a sound is
                # loud against the floor the silence after it shows
                self.last_loud_end = end - n
            prev = level
        self._noise_db, self._prev_db = noise, prev
        self.samples = end
