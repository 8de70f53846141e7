"""Pipecat's Silero VAD and Smart Turn v3 analyzers on the process-wide models of
:mod:`stepcall.audio.inference`: each call keeps only its own state.

Pipecat's analyzers load their ONNX model per instance, i.e. per call; these take the shared
weights or session instead, score Silero inline on the event loop (one window costs about what a
thread hop does) and run Smart Turn's inferences on the process's low-priority pool
(:func:`stepcall.audio.inference.inference_pool`).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from loguru import logger
from pipecat.audio.turn.smart_turn.base_smart_turn import BaseSmartTurn
from pipecat.audio.turn.smart_turn.local_smart_turn_v3 import LocalSmartTurnAnalyzerV3
from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.audio.vad.vad_analyzer import VADAnalyzer, VADParams, VADState
from pipecat.utils.env import env_truthy

from stepcall.audio.inference import (
    FEATURES_RATE,
    SMART_TURN_MODEL,
    inference_pool,
    shared_session,
    silero_model,
    smart_turn_probability,
)


class SharedSileroVADAnalyzer(SileroVADAnalyzer):
    """Silero VAD with the process-wide weights or session, analysed inline (no per-call thread)."""

    def __init__(self, *, sample_rate: int | None = None, params: VADParams | None = None) -> None:
        VADAnalyzer.__init__(self, sample_rate=sample_rate, params=params)
        self._model = silero_model()
        # the NumPy runtime scores PCM16 as it comes; ONNX Runtime's model wants floats
        self._score_pcm16 = getattr(self._model, "score_pcm16", None)
        self._windows_since_reset = 0
        self._low_confidence_windows = 0

    async def analyze_audio(self, buffer: bytes) -> VADState:
        """Run the analysis here: a window's inference costs about what a thread hop does."""
        return self._run_analyzer(buffer)

    def voice_confidence(self, buffer: bytes) -> float:
        """Pipecat's, scoring the PCM as it is on the NumPy runtime (no float copy before)."""
        if self._score_pcm16 is None:
            return super().voice_confidence(buffer)
        try:
            confidence = self._score_pcm16(buffer, self.sample_rate)
        except Exception as e:  # as Pipecat's: a window it cannot score counts as silence
            logger.error(f"Error analyzing audio with Silero VAD: {e}")
            return 0.0
        self._maybe_reset_model(confidence)
        return confidence

    def advance_model(self, window: bytes) -> None:
        """Run the model over ``window`` for its state only (the score is not used)."""
        if self._score_pcm16 is not None:
            self._score_pcm16(window, self.sample_rate)
        else:
            pcm = np.frombuffer(window, dtype=np.int16).astype(np.float32) / 32768.0
            self._model(pcm, self.sample_rate)


class SharedSmartTurnAnalyzerV3(LocalSmartTurnAnalyzerV3):
    """Smart Turn v3 with the process-wide model session and inference pool (per-call state
    only)."""

    def __init__(self, **kwargs) -> None:
        BaseSmartTurn.__init__(self, **kwargs)
        self._log_data = env_truthy("PIPECAT_SMART_TURN_LOG_DATA", default=False)
        self._session = shared_session(SMART_TURN_MODEL)

    @property
    def _model_executor(self) -> ThreadPoolExecutor:
        """The process-wide pool instead of a thread per analyzer (Pipecat's default); the
        analyzer's ``cleanup`` leaves it running, since it never owned it."""
        return inference_pool().executor

    def _predict_endpoint(self, audio_array: np.ndarray) -> dict[str, Any]:
        """Pipecat's prediction (:func:`smart_turn_probability`)."""
        rate = self._sample_rate or FEATURES_RATE
        probability = smart_turn_probability(audio_array, rate, self._session)
        prediction = 1 if probability > 0.5 else 0
        if self._log_data:
            suffix = "_complete" if prediction == 1 else "_incomplete"
            rate = self._sample_rate or FEATURES_RATE
            self._write_audio_to_wav(audio_array, sample_rate=rate, suffix=suffix)
        return {"prediction": prediction, "probability": probability}
