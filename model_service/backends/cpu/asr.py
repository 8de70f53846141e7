"""Speech to text for the CPU backend: faster-whisper (CTranslate2) on 16 kHz user audio."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np


class WhisperASR:
    """A loaded faster-whisper model that transcribes one user turn at a time (thread-safe).

    Greedy decoding, English, no timestamps, int8 on ``cpu_threads`` threads: about 0.4 s per
    utterance for tiny.en on two cores (Whisper pads to 30 s, so length barely matters).
    """

    def __init__(self, model_dir: str | Path, *, cpu_threads: int = 2, language: str = "en") -> None:
        # CTranslate2's OpenMP threads would otherwise spin after each call and take the
        # cores llama.cpp needs (read when the OpenMP runtime starts; best effort).
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        from faster_whisper import WhisperModel

        self.model_dir = Path(model_dir)
        self.language = language
        self.model = WhisperModel(
            str(self.model_dir), device="cpu", compute_type="int8", cpu_threads=cpu_threads
        )
        self._lock = threading.Lock()

    def transcribe(self, pcm16k: np.ndarray) -> str:
        """The text of ``pcm16k`` (float32 mono, 16 kHz); "" for silence or too-short audio."""
        audio = np.asarray(pcm16k, dtype=np.float32).reshape(-1)
        if audio.size < 1600:  # under 0.1 s: nothing Whisper can use
            return ""
        with self._lock:
            segments, _info = self.model.transcribe(
                audio,
                language=self.language,
                beam_size=1,
                temperature=0.0,
                condition_on_previous_text=False,
                without_timestamps=True,
                vad_filter=False,
            )
            text = " ".join(seg.text.strip() for seg in segments)
        return text.strip()


__all__ = ["WhisperASR"]
