"""The caller turns committed to the model service that no response has answered yet.

A committed turn's audio is kept until a response to it produces audio (or a tool call): when
the model-service connection is lost before then, the service re-sends the audio to the new
session, commits it and asks for the response again (a retry) instead of losing the turn.
Several turns can be pending at once (the caller spoke again before the answer came); one
answer answers them all.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class PendingTurn:
    """One committed caller turn: its audio (PCM16 at the pipeline rate) and its sends."""

    audio: bytes
    #: Model sessions the turn was committed to (1 = sent once; each further one a retry).
    attempts: int = 0
    #: True once the current model session has the turn's audio and commit.
    sent: bool = False

    @property
    def retries(self) -> int:
        """Times the turn was re-sent to a new session."""
        return max(0, self.attempts - 1)


@dataclass
class PendingTurns:
    """Committed caller turns awaiting an answer (oldest first), at most ``max_retries`` each."""

    max_retries: int = 1
    turns: list[PendingTurn] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.turns)

    def __len__(self) -> int:
        return len(self.turns)

    def add(self, audio: bytes, *, sent: bool) -> PendingTurn:
        """A turn was committed (``sent``: to the current session)."""
        turn = PendingTurn(bytes(audio), attempts=1 if sent else 0, sent=sent)
        self.turns.append(turn)
        return turn

    def answered(self, count: int) -> None:
        """A response produced audio or a tool call: the ``count`` oldest turns (those pending
        when it was asked for) have their answer."""
        del self.turns[:count]

    def session_lost(self) -> None:
        """The model session is gone: no pending turn is on the next one yet."""
        for turn in self.turns:
            turn.sent = False

    def unsent(self) -> list[PendingTurn]:
        """Turns the current session does not have yet (oldest first)."""
        return [t for t in self.turns if not t.sent]

    @property
    def can_retry(self) -> bool:
        """True when no pending turn has used up its retries (a turn never sent has all)."""
        return all(t.attempts <= self.max_retries for t in self.turns)

    def give_up(self) -> int:
        """Drop the pending turns (they get no answer); how many there were."""
        count = len(self.turns)
        self.turns.clear()
        return count
