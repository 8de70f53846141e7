"""Tools a flow's model may call: HTTP webhooks, python handlers and the built-ins.

``ToolBox(spec, ctx)`` builds every tool of a ``FlowSpec`` as a pipecat.flows handler
``async def handler(arguments, flow_manager)`` that validates the arguments against the tool's
JSON Schema and never raises. The flow runtime (``pipeline/flows/runtime.py``) supplies the
``ToolContext`` (call control, settings updates, DTMF, hang-up scheduling).
"""

from __future__ import annotations

from pipeline.flows.tools.arguments import (
    ToolArgumentError,
    argument_problems,
    validate_arguments,
)
from pipeline.flows.tools.context import ToolContext
from pipeline.flows.tools.dtmf import DTMFCollector, DTMFResult
from pipeline.flows.tools.registry import SAVE_VARIABLES, ToolBox

__all__ = [
    "SAVE_VARIABLES",
    "DTMFCollector",
    "DTMFResult",
    "ToolArgumentError",
    "ToolBox",
    "ToolContext",
    "argument_problems",
    "validate_arguments",
]
