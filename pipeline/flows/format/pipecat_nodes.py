"""Render a ``FlowSpec`` into ``pipecat.flows`` node configs for a ``FlowManager``.

Each node becomes a ``NodeConfig``:

- ``role_message``: the persona (on every node, so a ``reset`` node keeps it);
- ``task_messages``: the node's instructions as a developer message (the initial node also
  carries the greeting instruction, and responds at once only when the model opens the call;
  when the caller speaks first or the greeting is said verbatim (``greeting.say``, played by
  the call itself), the initial node's instructions go into the ``role_message`` instead,
  because nothing delivers a developer message to a speech-to-speech session before a response
  is requested);
- ``functions``: the tools allowed in the node (handlers supplied by the runtime, keyed by tool
  name) and one ``go_to_<node>`` function per transition;
- ``pre_actions``: a ``set_style`` action with the node's style (and the node's name);
- ``post_actions``: ``end_conversation`` for ``end: true``, a ``transfer_call`` action with
  ``number`` for ``transfer: ...``;
- ``context_strategy``: append or reset.

``set_style`` and ``transfer_call`` are custom action types: the runtime registers handlers
for them with ``FlowManager.register_action`` (``STYLE_ACTION``, ``TRANSFER_ACTION``).
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from pipecat.flows import ContextStrategy, ContextStrategyConfig, FlowsFunctionSchema, NodeConfig

from pipeline.flows.format.model import FlowSpec, ToolSpec

#: ``async def handler(args: dict, flow_manager) -> result`` for one tool.
ToolHandler = Callable[[dict[str, Any], Any], Awaitable[Any]]

STYLE_ACTION = "set_style"
TRANSFER_ACTION = "transfer_call"


def render_nodes(spec: FlowSpec, handlers: Mapping[str, ToolHandler]) -> dict[str, NodeConfig]:
    """Node configs for every node of ``spec``, by node name.

    ``handlers`` maps tool names to their implementations; a tool used by some node without a
    handler is a ``KeyError`` naming all such tools. Transition functions return the target
    node's config (edge functions); tool functions return their handler's result.
    """
    used = {tool.name for node in spec.nodes for tool in spec.node_tools(node)}
    missing = sorted(used - set(handlers))
    if missing:
        raise KeyError(
            f"flow '{spec.name}' ({spec.path}): no handler for tools: {', '.join(missing)}"
        )
    configs: dict[str, NodeConfig] = {}
    for name, node in spec.nodes.items():
        functions: list[FlowsFunctionSchema] = [
            _tool_function(tool, handlers[tool.name]) for tool in spec.node_tools(name)
        ]
        functions += [
            FlowsFunctionSchema(
                name=t.function_name,
                description=t.when,
                properties={},
                required=[],
                handler=_transition_handler(configs, t.to),
                cancel_on_interruption=True,
            )
            for t in node.transitions
        ]
        content = node.instructions.strip()
        initial = name == spec.initial_node
        if initial and spec.greeting.text:
            content += f"\n\nOpening of the call: {spec.greeting.text.strip()}"
        role_message = spec.persona.strip()
        task_messages = [{"role": "developer", "content": content}]
        model_opens = spec.greeting.bot_speaks_first and not spec.greeting.say
        if initial and not model_opens:
            # Nothing asks for a response before the caller speaks (or the verbatim greeting
            # plays without one), so a developer message would wait in the context; the
            # instructions ride in the system prompt instead: the same for every call of the
            # bot, so the model service's prefix cache serves them.
            role_message = f"{role_message}\n\n{content}"
            task_messages = []
        config: NodeConfig = {
            "name": name,
            "role_message": role_message,
            "task_messages": task_messages,
            "functions": functions,
            "pre_actions": [{"type": STYLE_ACTION, "style": spec.node_style(name), "node": name}],
            "context_strategy": ContextStrategyConfig(
                strategy=ContextStrategy.RESET
                if node.context_strategy == "reset"
                else ContextStrategy.APPEND
            ),
            "respond_immediately": model_opens if initial else True,
        }
        if node.end:
            config["post_actions"] = [{"type": "end_conversation"}]
        elif node.transfer:
            config["post_actions"] = [{"type": TRANSFER_ACTION, "number": node.transfer}]
        configs[name] = config
    return configs


def _tool_function(tool: ToolSpec, handler: ToolHandler) -> FlowsFunctionSchema:
    from pipeline.flows.tools.webhook import webhook_deadline

    params = tool.parameters
    return FlowsFunctionSchema(
        name=tool.name,
        description=tool.description,
        properties=dict(params.get("properties", {})),
        required=list(params.get("required", [])),
        handler=handler,
        cancel_on_interruption=True,
        timeout_secs=webhook_deadline(tool) if tool.kind == "webhook" else None,
    )


def tool_function(tool: ToolSpec, handler: ToolHandler) -> FlowsFunctionSchema:
    """One tool as a pipecat.flows function (e.g. for ``FlowManager(global_functions=...)``)."""
    return _tool_function(tool, handler)


def _transition_handler(configs: dict[str, NodeConfig], target: str) -> ToolHandler:
    async def go_to(args: dict[str, Any], flow_manager: Any) -> tuple[None, NodeConfig]:
        return None, configs[target]

    go_to.__name__ = f"go_to_{target}"
    return go_to


def import_handler(dotted: str) -> Callable[..., Any]:
    """Import a python tool's handler from ``'pkg.module:func'`` or ``'pkg.module.func'``."""
    module_name, sep, attr = dotted.partition(":")
    if not sep:
        module_name, _, attr = dotted.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ImportError(
            f"tool handler '{dotted}': cannot import module '{module_name}': {e}"
        ) from e
    try:
        handler = getattr(module, attr)
    except AttributeError:
        raise ImportError(
            f"tool handler '{dotted}': module '{module_name}' has no '{attr}'"
        ) from None
    if not callable(handler):
        raise ImportError(f"tool handler '{dotted}' is not callable")
    return handler
