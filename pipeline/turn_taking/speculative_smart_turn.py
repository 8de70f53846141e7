"""SpeculativeSmartTurnAnalyzer: Smart Turn v3 run during the pause, before VAD ends speech.

Pipecat runs Smart Turn when VAD reports the end of speech, so its inference (~35 ms idle, up to
~100 ms on a busy machine) sat between the caller's silence and the bot's answer. Here the model
runs as soon as the pause is ``speculate_after_secs`` old (VAD's stop time minus the expected
inference time), on the audio so far, on the analyzer's own thread. When VAD then ends speech:

- same pause (``EndpointVADAnalyzer.pause_key`` unchanged) and the early verdict is COMPLETE: it is
  the answer; the turn ends without waiting for a second inference;
- otherwise (speech resumed, or the early look said INCOMPLETE): Pipecat's usual inference on the
  whole buffer, as before, so a pause that only looked unfinished early is judged again with the
  full silence.

With a ``judge`` (``StepAudio2Service.check_turn``: the model service's turn model, the same
inference on the same audio), each inference is asked of the model service instead of run on
this process's Smart Turn pool: the segment Pipecat's analyzer would feed its model, sent as
PCM16; its probability comes back. Where the judge has no answer (a service without a turn
model, the connection lost, too slow) the inference runs here as before.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

import numpy as np
from loguru import logger
from pipecat.audio.turn.base_turn_analyzer import EndOfTurnState
from pipecat.metrics.metrics import MetricsData, TurnMetricsData

from pipeline.turn_taking.endpoint_vad import EndpointVADAnalyzer
from pipeline.turn_taking.shared_analyzers import SharedSmartTurnAnalyzerV3

#: Start the early inference this long before VAD's stop time.
INFERENCE_LEAD_SECS = 0.1

Verdict = tuple[EndOfTurnState, MetricsData | None]
#: Asks someone else to judge a turn: (PCM16 bytes, sample rate) -> probability it is
#: complete, or None (then the analyzer runs the model itself).
Judge = Callable[[bytes, int], Awaitable[float | None]]


class SpeculativeSmartTurnAnalyzer(SharedSmartTurnAnalyzerV3):
    """Smart Turn v3 (shared session) that starts its inference early in a pause."""

    def __init__(
        self,
        *,
        vad: EndpointVADAnalyzer,
        speculate_after_secs: float | None = None,
        judge: Judge | None = None,
        **kwargs: Any,
    ) -> None:
        """Create the analyzer.

        Args:
            vad: The call's VAD analyzer, whose pauses trigger the early inference.
            speculate_after_secs: Pause length that starts it (default: VAD's ``stop_secs``
                minus ``INFERENCE_LEAD_SECS``, at least 0).
            judge: Who runs the inferences (the model service's turn model); None: this
                process's Smart Turn pool.
            **kwargs: Passed to Pipecat's Smart Turn analyzer (``params``, ``sample_rate``).
        """
        super().__init__(**kwargs)
        self._vad = vad
        self._judge = judge
        #: Inferences answered by the judge / run on this process's pool.
        self.judged = 0
        self.local_runs = 0
        self._speculate_after = speculate_after_secs
        self._early: tuple[Hashable, asyncio.Future[Verdict]] | None = None
        #: Ends of turn answered by the early inference / by an inference after VAD's stop.
        self.early_hits = 0
        self.late_runs = 0
        #: Early inferences started (a pause the caller then spoke on wastes one).
        self.early_runs = 0

    @property
    def speculate_after_secs(self) -> float:
        """The pause (seconds after the caller's last loud audio) that starts the early
        inference."""
        if self._speculate_after is not None:
            return self._speculate_after
        return max(0.0, self._vad.params.stop_secs - INFERENCE_LEAD_SECS)

    def append_audio(self, buffer: bytes, is_speech: bool) -> EndOfTurnState:
        """Pipecat's buffering; then start the early inference once a pause is old enough."""
        state = super().append_audio(buffer, is_speech)
        self._restamp_last(buffer)
        if (
            state == EndOfTurnState.INCOMPLETE
            and self._speech_triggered
            and self._audio_buffer
            and self._vad.pause_secs >= self.speculate_after_secs
        ):
            key = self._vad.pause_key
            if self._early is None or self._early[0] != key:
                self._drop_early()
                future = asyncio.ensure_future(self._infer(list(self._audio_buffer)))
                self._early = (key, future)
                self.early_runs += 1
        return state

    def _restamp_last(self, buffer: bytes) -> None:
        """Keep a long buffer (a phone input's quiet hold: up to 200 ms that waited) as 20 ms
        pieces, each stamped when its audio ended. Pipecat stamps each buffer when it comes and
        cuts the audio before speech by those stamps (``pre_speech_ms``), so a long buffer
        would bring up to its whole length more of the quiet before the caller's words."""
        piece = max(1, self.sample_rate // 50)
        if not self._audio_buffer or len(buffer) <= 4 * piece:  # up to a 40 ms pair as it is
            return
        stamp, chunk = self._audio_buffer[-1]
        if chunk.base is not buffer:
            return  # the buffer was not kept (the turn ended on it)
        n = chunk.size
        self._audio_buffer[-1:] = [
            (stamp - (n - min(i + piece, n)) / self.sample_rate, chunk[i : i + piece])
            for i in range(0, n, piece)
        ]

    async def analyze_end_of_turn(self) -> tuple[EndOfTurnState, MetricsData | None]:
        """The early verdict when it still applies and says COMPLETE; else Pipecat's inference."""
        early, self._early = self._early, None
        if early is not None and early[0] == self._vad.pause_key:
            try:
                state, result = await early[1]
            except Exception as e:  # a failed early look falls back to the usual inference
                logger.warning(f"{self}: early Smart Turn inference failed: {e!r}")
            else:
                if state == EndOfTurnState.COMPLETE:
                    self.early_hits += 1
                    self._clear(state)
                    return state, result
        elif early is not None:
            _discard(early[1])
        self.late_runs += 1
        state, result = await self._infer(self._audio_buffer)
        if state == EndOfTurnState.COMPLETE:
            self._clear(state)
        return state, result

    async def _infer(self, buffer: list[tuple[float, np.ndarray]]) -> Verdict:
        """One inference on ``buffer`` (Pipecat's ``(time, int16 chunk)`` list): the judge's
        when it answers, else Pipecat's on this process's pool."""
        if self._judge is not None:
            segment = self.segment(buffer)
            if segment.size == 0:
                return EndOfTurnState.INCOMPLETE, None  # as Pipecat: nothing to judge
            t0 = time.perf_counter()
            try:
                probability = await self._judge(segment.tobytes(), self.sample_rate)
            except Exception as e:  # never lose a turn to the judge: judge it here instead
                logger.warning(f"{self}: the turn model's judge failed: {e!r}")
                probability = None
            if probability is not None:
                self.judged += 1
                complete = probability > 0.5
                state = EndOfTurnState.COMPLETE if complete else EndOfTurnState.INCOMPLETE
                return state, TurnMetricsData(
                    processor="BaseSmartTurn",
                    is_complete=complete,
                    probability=probability,
                    e2e_processing_time_ms=(time.perf_counter() - t0) * 1000.0,
                )
        self.local_runs += 1
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._model_executor, self._process_speech_segment, buffer
        )

    def segment(self, buffer: list[tuple[float, np.ndarray]]) -> np.ndarray:
        """The int16 audio of ``buffer`` that Pipecat's ``_process_speech_segment`` gives its
        model (as float32 / 32768): from ``pre_speech_ms`` plus VAD's start time before the
        speech began, the last ``max_duration_secs`` of it."""
        if not buffer:
            return np.zeros(0, dtype=np.int16)
        pre_speech_secs = self._params.pre_speech_ms / 1000 + self._vad_start_secs
        start_time = self._speech_start_time - pre_speech_secs
        start = next((i for i, (t, _) in enumerate(buffer) if t >= start_time), 0)
        audio = np.concatenate([chunk for _, chunk in buffer[start:]])
        max_samples = int(self._params.max_duration_secs * self.sample_rate)
        return audio[-max_samples:] if audio.size > max_samples else audio

    def _clear(self, turn_state: EndOfTurnState) -> None:
        super()._clear(turn_state)
        self._drop_early()

    def _drop_early(self) -> None:
        if self._early is not None:
            _discard(self._early[1])
            self._early = None


def _discard(future: asyncio.Future[Verdict]) -> None:
    """Forget an early inference (an executor job cannot be stopped; its result is dropped)."""
    if not future.done():
        future.cancel()
    elif not future.cancelled():
        future.exception()  # retrieved, so asyncio does not log it as never retrieved
