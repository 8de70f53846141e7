"""Silero VAD and Smart Turn v3 for many calls in one process: one ONNX session each, shared.

Pipecat's analyzers load their ONNX model per instance, i.e. per call: every call paid the model
load (CPU at call start) and its own ONNX Runtime session memory, and Smart Turn's session ran a
2-thread pool per call whose idle threads spin. Here both models are loaded once per process;
each call keeps only its own state (Silero's recurrent state and context, Smart Turn's audio
buffer), which Pipecat already keeps outside the session. ``InferenceSession.run`` is safe to
call from several threads at once.

Silero also runs inline on the event loop instead of through a per-call thread: one window costs
~0.1 ms, about what the thread hop alone costs (measured: 97 µs inference, 91 µs hop), so the hop
only doubled the CPU per frame. Smart Turn (~33 ms per end of speech) stays on its thread.

NumPy's BLAS runs single-threaded in a bot process (:func:`limit_blas_threads`, on the first
model load): Smart Turn's feature extraction does one matrix product per inference, after which
OpenBLAS's second thread busy-waits ~100 ms; that spin cost ~2 % of a core per call.

Sessions: single intra-op thread, spinning off (a waiting thread sleeps instead of burning CPU),
so many concurrent calls share the cores instead of competing pools. Smart Turn costs ~10 ms more
latency per turn than with 2 threads, for ~25 % less CPU.
"""

from __future__ import annotations

import functools
import threading
from importlib import resources

import onnxruntime as ort
import threadpoolctl
from pipecat.audio.turn.smart_turn.base_smart_turn import BaseSmartTurn
from pipecat.audio.turn.smart_turn.local_smart_turn_v3 import LocalSmartTurnAnalyzerV3
from pipecat.audio.vad.silero import SileroOnnxModel, SileroVADAnalyzer
from pipecat.audio.vad.vad_analyzer import VADAnalyzer, VADParams, VADState
from pipecat.utils.env import env_truthy

SILERO_MODEL = ("pipecat.audio.vad.data", "silero_vad.onnx")
SMART_TURN_MODEL = ("pipecat.audio.turn.smart_turn.data", "smart-turn-v3.2-cpu.onnx")

_lock = threading.Lock()


def _model_path(package: str, name: str) -> str:
    return str(resources.files(package).joinpath(name))


@functools.cache
def limit_blas_threads() -> None:
    """One BLAS thread for NumPy in this process (idle OpenBLAS workers spin, burning a core)."""
    threadpoolctl.threadpool_limits(limits=1, user_api="blas")


@functools.cache
def _session(package: str, name: str) -> ort.InferenceSession:
    """The process-wide session of a bundled model (created on first use)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(
        _model_path(package, name), sess_options=options, providers=["CPUExecutionProvider"]
    )


def shared_session(model: tuple[str, str]) -> ort.InferenceSession:
    """The shared session of ``SILERO_MODEL`` or ``SMART_TURN_MODEL`` (thread-safe creation)."""
    with _lock:
        limit_blas_threads()
        return _session(*model)


class SharedSileroVADAnalyzer(SileroVADAnalyzer):
    """Silero VAD with the process-wide model session, analysed inline (no per-call thread)."""

    def __init__(self, *, sample_rate: int | None = None, params: VADParams | None = None) -> None:
        VADAnalyzer.__init__(self, sample_rate=sample_rate, params=params)
        model = SileroOnnxModel.__new__(SileroOnnxModel)
        model.session = shared_session(SILERO_MODEL)
        model.sample_rates = [8000, 16000]
        model.reset_states()
        self._model = model
        self._windows_since_reset = 0
        self._low_confidence_windows = 0

    async def analyze_audio(self, buffer: bytes) -> VADState:
        """Run the analysis here: a window's inference costs about what a thread hop does."""
        return self._run_analyzer(buffer)


class SharedSmartTurnAnalyzerV3(LocalSmartTurnAnalyzerV3):
    """Smart Turn v3 with the process-wide model session (per-call state only)."""

    def __init__(self, **kwargs) -> None:
        BaseSmartTurn.__init__(self, **kwargs)
        self._log_data = env_truthy("PIPECAT_SMART_TURN_LOG_DATA", default=False)
        self._session = shared_session(SMART_TURN_MODEL)


def warm_up() -> None:
    """Load both models now (server start-up) instead of during the first call."""
    shared_session(SILERO_MODEL)
    shared_session(SMART_TURN_MODEL)
