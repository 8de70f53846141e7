"""Smart Turn v3's features with the padding's frames computed once: Pipecat's numbers exactly."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view
from pipecat.audio.turn.smart_turn._whisper_features import compute_whisper_log_mel_features
from pipecat.audio.turn.smart_turn.local_smart_turn_v3 import LocalSmartTurnAnalyzerV3

from pipeline.turn_taking.shared_analyzers import SharedSmartTurnAnalyzerV3
from stepcall.audio.smart_turn_features import (
    HOP,
    N_FFT,
    N_SAMPLES,
    fit_to_window,
    log_mel_features,
    padded_frames,
)
from stepcall.audio.speech import synthesize

#: Turn lengths in samples at 16 kHz: around the frame edges of the padding and the 8 s window.
EDGES = [1, 199, 200, 201, 359, 360, 361, 520, 16_000, 40_000, 127_799, 127_800, 127_999,
         N_SAMPLES, N_SAMPLES + 1, 3 * N_SAMPLES]


def _speech_16k() -> np.ndarray:
    pcm = synthesize("I would like to move my appointment to Friday, please.", 16000)
    return pcm.astype(np.float32) / 32768.0


def test_features_are_pipecats_bit_for_bit() -> None:
    rng = np.random.default_rng(3)
    speech = _speech_16k()
    lengths = EDGES + [int(n) for n in rng.integers(1, 2 * N_SAMPLES, 12)]
    for n in lengths:
        audio = np.resize(speech, n) + rng.normal(0, 1e-3, n).astype(np.float32)
        window, padding = fit_to_window(audio)
        assert window.shape == (N_SAMPLES,) and padding == max(N_SAMPLES - n, 0)
        np.testing.assert_array_equal(window[padding:], audio[-N_SAMPLES:])
        expected = compute_whisper_log_mel_features(window, do_normalize=True)
        got = log_mel_features(audio)
        assert got.dtype == np.float32 and got.shape == (80, 800)
        np.testing.assert_array_equal(got, expected, err_msg=f"{n} samples")


def test_padded_frames_are_exactly_the_frames_that_read_only_padding() -> None:
    rng = np.random.default_rng(4)
    for padding in [0, 1, 200, 201, 360, 361, 999, 64_000, N_SAMPLES - 1]:
        x = np.concatenate((np.zeros(padding), rng.normal(1.0, 0.5, N_SAMPLES - padding)))
        frames = sliding_window_view(np.pad(x, N_FFT // 2, mode="reflect"), N_FFT)[::HOP]
        k = padded_frames(padding)
        assert not frames[:k].any(), padding  # all padding
        assert frames[k].any(), padding  # the next one reads audio


def test_bad_audio_is_refused() -> None:
    with pytest.raises(ValueError, match="1-D"):
        log_mel_features(np.zeros((2, 8000), dtype=np.float32))


def test_shared_analyzer_predicts_what_pipecats_does_at_both_rates() -> None:
    for rate in (8000, 16000):
        pcm = synthesize("Could you check my order status?", rate).astype(np.float32) / 32768.0
        ours, theirs = SharedSmartTurnAnalyzerV3(), LocalSmartTurnAnalyzerV3()
        ours.set_sample_rate(rate)
        theirs.set_sample_rate(rate)
        for audio in (pcm, pcm[: pcm.size // 2], np.tile(pcm, 5)):
            got, expected = ours._predict_endpoint(audio), theirs._predict_endpoint(audio)
            assert got == expected, rate
            assert 0.0 <= got["probability"] <= 1.0
