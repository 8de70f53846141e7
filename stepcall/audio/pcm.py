"""PCM16 conversions: the wire's little-endian PCM16 bytes and int16 sample arrays.

The protocol's audio (``stepcall/PROTOCOL.md``) is little-endian PCM16 mono; the model side
works in float32. Mu-law, the phone line's codec, is :mod:`stepcall.audio.mulaw`.
"""

from __future__ import annotations

import numpy as np


def pcm16_to_float(data: bytes) -> np.ndarray:
    """Little-endian PCM16 mono bytes → float32 in [-1, 1)."""
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


def float_to_pcm16(audio: np.ndarray) -> bytes:
    """Float audio → little-endian PCM16 bytes (clipped)."""
    scaled = np.clip(np.asarray(audio, dtype=np.float32) * 32768.0, -32768.0, 32767.0)
    return np.round(scaled).astype("<i2").tobytes()


def float_to_int16(audio: np.ndarray) -> np.ndarray:
    """Float audio in [-1, 1] → int16 samples (x 32767, rounded, clipped): synthesized speech."""
    return np.clip(np.round(np.asarray(audio, dtype=np.float64) * 32767.0), -32768, 32767).astype(
        np.int16
    )
