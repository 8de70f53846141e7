"""The example flows in ``flows/`` on a real call: every file loads, each node reaches the model
session, and each customer-service flow runs its script end to end.

The model service runs the reference backend on a tiny checkpoint that answers every turn with
a short spoken reply. A scripted caller speaks turns (audio into the service, committed as a
turn, answered by the model); the choices the tiny model cannot make (which tool or transition
to call, with which arguments) are made by the test through the service's function-calling
path, the one a model tool call takes. Webhook tools go to a local HTTP server (the example
flows' placeholder base URL is swapped for it), transfers and hang-ups to a recording
``CallControl``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bots.registry import BotRegistry
from harness.checkpoints.tiny_checkpoint import build_tiny_checkpoint, default_script
from harness.checkpoints.tiny_tokenizer import build_tiny_tokenizer
from model_service.backends.reference import load_reference_backend
from model_service.stepaudio2.tokenizer import StepAudio2Tokenizer
from pipeline.flows.format import FlowSpec, load_flow, load_flows, validate_command
from stepcall.settings import Settings

from .conftest import (
    EXAMPLE_FLOWS,
    EXAMPLE_WEBHOOK_BASE,
    Call,
    bot_turns,
    example_flow,
    model_session,
    system_messages,
    tool_names,
)

REPLY = "Sure, I can help with that."
EXAMPLES = sorted(p.stem for p in EXAMPLE_FLOWS.glob("*.yaml"))


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    tok_dir = tmp_path_factory.mktemp("tok")
    build_tiny_tokenizer(tok_dir)
    tok = StepAudio2Tokenizer.from_pretrained(tok_dir)
    ckpt = build_tiny_checkpoint(
        tmp_path_factory.mktemp("ckpt"), script=default_script(tok, text=REPLY)
    )
    return load_reference_backend(ckpt, "cpu", "float32")


def expected_tools(spec: FlowSpec, node: str) -> set[str]:
    """What the model may call in ``node``: its tools, its transitions, save_variables."""
    names = {tool.name for tool in spec.node_tools(node)}
    names |= {t.function_name for t in spec.nodes[node].transitions}
    if spec.variables:
        names.add("save_variables")
    return names


def literal_start(instructions: str) -> str:
    """The node's instructions up to the first ``{{ variable }}`` (rendered text differs)."""
    return " ".join(instructions.split("{{")[0].split())


async def node_reached(call: Call, app, node: str, done: int) -> None:
    """Wait until ``node``'s instructions, tools and style are in the model session and the
    bot's answer to entering it has finished."""
    spec = call.spec
    await call.wait_for(lambda: call.runtime.current_node == node, f"node {node}")
    await call.wait_for(lambda: call.responses_done() > done, f"the answer in node {node}")
    session = model_session(app)
    await call.wait_for(
        lambda: tool_names(session) == expected_tools(spec, node), f"the tools of {node}"
    )
    assert session.config.style == spec.node_style(node)
    assert session.config.system_prompt.startswith(spec.persona.strip()[:40])
    if node == spec.initial_node and spec.greeting.say:
        # opened by the verbatim greeting: the node's instructions are in the system prompt
        prompt = " ".join(session.config.system_prompt.split())
        assert literal_start(spec.nodes[node].instructions) in prompt
        return
    last = " ".join(system_messages(session)[-1].split())
    assert last.startswith(literal_start(spec.nodes[node].instructions))


# --- every example file -----------------------------------------------------------------------


def test_the_issue_examples_exist_and_the_folder_validates(capsys) -> None:
    assert {"hotline", "order_status", "appointments"} <= set(EXAMPLES)
    assert validate_command(str(EXAMPLE_FLOWS)) == 0
    out = capsys.readouterr()
    assert "warning" not in out.err, out.err
    specs = {Path(s.path).stem: s for s in load_flows(EXAMPLE_FLOWS)}
    assert sorted(specs) == EXAMPLES
    assert len(specs["hotline"].nodes) == 1
    assert list(specs["order_status"].nodes) == ["identify", "lookup", "agent", "goodbye"]
    assert list(specs["appointments"].nodes) == ["collect", "confirm", "book", "goodbye"]


def test_the_server_loads_the_examples_folder() -> None:
    registry = BotRegistry.load(Settings(flows_dir=str(EXAMPLE_FLOWS)))
    names = {load_flow(EXAMPLE_FLOWS / f"{stem}.yaml").name for stem in EXAMPLES}
    assert set(registry.names()) == names
    assert registry.default == "front-desk"  # the demo receptionist stays the default bot
    assert registry.for_number("+15550100003") == "hotline"
    assert registry.for_number("+15550100004") == "order-status"
    assert registry.for_number("+15550100005") == "salon-booking"


@pytest.mark.parametrize("name", EXAMPLES)
async def test_every_node_of_the_example_reaches_the_model(
    name, tmp_path, model_service, webhook_server
) -> None:
    """Start the flow, then enter every node (terminal ones last): each node's instructions,
    tools and style reach the model session; a terminal node ends or transfers the call."""
    app, url = model_service
    spec = load_flow(EXAMPLE_FLOWS / f"{name}.yaml")
    has_placeholder = EXAMPLE_WEBHOOK_BASE in (EXAMPLE_FLOWS / f"{name}.yaml").read_text()
    path = example_flow(tmp_path, name, webhook_server.base if has_placeholder else None)
    async with Call(path, url) as call:
        await call.start()
        await node_reached(call, app, spec.initial_node, 0)
        # every shipped flow opens with a verbatim greeting, played by the call (no model
        # response) and in the model's history as the bot's first turn
        assert spec.greeting.say and not spec.greeting.text
        assert call.spoken() == spec.greeting.say.strip()
        session = model_session(app)
        assert "Opening of the call" not in session.config.system_prompt
        assert bot_turns(session)[0] == spec.greeting.say.strip()
        await call.caller_turn()

        terminal = [n for n, node in spec.nodes.items() if node.end or node.transfer]
        middle = [n for n in spec.nodes if n not in terminal and n != spec.initial_node]
        for node in middle:
            done = call.responses_done()
            await call.runtime.go_to(node)
            await node_reached(call, app, node, done)
        if terminal:
            last = terminal[0]
            done = call.responses_done()
            await call.runtime.go_to(last)
            if spec.nodes[last].end:
                await asyncio.wait_for(call.task, 20)
                assert call.control.events == ["hang_up:flow_end"]
            else:
                await call.wait_for(lambda: call.control.events, "the transfer")
                assert call.control.events == [f"transfer:{spec.nodes[last].transfer}"]
            assert call.responses_done() > done  # the bot's last words were spoken first
        expected = [spec.initial_node, *middle, *terminal[:1]]
        assert call.runtime.node_history == expected
        assert webhook_server.requests == []  # no tool ran: only nodes were entered


# --- hotline.yaml: a single-node support line -------------------------------------------------


async def test_hotline_transfers_to_a_technician_on_request(
    tmp_path, model_service, webhook_server
) -> None:
    app, url = model_service
    async with Call(example_flow(tmp_path, "hotline"), url) as call:
        await call.start()
        await node_reached(call, app, "support", 0)
        assert tool_names(model_session(app)) == {"end_call", "transfer_call"}
        await call.caller_turn()  # "My internet is down."
        await call.caller_turn()  # "Still down. Can I talk to a person?"
        result = await call.tool_call("transfer_call", {"reason": "caller asked for a person"})
        assert result == {"status": "transferring", "to": "+15550100031", "detail": "dialing"}
        assert call.control.events == ["transfer:+15550100031"]  # timeouts.transfer_to
        assert call.runtime.node_history == ["support"]


async def test_hotline_ends_the_call_when_the_caller_is_done(
    tmp_path, model_service, webhook_server
) -> None:
    app, url = model_service
    async with Call(example_flow(tmp_path, "hotline"), url) as call:
        await call.start()
        await node_reached(call, app, "support", 0)
        await call.caller_turn()  # "I forgot my Wi-Fi password."
        await call.caller_turn()  # "Found it, thanks, bye."
        done = call.responses_done()
        result = await call.tool_call("end_call", {"reason": "caller is done"})
        assert result["status"] == "ending"
        await asyncio.wait_for(call.task, 20)
        assert call.responses_done() > done  # the goodbye played before the hang-up
        assert call.control.events == ["hang_up:caller is done"]
        assert call.runtime.node_history == ["support"]


# --- order_status.yaml: identify, look up via webhook, transfer on request --------------------


async def test_order_status_identifies_looks_up_and_transfers(
    tmp_path, model_service, webhook_server
) -> None:
    app, url = model_service
    webhook_server.answers["/orders/lookup"] = {
        "order_number": "SC-10442",
        "status": "shipped",
        "expected_delivery": "2026-12-02",
    }
    async with Call(example_flow(tmp_path, "order_status", webhook_server.base), url) as call:
        await call.start()
        await node_reached(call, app, "identify", 0)
        assert "lookup_order" not in tool_names(model_session(app))

        await call.caller_turn()  # "It's order SC-10442, postal code 94110."
        saved = await call.tool_call(
            "save_variables", {"order_number": "SC-10442", "postal_code": "94110"}
        )
        assert saved == {"saved": ["order_number", "postal_code"]}
        done = call.responses_done()
        await call.tool_call("go_to_lookup", {})
        await node_reached(call, app, "lookup", done)
        assert system_messages(model_session(app))[-1].startswith(
            "Look up order SC-10442 (postal code 94110) with lookup_order"
        )

        result = await call.tool_call(
            "lookup_order", {"order_number": "SC-10442", "postal_code": "94110"}
        )
        assert webhook_server.requests == [
            ("/orders/lookup", {"order_number": "SC-10442", "postal_code": "94110"})
        ]
        assert result == webhook_server.answers["/orders/lookup"]

        await call.caller_turn()  # "It hasn't arrived. Can I speak to someone?"
        done = call.responses_done()
        await call.tool_call("go_to_agent", {})
        await call.wait_for(lambda: call.control.events, "the transfer")
        assert call.responses_done() > done  # the transfer was announced first
        assert call.control.events == ["transfer:+15550100020"]
        assert model_session(app).config.style == "empathetic"
        assert call.runtime.node_history == ["identify", "lookup", "agent"]
        assert call.runtime.state["order_number"] == "SC-10442"


# --- appointments.yaml: collect, confirm, book via webhook, end the call ----------------------


async def test_appointments_collects_confirms_books_and_ends(
    tmp_path, model_service, webhook_server
) -> None:
    app, url = model_service
    webhook_server.answers["/appointments"] = {"booked": True, "reference": "HS-2041"}
    async with Call(example_flow(tmp_path, "appointments", webhook_server.base), url) as call:
        await call.start()
        await node_reached(call, app, "collect", 0)
        assert "book_appointment" not in tool_names(model_session(app))

        await call.caller_turn()  # "Hi, this is Ada Lovelace, I'd like a haircut."
        await call.tool_call("save_variables", {"caller_name": "Ada Lovelace", "service": "haircut"})
        await call.caller_turn()  # "Thursday the 3rd of December, half past two."
        await call.tool_call("save_variables", {"date": "2026-12-03", "time": "14:30"})
        assert {k: call.runtime.state[k] for k in ("caller_name", "service", "date", "time")} == {
            "caller_name": "Ada Lovelace",
            "service": "haircut",
            "date": "2026-12-03",
            "time": "14:30",
        }
        done = call.responses_done()
        await call.tool_call("go_to_confirm", {})
        await node_reached(call, app, "confirm", done)
        assert system_messages(model_session(app))[-1] == (
            "Read the booking back: haircut for Ada Lovelace on 2026-12-03 at 14:30. Ask the "
            "caller to confirm."
        )

        await call.caller_turn()  # "Yes, that's right."
        done = call.responses_done()
        await call.tool_call("go_to_book", {})
        await node_reached(call, app, "book", done)
        booking = {
            "caller_name": "Ada Lovelace",
            "service": "haircut",
            "date": "2026-12-03",
            "time": "14:30",
        }
        result = await call.tool_call("book_appointment", booking)
        assert webhook_server.requests == [("/appointments", booking)]
        assert result == {"booked": True, "reference": "HS-2041"}

        session = model_session(app)  # the model service forgets it once the call ends
        done = call.responses_done()
        await call.tool_call("go_to_goodbye", {})
        await asyncio.wait_for(call.task, 20)
        assert call.responses_done() > done  # the goodbye played before the hang-up
        assert system_messages(session)[-1] == (
            "Tell Ada Lovelace the appointment is booked for 2026-12-03 at 14:30, thank them "
            "and say goodbye."
        )
        assert call.runtime.node_history == ["collect", "confirm", "book", "goodbye"]
        assert call.control.events == ["hang_up:flow_end"]
