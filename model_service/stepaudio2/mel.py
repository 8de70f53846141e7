"""Audio front end for Step-Audio 2: 16 kHz waveform → Whisper-style 128-bin log-mel frames.

Exactly the official recipe: 479 zero samples of right padding, STFT (n_fft 400, hop 160, Hann,
centred), last frame dropped, power spectrum, Slaney mel filterbank (the librosa default, written
here in numpy), ``log10(clamp 1e-10)``, ``max(x, x.max() - 8)`` per call, ``(x + 4) / 4``.

``audio_token_count`` is the one placeholder formula used everywhere (prompt building, the
encoder's valid lengths, the adapter output length).
"""

from __future__ import annotations

import functools

import numpy as np
import torch

SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160
N_MELS = 128
RIGHT_PAD = 479
MAX_CHUNK_SECS = 25.0
# An encoder chunk holds at most n_audio_ctx (1500) frames at 50 Hz, i.e. 2999 mel frames.
MAX_MEL_FRAMES = 2999


class AudioInputError(ValueError):
    """Audio that cannot be turned into model input (wrong shape, too short, too long)."""


def _hz_to_mel_slaney(f: np.ndarray) -> np.ndarray:
    f = np.asarray(f, dtype=np.float64)
    f_sp = 200.0 / 3.0
    mels = f / f_sp
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    log_region = f >= min_log_hz
    mels = np.where(
        log_region, min_log_mel + np.log(np.maximum(f, 1e-12) / min_log_hz) / logstep, mels
    )
    return mels


def _mel_to_hz_slaney(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    f_sp = 200.0 / 3.0
    freqs = m * f_sp
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), freqs)


@functools.lru_cache(maxsize=4)
def mel_filterbank(sr: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS) -> np.ndarray:
    """Slaney-scale, Slaney-normalised triangular filters, shape ``[n_mels, 1 + n_fft // 2]``.

    Same definition as ``librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels)`` (htk=False,
    norm="slaney", fmin=0, fmax=sr/2).
    """
    n_bins = 1 + n_fft // 2
    fft_freqs = np.linspace(0.0, sr / 2.0, n_bins)
    mel_edges = np.linspace(_hz_to_mel_slaney(0.0), _hz_to_mel_slaney(sr / 2.0), n_mels + 2)
    hz_edges = _mel_to_hz_slaney(mel_edges)
    widths = np.diff(hz_edges)
    ramps = hz_edges[:, None] - fft_freqs[None, :]
    weights = np.zeros((n_mels, n_bins), dtype=np.float64)
    for i in range(n_mels):
        lower = -ramps[i] / widths[i]
        upper = ramps[i + 2] / widths[i + 1]
        weights[i] = np.maximum(0.0, np.minimum(lower, upper))
    enorm = 2.0 / (hz_edges[2 : n_mels + 2] - hz_edges[:n_mels])
    weights *= enorm[:, None]
    return weights.astype(np.float32)


def _as_mono_float(wav: np.ndarray | torch.Tensor) -> np.ndarray:
    arr = wav.detach().cpu().numpy() if isinstance(wav, torch.Tensor) else np.asarray(wav)
    if arr.ndim == 2:  # (channels, samples): the official front end keeps channel 0
        arr = arr[0]
    if arr.ndim != 1:
        raise AudioInputError(f"expected mono audio of shape [samples], got shape {arr.shape}")
    if arr.dtype == np.int16:
        arr = arr.astype(np.float32) / 32768.0
    return arr.astype(np.float32, copy=False)


def mel_frame_count(num_samples: int) -> int:
    """Number of mel frames ``log_mel_spectrogram`` produces for ``num_samples`` samples."""
    return (num_samples + RIGHT_PAD) // HOP_LENGTH


def log_mel_spectrogram(wav16k: np.ndarray | torch.Tensor) -> torch.Tensor:
    """16 kHz mono float waveform → float32 tensor ``[128, T]`` with ``T = (n + 479) // 160``."""
    arr = _as_mono_float(wav16k)
    if arr.shape[0] == 0:
        raise AudioInputError("empty audio")
    audio = torch.from_numpy(np.ascontiguousarray(arr)).float()
    audio = torch.nn.functional.pad(audio, (0, RIGHT_PAD))
    window = torch.hann_window(N_FFT)
    stft = torch.stft(audio, N_FFT, HOP_LENGTH, window=window, center=True, return_complex=True)
    power = stft[..., :-1].abs() ** 2
    filters = torch.from_numpy(mel_filterbank())
    mel = filters @ power
    log_spec = torch.clamp(mel, min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
    return (log_spec + 4.0) / 4.0


def split_audio(
    wav16k: np.ndarray | torch.Tensor, max_secs: float = MAX_CHUNK_SECS
) -> list[np.ndarray]:
    """Cut audio into consecutive chunks of at most ``max_secs`` (the official 25 s).

    A tail shorter than 1 s is merged into the previous chunk (still well under the encoder's
    ~30 s limit for the default 25 s) so no chunk is too short to yield audio tokens.
    """
    arr = _as_mono_float(wav16k)
    if max_secs <= 0:
        raise AudioInputError(f"max_secs must be positive, got {max_secs}")
    step = int(round(max_secs * SAMPLE_RATE))
    chunks = [arr[i : i + step] for i in range(0, arr.shape[0], step)]
    if len(chunks) > 1 and chunks[-1].shape[0] < SAMPLE_RATE:
        tail = chunks.pop()
        chunks[-1] = np.concatenate([chunks[-1], tail])
    return chunks


def encoder_valid_frames(mel_frames: int) -> int:
    """Valid length passed to the encoder for a chunk of ``mel_frames`` frames (``T - 2``)."""
    return mel_frames - 2


def encoder_output_frames(mel_frames: int) -> int:
    """Valid 25 Hz encoder frames for a chunk of ``mel_frames`` mel frames."""
    return (encoder_valid_frames(mel_frames) + 1) // 2 // 2


def audio_token_count(mel_frames: int) -> int:
    """Number of ``<audio_patch>`` placeholders (adapter outputs, 12.5 Hz) for one chunk."""
    e = encoder_output_frames(mel_frames)
    return (e + 2 * 1 - 3) // 2 + 1


def audio_token_count_for_samples(num_samples: int) -> int:
    """``audio_token_count`` for a raw 16 kHz chunk of ``num_samples`` samples."""
    return audio_token_count(mel_frame_count(num_samples))
