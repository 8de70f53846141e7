"""Smart Turn v3's input features, computed once per distinct frame.

Smart Turn v3 reads 8 s of 16 kHz audio as Whisper log-mel features (80 mels x 800 frames of
10 ms). Pipecat pads a shorter turn with zeros at the front and then runs the whole 8 s through
its NumPy feature extractor (``compute_whisper_log_mel_features``): a 801-frame FFT, a mel
product and a logarithm. A caller's turn is mostly 1-4 s, so most of those frames lie wholly in
the padding. After the waveform normalisation every padded sample holds the same value, so every
such frame has the same spectrum: here it is computed once and repeated, and only the frames that
touch the caller's audio are transformed. Same arithmetic as Pipecat's, frame by frame
(``tests/pipeline/test_smart_turn_features.py``). For a 2 s turn: 2.2 ms instead of 4.7 ms
(one BLAS thread, as in the bot), next to ~55 ms for the model itself.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from pipecat.audio.turn.smart_turn import _whisper_features as whisper

RATE = 16000
#: Seconds of audio Smart Turn v3 reads (the end of the turn).
WINDOW_SECS = 8
N_SAMPLES = RATE * WINDOW_SECS
N_FFT = whisper._N_FFT
HOP = whisper._HOP_LENGTH
#: Analysis frames of the centred STFT over N_SAMPLES (the last is dropped at the end).
N_FRAMES = N_SAMPLES // HOP + 1

_WINDOW = whisper._HANN_WINDOW.astype(np.float64)


def fit_to_window(audio: np.ndarray) -> tuple[np.ndarray, int]:
    """The last ``WINDOW_SECS`` of ``audio`` with zeros in front up to that length (as Pipecat's
    analyzer does), and how many samples of padding that is."""
    if audio.ndim != 1:
        raise ValueError(f"expected 1-D audio, got shape {audio.shape}")
    x = np.asarray(audio, dtype=np.float32)
    if x.size >= N_SAMPLES:
        return x[-N_SAMPLES:], 0
    padding = N_SAMPLES - x.size
    return np.concatenate((np.zeros(padding, dtype=np.float32), x)), padding


def padded_frames(padding: int) -> int:
    """How many leading analysis frames read only padding (``padding`` zeros in front).

    Frame ``i`` reads samples ``160 i - 200 .. 160 i + 199`` of the window, the negative ones
    mirrored to ``1 .. 200`` (reflect padding): all are padding when ``160 i + 199 < padding``
    and ``200 < padding``.
    """
    if padding <= N_FFT // 2:
        return 0
    return min(N_FRAMES, (padding - N_FFT // 2) // HOP + 1)


def log_mel_features(audio: np.ndarray) -> np.ndarray:
    """Smart Turn v3's ``input_features`` (80 x 800, float32) for a turn's 16 kHz audio: what
    ``compute_whisper_log_mel_features(fit_to_window(audio)[0])`` returns."""
    x, padding = fit_to_window(audio)
    # the waveform normalisation, as Pipecat's (float32, over the whole window)
    x = (x - x.mean()) / np.sqrt(x.var() + whisper._NORM_VARIANCE_EPS)
    same = padded_frames(padding)
    first = max(same - 1, 0)  # one frame of the padding stands for all of them
    pad = N_FFT // 2
    lo = first * HOP
    # the frames first .. N_FRAMES-1 of the centred STFT, reflect padding at both ends
    padded = np.pad(x.astype(np.float64), (pad, pad), mode="reflect")[lo:]
    frames = sliding_window_view(padded, N_FFT)[::HOP]
    power = np.abs(np.fft.rfft(frames * _WINDOW, axis=-1)) ** 2  # (frames, bins)
    mel = np.maximum(whisper._MEL_FLOOR, whisper._MEL_FILTERS.T @ power.T)  # (mels, frames)
    log_spec = np.log10(mel)[:, :-1]  # drop the trailing frame, as Pipecat's does
    if first:
        log_spec = np.concatenate((np.repeat(log_spec[:, :1], first, axis=1), log_spec), axis=1)
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0).astype(np.float32)
