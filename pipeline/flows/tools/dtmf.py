"""Keypad input for the ``collect_dtmf`` tool: digits pressed while a collection is open."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass


@dataclass(frozen=True)
class DTMFResult:
    """What the caller typed and why collection stopped (terminator, max_digits or timeout)."""

    digits: str
    ended_by: str


class DTMFCollector:
    """Buffers keypad presses (``feed``) for whoever is waiting in ``collect``.

    Keys pressed while no collection is open are ignored (the model hears them anyway through
    the service's own DTMF handling).
    """

    def __init__(self) -> None:
        self._queue: asyncio.Queue[str] | None = None

    @property
    def collecting(self) -> bool:
        """True while a ``collect`` call waits for keys."""
        return self._queue is not None

    def feed(self, key: str) -> None:
        """One key press: ``0``-``9``, ``*`` or ``#``."""
        if self._queue is not None:
            self._queue.put_nowait(key)

    async def collect(
        self,
        *,
        max_digits: int | None = None,
        terminator: str | None = "#",
        timeout_secs: float = 10.0,
        inter_digit_secs: float = 5.0,
    ) -> DTMFResult:
        """Wait for keys until ``terminator``, ``max_digits`` keys, or a timeout.

        ``timeout_secs`` bounds the wait for the first key, ``inter_digit_secs`` each later one.
        The terminator is not part of the digits.
        """
        if self._queue is not None:
            raise RuntimeError("a DTMF collection is already running")
        self._queue = asyncio.Queue()
        digits = ""
        try:
            while True:
                wait = timeout_secs if not digits else inter_digit_secs
                try:
                    key = await asyncio.wait_for(self._queue.get(), wait)
                except TimeoutError:
                    return DTMFResult(digits, "timeout")
                if terminator and key == terminator:
                    return DTMFResult(digits, "terminator")
                digits += key
                if max_digits and len(digits) >= max_digits:
                    return DTMFResult(digits, "max_digits")
        finally:
            self._queue = None
