"""G.711 mu-law codec (the telephone audio Twilio carries), vectorised with numpy.

Bit-exact with the classic ITU/Sun reference (and so with Python's ``audioop.lin2ulaw`` /
``audioop.ulaw2lin``): 16-bit PCM is reduced to 14 bits, biased, split into a 3-bit segment
and a 4-bit mantissa, and the result is inverted.
"""

from __future__ import annotations

import numpy as np

ULAW_SILENCE = 0xFF
"""The mu-law byte for digital silence (decodes to PCM 0)."""

_BIAS14 = 0x21  # 0x84 >> 2
_CLIP14 = 8159
# Upper bound (inclusive) of each of the 8 segments, in the 14-bit biased domain.
_SEG_END = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF], dtype=np.int32)


def _decode_table() -> np.ndarray:
    u = (~np.arange(256, dtype=np.int32)) & 0xFF
    t = ((u & 0x0F) << 3) + 0x84
    t = t << ((u & 0x70) >> 4)
    return np.where(u & 0x80, 0x84 - t, t - 0x84).astype(np.int16)


_DECODE = _decode_table()


def pcm16_to_ulaw(pcm: np.ndarray) -> bytes:
    """Encode 16-bit PCM samples (any integer array, values in int16 range) to mu-law bytes."""
    x = np.asarray(pcm)
    if x.dtype.kind not in "iu":
        raise TypeError(f"pcm16_to_ulaw needs integer PCM samples, got dtype {x.dtype}")
    v = x.astype(np.int32).ravel() >> 2  # arithmetic shift: 14-bit signed
    negative = v < 0
    mask = np.where(negative, 0x7F, 0xFF).astype(np.int32)
    mag = np.minimum(np.where(negative, -v, v), _CLIP14) + _BIAS14
    seg = np.searchsorted(_SEG_END, mag, side="left").astype(np.int32)  # 8 = above the top segment
    code = np.where(seg >= 8, 0x7F, (seg << 4) | ((mag >> (seg + 1)) & 0x0F))
    return ((code ^ mask) & 0xFF).astype(np.uint8).tobytes()


def ulaw_to_pcm16(data: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    """Decode mu-law bytes to an int16 PCM array."""
    codes = np.frombuffer(bytes(data), dtype=np.uint8) if not isinstance(data, np.ndarray) else data
    return _DECODE[codes.astype(np.uint8)]
