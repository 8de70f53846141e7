"""CallerAudioGate: the caller's audio reaches the speech-to-speech service only while it is used.

The model hears the caller's turns and nothing else: the audio of a user turn, from
``UserStartedSpeakingFrame`` to ``UserStoppedSpeakingFrame``, plus a pre-roll of what came just
before the turn started (VAD reports speech only after ``start_secs`` of it, and the interrupting
words of a barge-in started before the minimum-duration strategy let them through). Outside
turns the service used to take every 20 ms frame through its input queue only to drop it into
a pre-roll buffer; on a phone call that is most frames. This processor, in direct mode (no queue
or task of its own), keeps the pre-roll itself and hands the service the turn's audio only:

    ... UserStartedSpeakingFrame, pre-roll frames (oldest first), live frames ...,
    UserStoppedSpeakingFrame, (nothing until the next turn)

The user aggregator's ``UserSpeakingFrame`` heartbeat (a few a second while the caller talks,
broadcast both ways) stops here on its way down: nothing downstream reads it, and the worker's
idle monitor and the observers have seen it on its first push. Every other frame passes
unchanged and in order.
"""

from __future__ import annotations

import collections

from pipecat.frames.frames import (
    Frame,
    InputAudioRawFrame,
    UserSpeakingFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

DEFAULT_PREROLL_SECS = 0.6


class CallerAudioGate(FrameProcessor):
    """Passes caller audio downstream during user turns, with a pre-roll at each turn's start."""

    def __init__(self, *, preroll_secs: float = DEFAULT_PREROLL_SECS, **kwargs) -> None:
        """``preroll_secs``: caller audio kept from before a turn starts and sent with it."""
        if preroll_secs < 0:
            raise ValueError(f"preroll_secs must be >= 0, got {preroll_secs}")
        kwargs.setdefault("enable_direct_mode", True)
        super().__init__(**kwargs)
        self.preroll_secs = preroll_secs
        self._preroll: collections.deque[InputAudioRawFrame] = collections.deque()
        self._preroll_samples = 0
        self._in_turn = False
        #: Caller frames held back outside turns (dropped once older than the pre-roll).
        self.frames_held = 0

    @property
    def in_turn(self) -> bool:
        """True between a user turn's start and stop."""
        return self._in_turn

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Gate caller audio by user turn; everything else passes."""
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame) and direction == FrameDirection.DOWNSTREAM:
            if self._in_turn:
                await self.push_frame(frame, direction)
            else:
                self._hold(frame)
            return
        if isinstance(frame, UserSpeakingFrame) and direction == FrameDirection.DOWNSTREAM:
            return
        await self.push_frame(frame, direction)
        if direction != FrameDirection.DOWNSTREAM:
            return
        if isinstance(frame, UserStartedSpeakingFrame):
            self._in_turn = True
            preroll, self._preroll = self._preroll, collections.deque()
            self._preroll_samples = 0
            for held in preroll:
                await self.push_frame(held, direction)
        elif isinstance(frame, UserStoppedSpeakingFrame):
            self._in_turn = False

    def _hold(self, frame: InputAudioRawFrame) -> None:
        self.frames_held += 1
        self._preroll.append(frame)
        self._preroll_samples += len(frame.audio) // 2
        limit = int(self.preroll_secs * frame.sample_rate)
        while self._preroll and self._preroll_samples > limit:
            self._preroll_samples -= len(self._preroll.popleft().audio) // 2
