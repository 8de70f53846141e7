"""FlowSpec -> pipecat.flows NodeConfig rendering."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pipecat.flows import ContextStrategy

from pipeline.flows.format import load_flow
from pipeline.flows.format.pipecat_nodes import (
    STYLE_ACTION,
    TRANSFER_ACTION,
    import_handler,
    render_nodes,
)

FLOWS = Path(__file__).resolve().parents[2] / "flows"


async def _echo(args: dict[str, Any], flow_manager: Any) -> dict[str, Any]:
    return {"echo": args}


def _handlers(names: list[str]) -> dict[str, Any]:
    return {name: _echo for name in names}


def test_pizza_nodes_have_tools_transitions_and_actions() -> None:
    spec = load_flow(FLOWS / "pizza_order.yaml")
    nodes = render_nodes(spec, _handlers(list(spec.tools)))
    assert list(nodes) == ["greet", "take_order", "confirm", "goodbye"]
    greet = nodes["greet"]
    assert greet["role_message"].startswith("You are Tony")
    # the verbatim greeting plays without a model response; the node's instructions join
    # the persona
    assert spec.nodes["greet"].instructions.strip() in greet["role_message"]
    assert greet["task_messages"] == [] and greet["respond_immediately"] is False
    assert [f.name for f in nodes["confirm"].get("functions", [])] == [
        "transfer_call",
        "price_order",
        "go_to_goodbye",
        "go_to_take_order",
    ]
    assert nodes["confirm"]["pre_actions"] == [
        {"type": STYLE_ACTION, "style": "calm", "node": "confirm"}
    ]
    assert nodes["greet"]["pre_actions"] == [
        {"type": STYLE_ACTION, "style": "cheerful", "node": "greet"}
    ]
    assert nodes["goodbye"]["post_actions"] == [{"type": "end_conversation"}]
    assert nodes["goodbye"]["context_strategy"].strategy is ContextStrategy.APPEND
    hook = next(f for f in nodes["take_order"]["functions"] if f.name == "check_delivery_area")
    assert hook.required == ["address"] and hook.timeout_secs == pytest.approx(3 * 2 + 0.2 + 1.0)


async def test_transition_function_returns_the_target_node() -> None:
    spec = load_flow(FLOWS / "pizza_order.yaml")
    nodes = render_nodes(spec, _handlers(list(spec.tools)))
    go = next(f for f in nodes["confirm"]["functions"] if f.name == "go_to_take_order")
    result, target = await go.handler({}, None)
    assert result is None and target is nodes["take_order"]
    tool = next(f for f in nodes["confirm"]["functions"] if f.name == "price_order")
    assert await tool.handler({"items": []}, None) == {"echo": {"items": []}}


def test_missing_handlers_are_named(tmp_path: Path) -> None:
    spec = load_flow(FLOWS / "pizza_order.yaml")
    with pytest.raises(KeyError, match="no handler for tools: check_delivery_area, price_order"):
        render_nodes(spec, _handlers(["end_call", "transfer_call"]))


def test_caller_first_reset_and_transfer(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text(
        "bot: {name: t}\npersona: p\ngreeting: {who_speaks_first: caller}\n"
        "nodes:\n  a:\n    instructions: A.\n    transitions: [{to: b, when: w}]\n"
        "  b:\n    instructions: B.\n    context_strategy: reset\n    transfer: '+15551230000'\n"
    )
    nodes = render_nodes(load_flow(path), {})
    assert nodes["a"]["respond_immediately"] is False and nodes["b"]["respond_immediately"] is True
    assert nodes["a"]["role_message"] == "p\n\nA." and nodes["a"]["task_messages"] == []
    assert nodes["b"]["role_message"] == "p"
    assert nodes["b"]["task_messages"] == [{"role": "developer", "content": "B."}]
    assert nodes["b"]["context_strategy"].strategy is ContextStrategy.RESET
    assert nodes["b"]["post_actions"] == [{"type": TRANSFER_ACTION, "number": "+15551230000"}]


def test_a_verbatim_greeting_asks_the_model_for_nothing(tmp_path: Path) -> None:
    """greeting.say: the call plays the line; the initial node neither responds at once nor
    carries an opening instruction, and its instructions join the persona (one system prompt
    per bot: the model service's prefix cache holds it for every call)."""
    path = tmp_path / "x.yaml"
    path.write_text(
        "bot: {name: t}\npersona: p\ngreeting: {say: 'Hello, this is Tee.'}\n"
        "nodes:\n  a:\n    instructions: A.\n    transitions: [{to: b, when: w}]\n"
        "  b:\n    instructions: B.\n"
    )
    spec = load_flow(path)
    assert spec.greeting.say == "Hello, this is Tee." and spec.greeting.bot_speaks_first
    nodes = render_nodes(spec, {})
    assert nodes["a"]["respond_immediately"] is False
    assert nodes["a"]["role_message"] == "p\n\nA." and nodes["a"]["task_messages"] == []
    assert nodes["b"]["respond_immediately"] is True
    # the instruction form still works as before
    path.write_text(path.read_text().replace("say: 'Hello, this is Tee.'", "text: Greet."))
    nodes = render_nodes(load_flow(path), {})
    assert nodes["a"]["respond_immediately"] is True
    assert nodes["a"]["task_messages"][0]["content"] == "A.\n\nOpening of the call: Greet."


def test_import_handler() -> None:
    assert import_handler("os.path:join") is import_handler("os.path.join")
    with pytest.raises(ImportError, match="has no 'nope'"):
        import_handler("os.path:nope")
    with pytest.raises(ImportError, match="cannot import module 'no_such_mod'"):
        import_handler("no_such_mod.f")
