"""Voices: the speaker prompt that gives token2wav its timbre.

A ``Voice`` holds the prompt's speech codes (25 Hz), a 192-d CAM++ x-vector and the prompt's
80-bin log-mel at 50 Hz padded (by replicating the last frame) to exactly 2 x the code count.

Sources, in order:
1. ``<prompt>.npz`` next to the prompt wav (``codes``, ``embedding``, ``mel``) - written by
   ``save_voice_npz``; the tiny test voice uses it because the ONNX models can't be randomised;
2. the wav itself, through ``speech_tokenizer_v2_25hz.onnx`` (Whisper-style 128-bin log-mel at
   16 kHz -> codes) and ``campplus.onnx`` (Kaldi fbank, 80 bins, mean-normalised -> x-vector)
   run with onnxruntime on CPU.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from .config import MEL_BINS, MEL_HOP, SAMPLE_RATE

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Voice:
    """A prepared speaker prompt (immutable; shared by every stream that uses it)."""

    name: str
    codes: np.ndarray  # int64 [n]
    embedding: np.ndarray  # float32 [192]
    mel: np.ndarray  # float32 [2n, 80]

    def __post_init__(self) -> None:
        if self.codes.ndim != 1 or self.mel.ndim != 2 or self.embedding.ndim != 1:
            raise ValueError(f"voice {self.name!r}: codes [n], embedding [d], mel [T, 80] expected")
        if self.mel.shape[0] != 2 * self.codes.shape[0]:
            raise ValueError(
                f"voice {self.name!r}: mel has {self.mel.shape[0]} frames, expected 2 x "
                f"{self.codes.shape[0]} codes"
            )


def save_voice_npz(voice: Voice, path: str | Path) -> Path:
    """Write a voice as ``.npz`` (codes, embedding, mel) so it loads without the ONNX models."""
    path = Path(path)
    with open(path, "wb") as fh:
        np.savez(
            fh,
            codes=voice.codes.astype(np.int64),
            embedding=voice.embedding.astype(np.float32),
            mel=voice.mel.astype(np.float32),
        )
    return path


def load_voice_npz(path: str | Path, name: str | None = None) -> Voice:
    path = Path(path)
    with np.load(path) as z:
        missing = {"codes", "embedding", "mel"} - set(z.files)
        if missing:
            raise ValueError(f"voice file {path}: missing arrays {sorted(missing)}")
        return Voice(
            name=name or path.stem,
            codes=z["codes"].astype(np.int64).reshape(-1),
            embedding=z["embedding"].astype(np.float32).reshape(-1),
            mel=z["mel"].astype(np.float32),
        )


def pad_mel_to_codes(mel: np.ndarray, n_codes: int, up_rate: int = 2) -> np.ndarray:
    """Replicate the last frame (or trim) so the mel has exactly ``up_rate * n_codes`` frames."""
    target = up_rate * n_codes
    if mel.shape[0] >= target:
        return mel[:target]
    if mel.shape[0] == 0:
        raise ValueError("prompt mel is empty")
    pad = np.repeat(mel[-1:], target - mel.shape[0], axis=0)
    return np.concatenate([mel, pad], axis=0)


# ------------------------------------------------------------------------------- features


def read_wav_mono(path: str | Path, rate: int) -> np.ndarray:
    """Load any soundfile-readable file as float32 mono at ``rate`` (channels averaged)."""
    data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    mono = data.mean(axis=1)
    if sr != rate:
        mono = soxr.resample(mono, sr, rate, quality="HQ")
    return np.ascontiguousarray(mono, dtype=np.float32)


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    f = np.asarray(f, dtype=np.float64)
    lin = f / (200.0 / 3)
    logstep = np.log(6.4) / 27.0
    return np.where(f >= 1000.0, 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / logstep, lin)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    logstep = np.log(6.4) / 27.0
    return np.where(m >= 15.0, 1000.0 * np.exp(logstep * (m - 15.0)), m * (200.0 / 3))


def slaney_mel_filters(
    sr: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None
) -> np.ndarray:
    """Slaney-scale, Slaney-normalised triangular filters [n_mels, n_fft//2+1] (librosa defaults)."""
    fmax = sr / 2 if fmax is None else fmax
    fft_f = np.linspace(0, sr / 2, n_fft // 2 + 1)
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_f[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    w = np.maximum(0, np.minimum(lower, upper))
    w *= (2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels]))[:, None]
    return w.astype(np.float32)


def _frames(x: np.ndarray, size: int, hop: int) -> np.ndarray:
    n = 1 + (len(x) - size) // hop
    if n <= 0:
        return np.zeros((0, size), dtype=x.dtype)
    idx = np.arange(size)[None, :] + hop * np.arange(n)[:, None]
    return x[idx]


def prompt_mel_24k(wav24k: np.ndarray) -> np.ndarray:
    """Log-mel [T, 80] at 50 frames/s: n_fft 1920, hop 480, Hann, fmax 8 kHz, reflect pad 720."""
    n_fft = 1920
    pad = (n_fft - MEL_HOP) // 2
    y = np.pad(wav24k.astype(np.float64), (pad, pad), mode="reflect")
    win = np.hanning(n_fft + 1)[:-1]  # periodic Hann
    spec = np.abs(np.fft.rfft(_frames(y, n_fft, MEL_HOP) * win, axis=1))
    spec = np.sqrt(spec**2 + 1e-9)
    mel = spec @ slaney_mel_filters(SAMPLE_RATE, n_fft, MEL_BINS, 0.0, 8000.0).T
    return np.log(np.maximum(mel, 1e-5)).astype(np.float32)


def whisper_log_mel_128(wav16k: np.ndarray) -> np.ndarray:
    """S3-tokenizer input [128, T]: n_fft 400, hop 160, centred, last frame dropped, log10, (x+4)/4."""
    y = np.pad(wav16k.astype(np.float64), (200, 200), mode="reflect")
    win = np.hanning(401)[:-1]
    power = np.abs(np.fft.rfft(_frames(y, 400, 160) * win, axis=1)) ** 2
    power = power[:-1]
    mel = power @ slaney_mel_filters(16000, 400, 128).T
    log_spec = np.log10(np.maximum(mel, 1e-10))
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0).T.astype(np.float32)


def kaldi_fbank_80(wav16k: np.ndarray) -> np.ndarray:
    """Kaldi-style fbank [T, 80] (25/10 ms, povey window, pre-emphasis 0.97, no dither), mean-normalised."""
    frames = _frames(wav16k.astype(np.float64), 400, 160)
    frames = frames - frames.mean(axis=1, keepdims=True)
    emph = frames.copy()
    emph[:, 1:] -= 0.97 * frames[:, :-1]
    emph[:, 0] -= 0.97 * frames[:, 0]
    povey = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 399)) ** 0.85
    power = np.abs(np.fft.rfft(emph * povey, n=512, axis=1)) ** 2  # [T, 257]
    mel_low, mel_high = 1127.0 * np.log(1 + 20.0 / 700), 1127.0 * np.log(1 + 8000.0 / 700)
    centers = np.linspace(mel_low, mel_high, 82)
    fft_mel = 1127.0 * np.log(1 + (np.arange(256) * 16000.0 / 512) / 700)
    banks = np.zeros((80, 257))
    for m in range(80):
        left, center, right = centers[m], centers[m + 1], centers[m + 2]
        up = (fft_mel - left) / (center - left)
        down = (right - fft_mel) / (right - center)
        banks[m, :256] = np.maximum(0, np.minimum(up, down))
    feats = np.log(np.maximum(power @ banks.T, np.finfo(np.float32).eps))
    return (feats - feats.mean(axis=0, keepdims=True)).astype(np.float32)


class PromptEncoders:
    """The two ONNX models that turn a prompt wav into codes and an x-vector (loaded lazily)."""

    def __init__(self, tokenizer_path: Path, campplus_path: Path) -> None:
        self.tokenizer_path = tokenizer_path
        self.campplus_path = campplus_path
        self._tok = None
        self._spk = None

    def _session(self, path: Path):  # noqa: ANN202 - onnxruntime type
        if not path.exists():
            raise FileNotFoundError(
                f"token2wav: missing {path} (needed to prepare a voice from a wav)"
            )
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        return ort.InferenceSession(
            str(path), sess_options=opts, providers=["CPUExecutionProvider"]
        )

    def codes(self, wav16k: np.ndarray) -> np.ndarray:
        if self._tok is None:
            self._tok = self._session(self.tokenizer_path)
        feats = whisper_log_mel_128(wav16k)[None]
        inputs = self._tok.get_inputs()
        feed = {inputs[0].name: feats}
        if len(inputs) > 1:
            feed[inputs[1].name] = np.array([feats.shape[2]], dtype=np.int32)
        out = self._tok.run(None, feed)[0]
        return np.asarray(out).reshape(-1).astype(np.int64)

    def embedding(self, wav16k: np.ndarray) -> np.ndarray:
        if self._spk is None:
            self._spk = self._session(self.campplus_path)
        feats = kaldi_fbank_80(wav16k)[None]
        out = self._spk.run(None, {self._spk.get_inputs()[0].name: feats})[0]
        return np.asarray(out, dtype=np.float32).reshape(-1)

    def voice_from_wav(self, path: Path) -> Voice:
        wav16 = read_wav_mono(path, 16000)
        codes = self.codes(wav16)
        if codes.size == 0:
            raise ValueError(
                f"voice prompt {path}: too short, the speech tokenizer returned no codes"
            )
        emb = self.embedding(wav16)
        mel = pad_mel_to_codes(prompt_mel_24k(read_wav_mono(path, SAMPLE_RATE)), len(codes))
        log.info("prepared voice %s: %d codes", path, len(codes))
        return Voice(name=path.stem, codes=codes, embedding=emb, mel=mel)
