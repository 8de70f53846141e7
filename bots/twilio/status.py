"""Call status callbacks: what Twilio reported about each call (initiated, ringing, answered...).

``POST /twilio/status`` turns each callback into a :class:`CallStatusEvent` and hands it to a
:class:`CallStatusStore`. :class:`InMemoryCallStatusStore` keeps the latest calls in memory; a
database-backed store implements the same three async methods.
"""

from __future__ import annotations

import abc
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

TERMINAL_STATUSES = frozenset({"completed", "busy", "failed", "no-answer", "canceled"})


@dataclass(frozen=True)
class CallStatusEvent:
    """One status callback of one call."""

    call_sid: str
    status: str
    received_at: float
    sequence: int | None = None
    direction: str | None = None
    from_number: str | None = None
    to_number: str | None = None
    duration_secs: int | None = None
    answered_by: str | None = None
    error_code: str | None = None
    raw: dict[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def from_form(cls, form: Mapping[str, Any], *, received_at: float | None = None) -> CallStatusEvent:
        """Parse Twilio's callback form; ValueError naming the missing field."""
        call_sid = str(form.get("CallSid") or "")
        status = str(form.get("CallStatus") or "")
        if not call_sid:
            raise ValueError("status callback without CallSid")
        if not status:
            raise ValueError(f"status callback for {call_sid} without CallStatus")

        def opt_int(name: str) -> int | None:
            value = form.get(name)
            try:
                return int(str(value)) if value not in (None, "") else None
            except ValueError:
                return None

        def opt_str(name: str) -> str | None:
            value = form.get(name)
            return str(value) if value not in (None, "") else None

        return cls(
            call_sid=call_sid,
            status=status,
            received_at=time.time() if received_at is None else received_at,
            sequence=opt_int("SequenceNumber"),
            direction=opt_str("Direction"),
            from_number=opt_str("From"),
            to_number=opt_str("To"),
            duration_secs=opt_int("CallDuration"),
            answered_by=opt_str("AnsweredBy"),
            error_code=opt_str("ErrorCode"),
            raw={str(k): str(v) for k, v in form.items()},
        )

    @property
    def terminal(self) -> bool:
        """True for statuses after which the call is over."""
        return self.status in TERMINAL_STATUSES

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (without the raw callback)."""
        d = asdict(self)
        d.pop("raw")
        return d


class CallStatusStore(abc.ABC):
    """Where status callbacks are kept (in memory now; a database later)."""

    @abc.abstractmethod
    async def record(self, event: CallStatusEvent) -> None:
        """Store one callback."""

    @abc.abstractmethod
    async def events(self, call_sid: str) -> list[CallStatusEvent]:
        """Every stored callback of a call, in Twilio's order (empty when unknown)."""

    async def latest(self, call_sid: str) -> CallStatusEvent | None:
        """The most recent callback of a call (None when unknown)."""
        events = await self.events(call_sid)
        return events[-1] if events else None


class InMemoryCallStatusStore(CallStatusStore):
    """Keeps the callbacks of the ``max_calls`` most recently seen calls."""

    def __init__(self, max_calls: int = 10_000) -> None:
        """Create an empty store that forgets the oldest calls beyond ``max_calls``."""
        if max_calls < 1:
            raise ValueError(f"max_calls must be at least 1, got {max_calls}")
        self.max_calls = max_calls
        self._calls: OrderedDict[str, list[CallStatusEvent]] = OrderedDict()

    async def record(self, event: CallStatusEvent) -> None:
        """Store one callback (callbacks may arrive out of order: kept sorted by sequence)."""
        events = self._calls.setdefault(event.call_sid, [])
        self._calls.move_to_end(event.call_sid)
        events.append(event)
        events.sort(key=lambda e: (e.sequence if e.sequence is not None else 1 << 30, e.received_at))
        while len(self._calls) > self.max_calls:
            self._calls.popitem(last=False)

    async def events(self, call_sid: str) -> list[CallStatusEvent]:
        """Every stored callback of a call."""
        return list(self._calls.get(call_sid, ()))
