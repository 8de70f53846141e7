"""Build the tool handlers of a flow: webhook, python and built-in tools behind one interface.

Every handler has the pipecat.flows form ``async def handler(arguments, flow_manager)`` and:

1. checks the arguments against the tool's JSON Schema (a mismatch is an error *result* that
   names each bad field, so the model can retry);
2. runs the tool;
3. turns any exception into ``{"error": "<tool> failed: ..."}`` (the call never crashes).

A ``save_variables`` function is added when the flow declares ``variables``: the model calls it
to store what it collected in ``flow_manager.state`` (usable as ``{{ name }}`` in instructions).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from loguru import logger

from pipeline.flows.format.model import FlowSpec, ToolSpec, Variable
from pipeline.flows.format.pipecat_nodes import ToolHandler
from pipeline.flows.tools.arguments import ToolArgumentError, validate_arguments
from pipeline.flows.tools.builtins import BUILTINS
from pipeline.flows.tools.context import ToolContext
from pipeline.flows.tools.python_tool import PythonTool
from pipeline.flows.tools.webhook import WebhookTool

SAVE_VARIABLES = "save_variables"

_VARIABLE_JSON_TYPES = {"integer": "integer", "number": "number", "boolean": "boolean"}


class ToolBox:
    """The tools of one call: their handlers by name, and the resources they hold."""

    def __init__(self, spec: FlowSpec, ctx: ToolContext) -> None:
        self.spec = spec
        self.ctx = ctx
        self.webhooks: dict[str, WebhookTool] = {}
        #: Every tool call and its result, in order (for call records and tests).
        self.calls: list[tuple[str, dict[str, Any], Any]] = []
        self.handlers: dict[str, ToolHandler] = {
            tool.name: guarded(
                tool.name, tool.parameters, self._implementation(tool), on_result=self.record
            )
            for tool in spec.tools.values()
        }
        extra = save_variables_tool(spec)
        #: ``save_variables`` (when the flow has variables): offered in every node.
        self.global_tools: list[tuple[ToolSpec, ToolHandler]] = (
            [(extra, guarded(extra.name, extra.parameters, save_variables, on_result=self.record))]
            if extra is not None
            else []
        )

    def _implementation(self, tool: ToolSpec) -> Callable[[dict[str, Any], Any], Awaitable[Any]]:
        if tool.kind == "webhook":
            webhook = WebhookTool(tool, session=None)
            self.webhooks[tool.name] = webhook

            async def call_webhook(arguments: dict[str, Any], flow_manager: Any) -> Any:
                return await webhook(arguments)

            return call_webhook
        if tool.kind == "python":
            return PythonTool(tool)
        if tool.kind == "builtin":
            name = tool.builtin or tool.name
            if name not in BUILTINS:
                raise ValueError(f"tool '{tool.name}': unknown builtin '{name}'")
            return BUILTINS[name](tool, self.ctx)
        raise ValueError(f"tool '{tool.name}': unknown kind '{tool.kind}'")

    def record(self, name: str, arguments: dict[str, Any], result: Any) -> None:
        """Remember one call (the runtime's handlers call this)."""
        self.calls.append((name, arguments, result))

    async def close(self) -> None:
        """Release HTTP sessions."""
        for webhook in self.webhooks.values():
            await webhook.close()


def guarded(
    name: str,
    schema: dict[str, Any],
    run: Callable[[dict[str, Any], Any], Awaitable[Any]],
    on_result: Callable[[str, dict[str, Any], Any], None] | None = None,
) -> ToolHandler:
    """Wrap ``run`` with argument validation and error capture (see the module docstring)."""

    async def handler(arguments: dict[str, Any], flow_manager: Any) -> Any:
        try:
            args = validate_arguments(name, schema, arguments)
        except ToolArgumentError as e:
            logger.warning(str(e))
            result: Any = {"error": str(e), "hint": "call the tool again with corrected arguments"}
        else:
            try:
                result = await run(args, flow_manager)
            except Exception as e:  # a broken tool must not end the call
                logger.exception(f"tool {name} raised")
                result = {"error": f"{name} failed: {type(e).__name__}: {e}"}
        if on_result is not None:
            on_result(name, dict(arguments or {}), result)
        return result

    handler.__name__ = name
    return handler


def variables_schema(variables: dict[str, Variable]) -> dict[str, Any]:
    """The JSON Schema of ``save_variables``: every declared variable, all optional."""
    properties: dict[str, Any] = {}
    for var in variables.values():
        prop: dict[str, Any] = {"type": _VARIABLE_JSON_TYPES.get(var.type, "string")}
        description = var.description or var.name.replace("_", " ")
        if var.type not in _VARIABLE_JSON_TYPES and var.type != "string":
            description += f" ({var.type.replace('_', ' ')})"
        prop["description"] = description
        if var.choices:
            prop["enum"] = list(var.choices)
        properties[var.name] = prop
    return {
        "type": "object",
        "properties": properties,
        "required": [],
        "additionalProperties": False,
    }


def save_variables_tool(spec: FlowSpec) -> ToolSpec | None:
    """The ``save_variables`` tool of a flow, or None when it declares no variables."""
    if not spec.variables:
        return None
    return ToolSpec(
        name=SAVE_VARIABLES,
        kind="builtin",
        description="Remember details the caller gave (call it as soon as you learn them).",
        parameters=variables_schema(spec.variables),
    )


async def save_variables(arguments: dict[str, Any], flow_manager: Any) -> Any:
    """Store the given values in ``flow_manager.state``."""
    saved = {k: v for k, v in arguments.items() if v is not None}
    if flow_manager is not None:
        flow_manager.state.update(saved)
    return {"saved": sorted(saved)}
