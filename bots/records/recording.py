"""StereoRecorder: a call's audio as a stereo WAV (left: caller, right: bot), aligned in time.

Chunks are placed at the moment they were heard: the caller's audio as the input transport
delivers it, the bot's as the output transport writes it (so silences and barge-ins line up).
Audio at another sample rate than the recording's is resampled (linear; this is for listening
back, not for analysis). The file is written once, when the call ends.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

CALLER, BOT = 0, 1


class StereoRecorder:
    """Collects PCM16 mono chunks of both parties; :meth:`write_wav` saves them."""

    def __init__(self, sample_rate: int = 8000, max_secs: float = 4 * 3600) -> None:
        """Record at ``sample_rate``; audio beyond ``max_secs`` is dropped."""
        if sample_rate <= 0:
            raise ValueError(f"recording sample_rate must be > 0, got {sample_rate}")
        self.sample_rate = sample_rate
        self._max_samples = int(max_secs * sample_rate)
        self._channels: list[list[np.ndarray]] = [[], []]
        self._lengths = [0, 0]

    def add(self, channel: int, pcm: bytes, sample_rate: int, at_secs: float) -> None:
        """Add a chunk that *ended* ``at_secs`` after the call started (padded with silence)."""
        if channel not in (CALLER, BOT):
            raise ValueError(f"recording channel must be 0 (caller) or 1 (bot), got {channel}")
        samples = np.frombuffer(pcm, dtype=np.int16)
        if sample_rate != self.sample_rate and len(samples):
            n = max(1, round(len(samples) * self.sample_rate / sample_rate))
            x = np.linspace(0, len(samples) - 1, n)
            samples = np.interp(x, np.arange(len(samples)), samples).astype(np.int16)
        start = max(self._lengths[channel], round(at_secs * self.sample_rate) - len(samples))
        if start + len(samples) > self._max_samples:
            return
        gap = start - self._lengths[channel]
        if gap > 0:
            self._channels[channel].append(np.zeros(gap, dtype=np.int16))
        self._channels[channel].append(samples)
        self._lengths[channel] = start + len(samples)

    @property
    def duration_secs(self) -> float:
        """Length of the longer channel."""
        return max(self._lengths) / self.sample_rate

    def write_wav(self, path: str | Path) -> Path:
        """Write the stereo WAV (folders created); returns its path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        n = max(self._lengths)
        stereo = np.zeros((n, 2), dtype=np.int16)
        for ch in (CALLER, BOT):
            if self._channels[ch]:
                data = np.concatenate(self._channels[ch])
                stereo[: len(data), ch] = data
        with wave.open(str(path), "wb") as wav:
            wav.setnchannels(2)
            wav.setsampwidth(2)
            wav.setframerate(self.sample_rate)
            wav.writeframes(stereo.tobytes())
        return path
