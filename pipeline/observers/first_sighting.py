"""FirstSighting: an observer sees each pushed frame once, not once per hop.

A Pipecat observer is told of every push of a frame, through every processor it crosses, and a
broadcast frame travels as two siblings (one up, one down). An observer that counts events (turns,
interruptions, errors) must count each frame once: this remembers the ids it has seen, a
broadcast's sibling with them, and forgets them all past ``limit`` (frames far apart in time are
never pushes of the same one).
"""

from __future__ import annotations

from typing import Any


class FirstSighting:
    """``first(frame)``: True the first time a frame (or its broadcast sibling) is seen."""

    def __init__(self, limit: int = 4096) -> None:
        self.limit = limit
        self._seen: set[int] = set()

    def first(self, frame: Any) -> bool:
        """Whether this is the first push of ``frame`` that this observer sees."""
        if frame.id in self._seen:
            return False
        self._seen.add(frame.id)
        sibling = getattr(frame, "broadcast_sibling_id", None)
        if sibling is not None:
            if sibling in self._seen:
                return False
            self._seen.add(sibling)
        if len(self._seen) > self.limit:
            self._seen.clear()
        return True
