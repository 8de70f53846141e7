"""Text to speech for the CPU backend: a Piper (VITS, ONNX) voice resampled to 24 kHz."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from model_service.backends.base import OUTPUT_RATE


class PiperTTS:
    """A loaded Piper voice; ``synthesize`` turns one sentence into 24 kHz float32 audio.

    ``noise_scale=0`` and ``noise_w_scale=0`` make the output deterministic (same text, same
    samples), which keeps tests and benchmarks repeatable.
    """

    def __init__(
        self,
        voice_path: str | Path,
        *,
        noise_scale: float = 0.0,
        noise_w_scale: float = 0.0,
        length_scale: float | None = None,
        threads: int = 2,
    ) -> None:
        import json

        import onnxruntime
        from piper import PiperVoice
        from piper.config import PiperConfig, SynthesisConfig

        self.voice_path = Path(voice_path)
        config_path = Path(str(self.voice_path) + ".json")
        opts = onnxruntime.SessionOptions()
        opts.intra_op_num_threads = threads  # Piper's own loader would take every core
        opts.inter_op_num_threads = 1
        # Idle pool threads must not spin: on two cores they would starve llama.cpp.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.voice = PiperVoice(
            config=PiperConfig.from_dict(json.loads(config_path.read_text(encoding="utf-8"))),
            session=onnxruntime.InferenceSession(
                str(self.voice_path), sess_options=opts, providers=["CPUExecutionProvider"]
            ),
        )
        self.sample_rate = int(self.voice.config.sample_rate)
        self.config = SynthesisConfig(
            noise_scale=noise_scale, noise_w_scale=noise_w_scale, length_scale=length_scale
        )
        self._lock = threading.Lock()

    def synthesize(self, text: str) -> np.ndarray:
        """Audio for ``text`` at ``OUTPUT_RATE`` (float32 mono); empty for text with no sound."""
        import soxr

        text = text.strip()
        if not text:
            return np.zeros(0, dtype=np.float32)
        with self._lock:
            chunks = [c.audio_float_array for c in self.voice.synthesize(text, syn_config=self.config)]
        if not chunks:
            return np.zeros(0, dtype=np.float32)
        audio = np.concatenate(chunks).astype(np.float32, copy=False)
        if self.sample_rate != OUTPUT_RATE:
            audio = soxr.resample(audio, self.sample_rate, OUTPUT_RATE).astype(np.float32)
        return audio


__all__ = ["PiperTTS"]
