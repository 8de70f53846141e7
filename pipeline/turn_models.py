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
Smart Turn's input features come from :mod:`pipeline.smart_turn_features` (Pipecat's numbers,
the zero padding in front of a short turn transformed once instead of frame by frame).
Silero's network runs in NumPy (:mod:`pipeline.silero_numpy`, the weights of the same ONNX file,
~0.6x ONNX Runtime's CPU per window); ``configure_vad_runtime("onnxruntime")`` keeps ONNX Runtime.

NumPy's BLAS runs single-threaded in a bot process (:func:`limit_blas_threads`, on the first
model load): Smart Turn's feature extraction does one matrix product per inference, after which
OpenBLAS's second thread busy-waits ~100 ms; that spin cost ~2 % of a core per call.

Sessions: single intra-op thread, spinning off (a waiting thread sleeps instead of burning CPU),
so many concurrent calls share the cores instead of competing pools. Smart Turn costs ~10 ms more
latency per turn than with 2 threads, for ~25 % less CPU.

Smart Turn inferences of all calls run on one process-wide pool (:class:`TurnInferencePool`,
``STEPCALL_TURN_MODEL_THREADS`` threads, by default half the cores, at least one) whose threads
run at a lower scheduling priority (``STEPCALL_TURN_MODEL_NICE``, +10 by default). Pipecat gives
every analyzer a thread of its own: when many callers paused at once, as many ~26 ms inferences
competed with the event loop for the cores, the loop got a fraction of a core and the bots'
audio stuttered (measured: 4,383 underruns in a 50-call load test on 2 cores, none without Smart
Turn). With the pool, inferences queue (first come, first served) instead of crowding out the
audio, and the kernel gives the event loop the CPU first. Batching does not pay on the CPU: one
batch of 4 costs 4.3 times one inference.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from typing import Any

import numpy as np
import onnxruntime as ort
import soxr
import threadpoolctl
from loguru import logger
from pipecat.audio.turn.smart_turn.base_smart_turn import BaseSmartTurn
from pipecat.audio.turn.smart_turn.local_smart_turn_v3 import LocalSmartTurnAnalyzerV3
from pipecat.audio.vad.silero import SileroOnnxModel, SileroVADAnalyzer
from pipecat.audio.vad.vad_analyzer import VADAnalyzer, VADParams, VADState
from pipecat.utils.env import env_truthy

from pipeline.silero_numpy import SileroLayoutError, SileroNumpyModel
from pipeline.smart_turn_features import RATE as FEATURES_RATE
from pipeline.smart_turn_features import log_mel_features

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


#: How Silero's network is run: "numpy" (pipeline.silero_numpy) or "onnxruntime".
VAD_RUNTIMES = ("numpy", "onnxruntime")
_vad_runtime = "numpy"


def configure_vad_runtime(name: str) -> None:
    """Choose how new calls run Silero (``VAD_RUNTIMES``); calls under way keep theirs."""
    global _vad_runtime
    if name not in VAD_RUNTIMES:
        raise ValueError(f"VAD runtime must be one of {', '.join(VAD_RUNTIMES)}, got {name!r}")
    _vad_runtime = name


def silero_model() -> object:
    """A per-call Silero model (Pipecat's ``SileroOnnxModel`` interface) on the chosen runtime.

    NumPy unless configured otherwise; ONNX Runtime (the process-wide session) when the bundled
    file is not the network ``pipeline.silero_numpy`` knows (logged once).
    """
    if _vad_runtime == "numpy":
        try:
            return SileroNumpyModel(_model_path(*SILERO_MODEL))
        except (SileroLayoutError, ImportError) as e:
            _warn_numpy_unavailable(str(e))
    model = SileroOnnxModel.__new__(SileroOnnxModel)
    model.session = shared_session(SILERO_MODEL)
    model.sample_rates = [8000, 16000]
    model.reset_states()
    return model


@functools.cache
def _warn_numpy_unavailable(why: str) -> None:
    logger.warning(f"Silero VAD runs on ONNX Runtime: the NumPy runtime cannot load it ({why})")


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


def default_inference_threads() -> int:
    """Half the cores (at least one): the other half stays for the calls' event loop."""
    return max(1, (os.cpu_count() or 1) // 2)


class TurnInferencePool:
    """The process-wide threads that run Smart Turn inferences for every call.

    ``threads`` workers (FIFO queue), each lowered to ``nice`` (added to the process's niceness,
    Linux thread priorities; elsewhere the threads keep the process's priority). Nothing is
    started until the first inference. A cancelled asyncio future of ``run_in_executor`` cancels
    its job while it still waits in the queue, so a pause the caller speaks on costs nothing.
    """

    def __init__(self, threads: int | None = None, nice: int = 10) -> None:
        threads = default_inference_threads() if threads is None else threads
        if threads < 1:
            raise ValueError(f"turn model threads must be >= 1, got {threads}")
        if not 0 <= nice <= 19:
            raise ValueError(f"turn model nice must be between 0 and 19, got {nice}")
        self.threads = threads
        self.nice = nice
        #: OS thread ids of the pool's threads (CPU accounting: /proc/<pid>/task/<id>).
        self.native_ids: set[int] = set()
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    @property
    def executor(self) -> ThreadPoolExecutor:
        """The pool's executor (its threads start on demand)."""
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    max_workers=self.threads,
                    thread_name_prefix="smart-turn",
                    initializer=self._init_thread,
                )
            return self._executor

    def _init_thread(self) -> None:
        self.native_ids.add(threading.get_native_id())
        _lower_priority(self.nice)

    def shutdown(self) -> None:
        """Stop the threads (queued jobs still run); the next inference starts new ones."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)


def _lower_priority(nice: int) -> None:
    """Run in each pool thread: lower this thread's priority by ``nice``."""
    if nice <= 0 or not hasattr(os, "setpriority"):
        return
    tid = threading.get_native_id()
    try:
        # PRIO_PROCESS with a thread id sets that thread's niceness (Linux)
        current = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(19, current + nice))
    except OSError as e:
        logger.warning(f"Smart Turn thread keeps its priority: {e}")


_pool = TurnInferencePool()


def inference_pool() -> TurnInferencePool:
    """The process's Smart Turn pool."""
    return _pool


def configure_inference(threads: int | None = None, nice: int = 10) -> TurnInferencePool:
    """Set the process's Smart Turn pool (server start-up, from ``Settings``; ``threads`` None
    or 0: :func:`default_inference_threads`). A pool with other settings replaces the current
    one, whose threads finish their queued jobs and stop."""
    global _pool
    new = TurnInferencePool(threads or None, nice)
    if (new.threads, new.nice) == (_pool.threads, _pool.nice):
        return _pool
    old, _pool = _pool, new
    old.shutdown()
    return _pool


def smart_turn_model_name() -> str:
    """The bundled Smart Turn model's name (its file name without ``.onnx``)."""
    return SMART_TURN_MODEL[1].removesuffix(".onnx")


def smart_turn_probability(
    audio: np.ndarray, sample_rate: int, session: ort.InferenceSession | None = None
) -> float:
    """Smart Turn v3's probability that a turn is complete, as Pipecat's analyzer computes it.

    ``audio``: the turn's segment as float32 (PCM16 / 32768) at ``sample_rate``, what Pipecat's
    analyzer passes its model (the end of the turn, at most 8 s). Resampled to 16 kHz as Pipecat
    does (soxr, HQ), the features of :func:`log_mel_features` (Pipecat's numbers, the padding's
    identical frames computed once), the process-wide session unless ``session`` is given.
    Used by the bot's analyzer and by the model service's ``turn.check``
    (``model_service/turn_model.py``), so both give the same probability for the same audio.
    """
    if sample_rate != FEATURES_RATE:
        audio = soxr.resample(audio, sample_rate, FEATURES_RATE, quality="HQ")
    features = log_mel_features(audio)
    session = session or shared_session(SMART_TURN_MODEL)
    outputs = session.run(None, {"input_features": features[np.newaxis]})
    return float(outputs[0][0].item())


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


#: The longest a thread holds the GIL while another waits for it (Python's default is 5 ms).
GIL_SWITCH_SECS = 0.001


def shorten_gil_switch_interval() -> None:
    """Let the Smart Turn pool take the GIL within 1 ms of asking (bot server start-up).

    A busy event loop gives the GIL up only every switch interval, at blocking I/O or inside C
    code that releases it (ONNX Runtime's ``run``; NumPy on large arrays). Each Python step of
    an inference in the pool waited for that, so with 50 calls on 2 cores a turn's verdict
    queued behind the loop: 50-call voice-to-voice p50 966-1348 ms with Silero on NumPy (which
    holds the GIL) against 608-1291 ms on ONNX Runtime, and 549-720 ms on NumPy with a 1 ms
    interval (benchmarks/RESULTS.md). Never lengthens an interval already shorter.
    """
    if sys.getswitchinterval() > GIL_SWITCH_SECS:
        sys.setswitchinterval(GIL_SWITCH_SECS)


def warm_up() -> None:
    """Load both models now (server start-up) instead of during the first call."""
    shared_session(SILERO_MODEL)
    silero_model()
    shared_session(SMART_TURN_MODEL)
