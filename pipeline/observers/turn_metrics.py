"""TurnMetricsObserver: per-turn latency of a call, logged with the call id.

Measured in the bot process (network and handset playout excluded):

- ``response_ms``: end of the caller's speech (VAD stop minus its ``stop_secs``) to the first
  bot audio written by the output transport (``BotStartedSpeakingFrame``).
- ``bargein_stop_ms``: the interruption (``InterruptionFrame`` while the bot speaks) to the bot's
  audio stopping (``BotStoppedSpeakingFrame``).
- ``bargein_from_speech_ms``: the caller's speech onset (VAD start minus ``start_secs``) to the
  bot's audio stopping; includes the minimum-interruption duration on purpose.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from loguru import logger
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    InterruptionFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.observers.base_observer import BaseObserver, FramePushed

from pipeline.observers.first_sighting import FirstSighting


@dataclass
class TurnMetrics:
    """Latencies of one bot turn (None: not applicable to this turn)."""

    turn: int
    response_ms: float | None = None
    bargein_stop_ms: float | None = None
    bargein_from_speech_ms: float | None = None


class TurnMetricsObserver(BaseObserver):
    """Watches a call's frames and records :class:`TurnMetrics` per bot turn.

    Events: ``on_turn_metrics(observer, metrics)`` after each bot turn (when it stops speaking).
    """

    #: No audio frames (see ``pipeline.observers.worker_proxy``).
    wants_audio = False

    def __init__(self, call_id: str = "", **kwargs) -> None:
        kwargs.setdefault("observe_every_push", False)  # it times each frame's first push
        super().__init__(**kwargs)
        self.call_id = call_id
        self.turns: list[TurnMetrics] = []
        self._log = logger.bind(call_id=call_id)
        self._sightings = FirstSighting(limit=4096)
        self._speech_end: float | None = None
        self._speech_start: float | None = None
        self._bot_speaking = False
        self._interrupt_at: float | None = None
        self._current: TurnMetrics | None = None
        self._register_event_handler("on_turn_metrics")

    async def on_push_frame(self, data: FramePushed) -> None:
        """Timestamp the frames that matter, once each."""
        frame = data.frame
        if not isinstance(
            frame,
            (
                VADUserStartedSpeakingFrame,
                VADUserStoppedSpeakingFrame,
                InterruptionFrame,
                BotStartedSpeakingFrame,
                BotStoppedSpeakingFrame,
            ),
        ):
            return
        if not self._sightings.first(data.frame):
            return
        now = time.monotonic()
        if isinstance(frame, VADUserStartedSpeakingFrame):
            self._speech_start = now - float(frame.start_secs)
        elif isinstance(frame, VADUserStoppedSpeakingFrame):
            self._speech_end = now - float(frame.stop_secs)
        elif isinstance(frame, InterruptionFrame):
            if self._bot_speaking and self._interrupt_at is None:
                self._interrupt_at = now
        elif isinstance(frame, BotStartedSpeakingFrame):
            self._bot_speaking = True
            self._interrupt_at = None
            self._current = TurnMetrics(turn=len(self.turns) + 1)
            if self._speech_end is not None:
                self._current.response_ms = (now - self._speech_end) * 1000.0
                self._speech_end = None
        elif isinstance(frame, BotStoppedSpeakingFrame):
            self._bot_speaking = False
            metrics = self._current or TurnMetrics(turn=len(self.turns) + 1)
            self._current = None
            if self._interrupt_at is not None:
                metrics.bargein_stop_ms = (now - self._interrupt_at) * 1000.0
                if self._speech_start is not None:
                    metrics.bargein_from_speech_ms = (now - self._speech_start) * 1000.0
                self._interrupt_at = None
            self.turns.append(metrics)
            self._log.info(self._describe(metrics))
            await self._call_event_handler("on_turn_metrics", metrics)

    @staticmethod
    def _describe(m: TurnMetrics) -> str:
        parts = [f"turn {m.turn}:"]
        if m.response_ms is not None:
            parts.append(f"end of speech -> first bot audio {m.response_ms:.0f} ms")
        else:
            parts.append("bot spoke first")
        if m.bargein_stop_ms is not None:
            parts.append(f"; barge-in stopped the bot in {m.bargein_stop_ms:.0f} ms")
            if m.bargein_from_speech_ms is not None:
                parts.append(f"({m.bargein_from_speech_ms:.0f} ms after speech onset)")
        return " ".join(parts)
