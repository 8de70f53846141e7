"""Front end: log-mel frames, placeholder counts, chunking."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model_service.stepaudio2.mel import (
    AudioInputError,
    audio_token_count,
    audio_token_count_for_samples,
    log_mel_spectrogram,
    mel_filterbank,
    mel_frame_count,
    split_audio,
)

SR = 16000


def _tone(secs: float, f: float = 440.0) -> np.ndarray:
    t = np.arange(int(secs * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * f * t)).astype(np.float32)


@pytest.mark.parametrize("secs,tokens", [(1, 13), (5, 63), (10, 125), (25, 313), (29.98, 375)])
def test_audio_token_count_reference_values(secs: float, tokens: int) -> None:
    assert audio_token_count_for_samples(int(round(secs * SR))) == tokens


def test_audio_token_count_formula() -> None:
    for t in range(5, 3000, 37):
        x = t - 2
        e = (x + 1) // 2 // 2
        assert audio_token_count(t) == (e + 2 * 1 - 3) // 2 + 1


@pytest.mark.parametrize("n", [321, 1600, 16000, 16001, 80000])
def test_mel_shape_and_frame_math(n: int) -> None:
    mel = log_mel_spectrogram(np.zeros(n, np.float32) + 0.01)
    assert mel.dtype == torch.float32
    assert tuple(mel.shape) == (128, (n + 479) // 160) == (128, mel_frame_count(n))


def test_mel_matches_independent_numpy_stft() -> None:
    wav = _tone(0.5) + 0.05 * np.random.default_rng(0).standard_normal(8000).astype(np.float32)
    got = log_mel_spectrogram(wav).numpy()
    # Independent reference: explicit framing with reflect centring, periodic Hann, rfft.
    x = np.concatenate([wav, np.zeros(479, np.float32)]).astype(np.float64)
    x = np.pad(x, 200, mode="reflect")
    n_frames = 1 + (len(x) - 400) // 160
    win = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)
    frames = np.stack([x[i * 160 : i * 160 + 400] * win for i in range(n_frames)], axis=1)
    power = np.abs(np.fft.rfft(frames, axis=0)) ** 2
    power = power[:, :-1]  # last frame dropped
    ref = np.log10(np.maximum(mel_filterbank().astype(np.float64) @ power, 1e-10))
    ref = (np.maximum(ref, ref.max() - 8.0) + 4.0) / 4.0
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, atol=2e-3)


def test_mel_dynamic_range_clamped_per_call() -> None:
    mel = log_mel_spectrogram(_tone(1.0))
    assert float(mel.max() - mel.min()) == pytest.approx(2.0, abs=1e-5)  # 8 decades / 4


def test_filterbank_is_slaney_normalised() -> None:
    fb = mel_filterbank()
    assert fb.shape == (128, 201) and (fb >= 0).all()
    peaks = fb.argmax(axis=1)
    assert (np.diff(peaks) >= 0).all()
    # Slaney norm: each triangle has unit area in Hz; check the wide (well-sampled) ones.
    areas = fb.sum(axis=1) * (SR / 2 / 200)
    np.testing.assert_allclose(areas[80:], 1.0, atol=0.1)
    # Linear below 1 kHz: the first filters' peaks are 200/3 Hz apart.
    centers = np.array([np.argmax(fb[i]) * 40.0 for i in range(1, 6)])
    assert np.all(np.abs(np.diff(centers)) <= 80.0)


def test_mel_rejects_bad_input() -> None:
    with pytest.raises(AudioInputError, match="empty"):
        log_mel_spectrogram(np.zeros(0, np.float32))
    with pytest.raises(AudioInputError, match="shape"):
        log_mel_spectrogram(np.zeros((2, 3, 4), np.float32))


def test_mel_int16_and_stereo_input() -> None:
    wav = _tone(0.3)
    pcm = (wav * 32767).astype(np.int16)
    a = log_mel_spectrogram(wav)
    b = log_mel_spectrogram(pcm)
    c = log_mel_spectrogram(np.stack([wav, np.zeros_like(wav)]))
    torch.testing.assert_close(a, b, atol=1e-2, rtol=0)  # int16 quantisation
    torch.testing.assert_close(a, c)


def test_split_audio_25s_chunks_and_tail_merge() -> None:
    lens = [len(c) for c in split_audio(np.zeros(60 * SR, np.float32))]
    assert lens == [25 * SR, 25 * SR, 10 * SR]
    lens = [len(c) for c in split_audio(np.zeros(int(50.5 * SR), np.float32))]
    assert lens == [25 * SR, int(25.5 * SR)]  # a < 1 s tail joins the previous chunk
    assert [len(c) for c in split_audio(np.zeros(SR, np.float32))] == [SR]
    assert sum(len(c) for c in split_audio(np.ones(3 * SR, np.float32), max_secs=1.0)) == 3 * SR
