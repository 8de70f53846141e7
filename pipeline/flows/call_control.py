"""CallControl: what a bot can do to the live call itself (hang up, transfer).

Tools such as the ``end_call`` and ``transfer_call`` built-ins talk to this interface; each
transport provides an implementation (Twilio: REST API calls on the live call; WebRTC: close the
peer connection / tell the widget). Tests use the real implementations against local fakes of the
outside world (e.g. a loopback fake of Twilio's REST API).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field


@dataclass
class TransferResult:
    """Outcome of a transfer request."""

    ok: bool
    detail: str = ""


@dataclass
class CallControl(abc.ABC):
    """Controls one live call."""

    call_id: str
    events: list[str] = field(default_factory=list)  # what was done, for call records

    @abc.abstractmethod
    async def hang_up(self, reason: str = "completed") -> None:
        """End the call (after the goodbye has played: the caller holds EndFrame until then)."""

    @abc.abstractmethod
    async def transfer(self, to: str, *, warm: bool = False, whisper: str | None = None) -> TransferResult:
        """Hand the caller to a human at ``to`` (E.164 number or SIP URI)."""
