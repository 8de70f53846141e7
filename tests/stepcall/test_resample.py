"""The one stream resampler (token2wav's 24 kHz out to a call's rate, a call's rate in):
steady 20 ms in -> 20 ms out, correct signal, anti-aliasing.

Until the house redesign token2wav had a twin resampler of its own (32 taps at the input rate,
0.67 ms delay); the one kept is the call path's (taps scaled to the lower rate, a sharper
anti-aliasing filter, 1-2 ms delay), so its delay bound is the call path's 3 ms."""

from __future__ import annotations

import numpy as np
import pytest
import soxr

from stepcall.audio.resample import Resampler24k, StreamResampler


def _tone(freq: float, seconds: float = 1.0, rate: int = 24000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.mark.parametrize("out_rate", [8000, 16000, 48000])
def test_twenty_ms_in_gives_twenty_ms_out(out_rate: int) -> None:
    r = Resampler24k(out_rate)
    x = _tone(440)
    sizes = [len(r.process(x[i : i + 480])) for i in range(0, len(x), 480)]
    per20 = out_rate // 50
    # first call is short by the filter delay (1-2 ms); after that, every call returns exactly
    # one 20 ms frame: no bursts, no extra buffering.
    assert per20 - int(np.ceil(r.delay_s * out_rate)) - 1 <= sizes[0] <= per20
    assert all(s == per20 for s in sizes[1:]), sizes
    assert r.delay_s < 0.003
    total = sum(sizes) + len(r.flush())
    assert total == out_rate  # 1 s in, 1 s out


@pytest.mark.parametrize("out_rate", [8000, 16000, 48000])
def test_matches_reference_resampler(out_rate: int) -> None:
    x = _tone(440) + _tone(1700) * 0.5
    r = StreamResampler(24000, out_rate)
    y = np.concatenate([r.process(x[i : i + 333]) for i in range(0, len(x), 333)] + [r.flush()])
    ref = soxr.resample(x, 24000, out_rate, quality="VHQ")
    assert y.shape == ref.shape
    inner = slice(100, len(ref) - 100)
    assert np.max(np.abs(y[inner] - ref[inner])) < 2e-3


def test_downsampling_to_8k_removes_content_above_4k() -> None:
    r = Resampler24k(8000)
    y = np.concatenate([r.process(c) for c in np.split(_tone(10000), 50)])
    assert np.sqrt(np.mean(y[50:] ** 2)) < 1e-3  # a 10 kHz tone would alias to 2 kHz


def test_same_rate_passthrough_and_soxr_option() -> None:
    x = _tone(300)[:480]
    np.testing.assert_array_equal(StreamResampler(24000, 24000).process(x), x)
    s = StreamResampler(24000, 16000, method="soxr", quality="QQ")
    sizes = [len(s.process(x)) for _ in range(5)]
    assert all(abs(n - 320) <= 1 for n in sizes)
    with pytest.raises(ValueError, match="method"):
        StreamResampler(24000, 8000, method="magic")
