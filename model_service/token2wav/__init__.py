"""token2wav: Step-Audio 2 / CosyVoice-2 speech codes (25 Hz, 6561) -> 24 kHz speech.

Public API: ``Token2Wav`` (load, prepare_voice, synthesize, new_stream/push/push_many/flush,
stream_step), ``Token2WavBatcher`` (async, batches concurrent sessions), ``ChunkSchedule``, ``StreamState``, ``Voice``/``save_voice_npz``
(its 24 kHz output goes to a call's rate through :mod:`stepcall.audio.resample`).
"""

from __future__ import annotations

from .batcher import Token2WavBatcher
from .config import N_CODES, SAMPLE_RATE, FlowConfig, HiFTConfig, Token2WavConfig
from .engine import ChunkSchedule, StreamState, Token2Wav, Token2WavFileError
from .voice import Voice, load_voice_npz, save_voice_npz
from .weights import WeightsError

__all__ = [
    "N_CODES",
    "SAMPLE_RATE",
    "ChunkSchedule",
    "FlowConfig",
    "HiFTConfig",
    "StreamState",
    "Token2Wav",
    "Token2WavBatcher",
    "Token2WavConfig",
    "Token2WavFileError",
    "Voice",
    "WeightsError",
    "load_voice_npz",
    "save_voice_npz",
]
