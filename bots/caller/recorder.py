"""Two-sided call recording on the call clock: left = caller, right = bot (what the caller heard)."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

from bots.caller.mulaw import ulaw_to_pcm16
from bots.caller.twilio_messages import FRAME_BYTES

RATE = 8000


class CallRecorder:
    """Collects 20 ms mu-law frames per tick of the call clock and writes a stereo PCM16 WAV.

    Tick ``i`` covers samples ``[160*i, 160*(i+1))`` on both channels, so the caller's audio
    and the bot's played-out audio are aligned exactly as on the phone line.
    """

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

    @property
    def ticks(self) -> int:
        return len(self._caller)

    def stereo_pcm16(self) -> np.ndarray:
        """The recording as an int16 array of shape (samples, 2)."""
        left = ulaw_to_pcm16(b"".join(self._caller))
        right = ulaw_to_pcm16(b"".join(self._bot))
        return np.stack([left, right], axis=1)

    def write_wav(self, path: str | Path) -> Path:
        """Write the 8 kHz stereo PCM16 WAV and return its path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with wave.open(str(path), "wb") as w:
            w.setnchannels(2)
            w.setsampwidth(2)
            w.setframerate(RATE)
            w.writeframes(self.stereo_pcm16().astype("<i2").tobytes())
        return path
