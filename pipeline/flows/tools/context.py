"""What tools may do to the running call, handed to them by the flow runtime."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pipeline.flows.format.model import FlowSpec
from pipeline.flows.tools.dtmf import DTMFCollector

if TYPE_CHECKING:
    from pipeline.flows.call_control import CallControl

#: ``async def update(voice=..., style=...)``: change the model session's voice / style.
SettingsUpdater = Callable[..., Awaitable[None]]
#: ``async def end(reason)``: hang up once the bot's next response (the goodbye) is done.
EndScheduler = Callable[[str], Awaitable[None]]


async def _no_settings(**_: Any) -> None:
    return None


async def _no_end(_: str) -> None:
    return None


@dataclass
class ToolContext:
    """The call-side services built-in tools use; the runtime fills it in."""

    spec: FlowSpec
    call_control: CallControl | None = None
    update_settings: SettingsUpdater = _no_settings
    schedule_end: EndScheduler = _no_end
    dtmf: DTMFCollector = field(default_factory=DTMFCollector)
    #: Seconds ``collect_dtmf`` waits for the first key.
    dtmf_timeout_secs: float = 15.0
