"""MinDurationUserTurnStartStrategy: barge-in only after the caller has really started talking.

A speech-to-speech call has no transcripts, so Pipecat's ``MinWordsUserTurnStartStrategy`` cannot
tell a backchannel ("mm-hm", "yeah") from a real interruption. This strategy uses duration
instead: while the bot is speaking, the user turn (and so the interruption) starts only after
``min_secs`` of continuous speech, counted from the speech onset (VAD's ``start_secs`` included).
A short utterance whose VAD stop arrives first is a backchannel: it is ignored and the bot keeps
talking. While the bot is silent, a user turn starts as soon as VAD fires, as usual.
"""

from __future__ import annotations

from loguru import logger
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    Frame,
    InputAudioRawFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.turns.types import ProcessFrameResult
from pipecat.turns.user_start.base_user_turn_start_strategy import BaseUserTurnStartStrategy


class MinDurationUserTurnStartStrategy(BaseUserTurnStartStrategy):
    """Start a user turn on VAD; while the bot speaks, only after ``min_secs`` of speech."""

    def __init__(self, *, min_secs: float, call_id: str = "", **kwargs) -> None:
        """Create the strategy.

        Args:
            min_secs: Seconds of continuous caller speech needed to interrupt the bot
                (0: any VAD speech start interrupts).
            call_id: The call's id, for the logs.
            **kwargs: Passed to ``BaseUserTurnStartStrategy``.
        """
        if min_secs < 0:
            raise ValueError(f"min_secs must be >= 0, got {min_secs}")
        super().__init__(**kwargs)
        self.min_secs = float(min_secs)
        self._bot_speaking = False
        self._pending = False
        self._heard_secs = 0.0
        self.backchannels = 0  # short utterances ignored while the bot spoke
        self._log = logger.bind(call_id=call_id)

    async def handle_user_turn_started(self) -> None:
        """A turn started (from this or another strategy): nothing is pending any more."""
        self._pending = False
        self._heard_secs = 0.0

    async def process_frame(self, frame: Frame) -> ProcessFrameResult:
        """Track the bot's speech and the caller's, and decide when the user turn starts."""
        if isinstance(frame, BotStartedSpeakingFrame):
            self._bot_speaking = True
        elif isinstance(frame, BotStoppedSpeakingFrame):
            self._bot_speaking = False
            if self._pending:  # the caller is still talking and the bot is done: their turn
                return await self._start()
        elif isinstance(frame, VADUserStartedSpeakingFrame):
            if not self._bot_speaking or self.min_secs <= 0:
                return await self._start()
            self._pending = True
            self._heard_secs = float(frame.start_secs)
            if self._heard_secs >= self.min_secs:
                return await self._start()
        elif isinstance(frame, VADUserStoppedSpeakingFrame):
            if self._pending:
                self._pending = False
                self.backchannels += 1
                self._log.debug(
                    f"backchannel ignored: {self._heard_secs:.2f} s of speech while the bot "
                    f"spoke (< {self.min_secs:.2f} s)"
                )
        elif isinstance(frame, InputAudioRawFrame) and self._pending:
            self._heard_secs += (
                len(frame.audio) / 2 / frame.sample_rate / max(1, frame.num_channels)
            )
            if self._heard_secs >= self.min_secs:
                return await self._start()
        return ProcessFrameResult.CONTINUE

    async def _start(self) -> ProcessFrameResult:
        self._pending = False
        await self.trigger_user_turn_started()
        return ProcessFrameResult.STOP
