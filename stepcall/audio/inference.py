"""Silero VAD and Smart Turn v3 for many calls in one process: one ONNX session each, shared.

Pipecat's analyzers load their ONNX model per instance, i.e. per call: every call paid the model
load (CPU at call start) and its own ONNX Runtime session memory, and Smart Turn's session ran a
2-thread pool per call whose idle threads spin. Here both models are loaded once per process;
each call keeps only its own state (Silero's recurrent state and context, Smart Turn's audio
buffer), which Pipecat already keeps outside the session. ``InferenceSession.run`` is safe to
call from several threads at once. Pipecat's analyzers on these models:
:mod:`pipeline.turn_taking.shared_analyzers`.

Silero also runs inline on the event loop instead of through a per-call thread: one window costs
~0.1 ms, about what the thread hop alone costs (measured: 97 µs inference, 91 µs hop), so the hop
only doubled the CPU per frame. Smart Turn (~33 ms per end of speech) stays on its thread.
Smart Turn's input features come from :mod:`stepcall.audio.smart_turn_features` (Pipecat's numbers,
the zero padding in front of a short turn transformed once instead of frame by frame).
Silero's network runs in NumPy (:mod:`stepcall.audio.silero`, the weights of the same ONNX file,
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
import threading
from concurrent.futures import ThreadPoolExecutor
from importlib import resources

import numpy as np
import onnxruntime as ort
import soxr
import threadpoolctl
from loguru import logger
from pipecat.audio.vad.silero import SileroOnnxModel

from stepcall.audio.silero import SileroLayoutError, SileroNumpyModel
from stepcall.audio.smart_turn_features import RATE as FEATURES_RATE
from stepcall.audio.smart_turn_features import log_mel_features

SILERO_MODEL = ("pipecat.audio.vad.data", "silero_vad.onnx")
SMART_TURN_MODEL = ("pipecat.audio.turn.smart_turn.data", "smart-turn-v3.2-cpu.onnx")

_lock = threading.Lock()


def _model_path(package: str, name: str) -> str:
    return str(resources.files(package).joinpath(name))


def limit_blas_threads() -> None:
    """One BLAS thread for NumPy in this process (idle OpenBLAS workers spin, burning a core).

    Applied on every shared-session request (~0.5 ms), not once: a BLAS library loaded or reset
    after the first call (seen in the test process once vLLM's CPU build was installed) is
    limited too.
    """
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


#: How Silero's network is run: "numpy" (stepcall.audio.silero) or "onnxruntime".
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
    file is not the network ``stepcall.audio.silero`` knows (logged once).
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
    (``model_service/turn_checks.py``), so both give the same probability for the same audio.
    """
    if sample_rate != FEATURES_RATE:
        audio = soxr.resample(audio, sample_rate, FEATURES_RATE, quality="HQ")
    features = log_mel_features(audio)
    session = session or shared_session(SMART_TURN_MODEL)
    outputs = session.run(None, {"input_features": features[np.newaxis]})
    return float(outputs[0][0].item())


def warm_up() -> None:
    """Load both models now (server start-up) instead of during the first call."""
    shared_session(SILERO_MODEL)
    silero_model()
    shared_session(SMART_TURN_MODEL)
