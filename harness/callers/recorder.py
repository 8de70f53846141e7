"""Two-sided call recording on the call clock: left = caller, right = bot (what the caller heard)."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

from harness.callers.twilio_messages import FRAME_BYTES
from stepcall.audio.mulaw import ulaw_to_pcm16

RATE = 8000


class StereoRecording:
    """A call recording, one caller frame and one bot frame per tick: its tick count and WAV."""

    rate: int
    _caller: list

    @property
    def ticks(self) -> int:
        return len(self._caller)

    def stereo_pcm16(self) -> np.ndarray:
        """The recording as an int16 array of shape (samples, 2)."""
        raise NotImplementedError

    def write_wav(self, path: str | Path) -> Path:
        """Write the stereo PCM16 WAV at :attr:`rate` and return its path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with wave.open(str(path), "wb") as w:
            w.setnchannels(2)
            w.setsampwidth(2)
            w.setframerate(self.rate)
            w.writeframes(self.stereo_pcm16().astype("<i2").tobytes())
        return path


class CallRecorder(StereoRecording):
    """Collects 20 ms mu-law frames per tick of the call clock and writes a stereo PCM16 WAV
    at 8 kHz.

    Tick ``i`` covers samples ``[160*i, 160*(i+1))`` on both channels, so the caller's audio
    and the bot's played-out audio are aligned exactly as on the phone line.
    """

    rate = RATE

    def __init__(self) -> None:
        self._caller: list[bytes] = []
        self._bot: list[bytes] = []

    def add_tick(self, caller_frame: bytes, bot_frame: bytes) -> None:
        """Record one 20 ms tick; each frame must be 160 mu-law bytes."""
        for side, frame in (("caller", caller_frame), ("bot", bot_frame)):
            if len(frame) != FRAME_BYTES:
                raise ValueError(f"{side} frame must be {FRAME_BYTES} bytes, got {len(frame)}")
        self._caller.append(bytes(caller_frame))
        self._bot.append(bytes(bot_frame))

    def stereo_pcm16(self) -> np.ndarray:
        """The recording as an int16 array of shape (samples, 2)."""
        left = ulaw_to_pcm16(b"".join(self._caller))
        right = ulaw_to_pcm16(b"".join(self._bot))
        return np.stack([left, right], axis=1)


class PcmCallRecorder(StereoRecording):
    """Stereo call recording from int16 PCM ticks at any rate (the WebRTC caller uses 16 kHz).

    Like :class:`CallRecorder`, tick ``i`` holds the caller's frame on the left and the bot
    audio the caller heard during that tick on the right, so both sides share the call clock.
    """

    def __init__(self, rate: int, frame_samples: int) -> None:
        if rate <= 0 or frame_samples <= 0:
            raise ValueError("PcmCallRecorder needs a positive rate and frame size")
        self.rate = rate
        self.frame_samples = frame_samples
        self._caller: list[np.ndarray] = []
        self._bot: list[np.ndarray] = []

    def add_tick(self, caller_frame: np.ndarray, bot_frame: np.ndarray) -> None:
        """Record one tick; both frames must be ``frame_samples`` int16 samples."""
        for side, frame in (("caller", caller_frame), ("bot", bot_frame)):
            if frame.shape != (self.frame_samples,):
                raise ValueError(
                    f"{side} frame must be {self.frame_samples} samples, got {frame.shape}"
                )
        self._caller.append(caller_frame.astype(np.int16, copy=False))
        self._bot.append(bot_frame.astype(np.int16, copy=False))

    def stereo_pcm16(self) -> np.ndarray:
        """The recording as an int16 array of shape (samples, 2)."""
        if not self._caller:
            return np.zeros((0, 2), dtype=np.int16)
        return np.stack([np.concatenate(self._caller), np.concatenate(self._bot)], axis=1)
