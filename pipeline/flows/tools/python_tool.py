"""Python handler tools: a function in an importable module, named by a dotted path.

The handler is imported when the flow is attached (a bad path fails the call set-up, not the
first tool call). It may be ``async`` or plain (plain functions run in a worker thread) and take
``(arguments)`` or ``(arguments, flow_manager)``.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

from pipeline.flows.format.model import ToolSpec
from pipeline.flows.format.pipecat_nodes import import_handler


class PythonTool:
    """Runs one python tool; ``await tool(arguments, flow_manager)`` returns its result."""

    def __init__(self, spec: ToolSpec) -> None:
        if spec.kind != "python" or not spec.handler:
            raise ValueError(f"tool '{spec.name}' is not a python tool with a handler")
        self.spec = spec
        self.function = import_handler(spec.handler)
        self._wants_flow_manager = _positional_count(self.function) >= 2

    async def __call__(self, arguments: dict[str, Any], flow_manager: Any = None) -> Any:
        """Call the handler (its exceptions propagate; the registry turns them into errors)."""
        args: tuple[Any, ...] = (
            (arguments, flow_manager) if self._wants_flow_manager else (arguments,)
        )
        if inspect.iscoroutinefunction(self.function):
            return await self.function(*args)
        result = await asyncio.to_thread(self.function, *args)
        if inspect.isawaitable(result):
            result = await result
        return result


def _positional_count(function: Any) -> int:
    try:
        params = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return 1
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return 2
    return sum(1 for p in params if p.kind in kinds)
