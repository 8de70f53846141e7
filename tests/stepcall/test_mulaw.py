"""The numpy G.711 mu-law codec is bit-exact with audioop's."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from stepcall.audio.mulaw import ULAW_SILENCE, pcm16_to_ulaw, ulaw_to_pcm16
from stepcall.audio.pcm import float_to_int16 as float_to_pcm16

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    audioop = pytest.importorskip("audioop")


def test_encode_matches_audioop_on_every_int16_value():
    pcm = np.arange(-32768, 32768, dtype=np.int16)
    assert pcm16_to_ulaw(pcm) == audioop.lin2ulaw(pcm.tobytes(), 2)


def test_decode_matches_audioop_on_every_code():
    codes = bytes(range(256))
    assert ulaw_to_pcm16(codes).tobytes() == audioop.ulaw2lin(codes, 2)


def test_silence_byte_and_round_trip():
    assert ulaw_to_pcm16(bytes([ULAW_SILENCE]))[0] == 0
    assert pcm16_to_ulaw(np.zeros(3, np.int16)) == bytes([ULAW_SILENCE]) * 3
    t = np.arange(800) / 8000
    pcm = float_to_pcm16(0.5 * np.sin(2 * np.pi * 440 * t))
    back = ulaw_to_pcm16(pcm16_to_ulaw(pcm)).astype(np.int32)
    # mu-law keeps ~3% relative error on loud samples
    assert np.max(np.abs(back - pcm) / (np.abs(pcm) + 64)) < 0.04


def test_float_input_is_refused():
    with pytest.raises(TypeError, match="integer"):
        pcm16_to_ulaw(np.zeros(4, np.float32))
