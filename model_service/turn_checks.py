"""TurnModel: the turn model (Smart Turn v3) the model service runs for ``turn.check``.

A bot asks, during a pause of its caller's, whether the turn is complete: it sends the turn's
audio (what its own Smart Turn analyzer would read) and gets the probability back. The inference
is the bot's own (``stepcall.audio.inference.smart_turn_probability``: Pipecat's resampling,
features and the same ONNX file with the same session options), so the verdict is the one the
bot would have computed: the model moves from the bots' cores, where every call pays it, to the
model service's host, whose CPU cores sit next to the GPU mostly idle (vLLM drives the GPU from
one or two of them).

Inferences of all sessions run on one pool of ``threads`` (first come, first served); each
costs one core while it runs (single intra-op thread, no spinning). ``inference_cpu_secs``
sums their CPU time (the benchmarks report it).
"""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np

from stepcall import protocol as p


class TurnModel:
    """Smart Turn v3 for ``turn.check`` messages, on a pool of ``threads`` (default: half the
    cores, at least one: ``stepcall.audio.inference.default_inference_threads``)."""

    def __init__(self, threads: int | None = None) -> None:
        from stepcall.audio.inference import TurnInferencePool, smart_turn_model_name

        # the bot's pool class, at the process's own priority (nothing here to give way to)
        self._pool = TurnInferencePool(threads or None, nice=0)
        self.threads = self._pool.threads
        self.name = smart_turn_model_name()
        #: Checks answered with a probability, and their inferences' CPU seconds.
        self.checks = 0
        self.inference_cpu_secs = 0.0
        self._lock = threading.Lock()

    def warm_up(self) -> None:
        """Load the model now (service start-up) instead of at the first check."""
        from stepcall.audio.inference import SMART_TURN_MODEL, shared_session

        shared_session(SMART_TURN_MODEL)

    def _infer(self, pcm16: bytes, sample_rate: int) -> float:
        from stepcall.audio.inference import smart_turn_probability

        cpu0 = time.thread_time()
        # as Pipecat's analyzer converts its int16 segment
        audio = np.frombuffer(pcm16, dtype=np.int16).astype(np.float32) / 32768.0
        probability = smart_turn_probability(audio, sample_rate)
        with self._lock:
            self.checks += 1
            self.inference_cpu_secs += time.thread_time() - cpu0
        return probability

    async def judge(self, check: p.TurnCheck) -> p.TurnVerdict:
        """The verdict on ``check`` (an ``error`` verdict if the inference fails)."""
        t0 = time.perf_counter()
        loop = asyncio.get_running_loop()
        try:
            probability = await loop.run_in_executor(
                self._pool.executor, self._infer, check.pcm16(), check.sample_rate
            )
        except Exception as e:
            return p.TurnVerdict(
                check_id=check.check_id, error=f"inference failed: {type(e).__name__}: {e}"
            )
        return p.TurnVerdict(
            check_id=check.check_id,
            probability=probability,
            complete=probability > 0.5,
            inference_ms=(time.perf_counter() - t0) * 1000.0,
        )

    def close(self) -> None:
        """Stop the pool's threads (running inferences finish first)."""
        self._pool.shutdown()


async def answer_turn_check(turn_model: TurnModel | None, check: p.TurnCheck) -> p.TurnVerdict:
    """``turn.verdict`` for ``check``: the model's, or an error verdict when there is none."""
    if turn_model is None:
        return p.TurnVerdict(check_id=check.check_id, error="this model service runs no turn model")
    return await turn_model.judge(check)
