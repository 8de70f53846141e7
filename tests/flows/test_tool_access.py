"""Tool access per node: a tool the flow defines but the current node does not allow is refused,
never run, and the call carries on.

Two places refuse such a call. The model service only accepts tool calls for the tools of the
session's last ``session.update`` (the node's tools), so a model that calls another node's
tool gets a ``bad_tool_call`` error instead of a call. And ``StepAudio2Service`` refuses, with
an error result for the model and a log line naming the tool call id, any call of a tool not
offered right now (a call that raced a node change, or a model service that does not check).

The tiny checkpoint here is shaped so that the model, on its first turn, speaks a filler and
calls ``book_appointment`` — a tool of ``flows/appointments.yaml`` that only its ``book`` node
allows — and afterwards answers in speech.
"""

from __future__ import annotations

import pytest

from harness.checkpoints.tiny_checkpoint import (
    after_tool_script,
    build_tiny_checkpoint,
    tool_call_script,
)
from harness.checkpoints.tiny_tokenizer import build_tiny_tokenizer
from model_service.backends.reference import load_reference_backend
from model_service.stepaudio2.tokenizer import StepAudio2Tokenizer
from pipeline.step_audio2.service import StepAudio2Service

from .conftest import CALL_ID, Call, example_flow, model_session, tool_names

FILLER = "Sure, one moment."
ANSWER = "Happy to help."
BOOKING = {"caller_name": "Ada Lovelace", "service": "haircut", "date": "2026-12-03", "time": "14:30"}


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    tok_dir = tmp_path_factory.mktemp("tok")
    build_tiny_tokenizer(tok_dir)
    tok = StepAudio2Tokenizer.from_pretrained(tok_dir)
    first = tool_call_script(
        tok, name="book_appointment", arguments={"service": "haircut"}, filler=FILLER
    )
    after = after_tool_script(tok, first, text=ANSWER)
    ckpt = build_tiny_checkpoint(
        tmp_path_factory.mktemp("ckpt"), script=first, after_tool_script=after
    )
    return load_reference_backend(ckpt, "cpu", "float32")


async def test_model_calling_another_nodes_tool_is_refused_and_the_call_goes_on(
    tmp_path, model_service, webhook_server, log_lines
) -> None:
    app, url = model_service
    async with Call(example_flow(tmp_path, "appointments", webhook_server.base), url) as call:
        await call.start(rendered=False)  # the model says the greeting
        # The greeting: the model says the filler and calls book_appointment in node collect.
        await call.wait_for(lambda: call.responses_done() >= 1, "the greeting")
        await call.settle()
        session = model_session(app)
        assert call.runtime.current_node == "collect"
        assert "book_appointment" not in tool_names(session)
        assert call.spoken().startswith(FILLER)
        refusals = [
            (msg, extra)
            for msg, extra in log_lines
            if "bad_tool_call" in msg and "book_appointment" in msg
        ]
        assert refusals, "the refusal was not logged"
        assert all(extra.get("call_id") == CALL_ID for _, extra in refusals)
        assert call.runtime.tools.calls == []  # the handler never ran
        assert webhook_server.requests == []  # and nothing was booked

        # The call goes on: the caller speaks, the bot answers, the flow moves to booking.
        await call.caller_turn()
        assert "to help" in call.spoken()[len(FILLER) :]  # the spoken answer after the filler
        await call.tool_call("save_variables", BOOKING)
        await call.tool_call("go_to_confirm", {})
        await call.wait_for(lambda: call.runtime.current_node == "confirm", "node confirm")
        await call.tool_call("go_to_book", {})
        await call.wait_for(lambda: call.runtime.current_node == "book", "node book")
        await call.wait_for(lambda: "book_appointment" in tool_names(session), "book's tools")
        result = await call.tool_call("book_appointment", BOOKING)
        assert result == {"ok": True}
        assert webhook_server.requests == [("/appointments", BOOKING)]


async def test_service_refuses_a_tool_the_node_does_not_allow(
    tmp_path, model_service, webhook_server, log_lines
) -> None:
    app, url = model_service
    async with Call(example_flow(tmp_path, "appointments", webhook_server.base), url) as call:
        await call.start(rendered=False)  # the model says the greeting
        await call.wait_for(lambda: call.responses_done() >= 1, "the greeting")
        await call.settle()
        assert call.runtime.current_node == "collect"

        # A tool call for book_appointment reaches the pipeline while the node is collect.
        done = call.responses_done()
        result = await call.tool_call("book_appointment", BOOKING)
        expected = StepAudio2Service.MISSING_FUNCTION_CALL_MESSAGE_TEMPLATE.format(
            function_name="book_appointment"
        )
        assert result == expected
        assert result.startswith("Error: the tool `book_appointment` is not allowed")
        assert webhook_server.requests == [] and call.runtime.tools.calls == []
        refusals = [
            (msg, extra) for msg, extra in log_lines if msg.startswith("tool call call_book_")
        ]
        assert refusals == [
            (
                "tool call call_book_appointment_1: refused 'book_appointment': it is not "
                "allowed now (allowed: end_call, go_to_confirm, save_variables)",
                {"call_id": CALL_ID},
            )
        ]
        # The model hears the error and answers; the call is still in collect.
        await call.wait_for(lambda: call.responses_done() > done, "the answer to the refusal")

        # A transition of another node is refused as well: the node does not change.
        result = await call.tool_call("go_to_goodbye", {})
        assert "not allowed" in result
        assert call.runtime.current_node == "collect"
        assert call.runtime.node_history == ["collect"]
        assert not call.task.done() and call.control.events == []

        # In node book the same tool is allowed and runs.
        await call.tool_call("go_to_confirm", {})
        await call.wait_for(lambda: call.runtime.current_node == "confirm", "node confirm")
        await call.tool_call("go_to_book", {})
        await call.wait_for(lambda: call.runtime.current_node == "book", "node book")
        await call.wait_for(
            lambda: "book_appointment" in tool_names(model_session(app)), "book's tools"
        )
        assert await call.tool_call("book_appointment", BOOKING) == {"ok": True}
        assert webhook_server.requests == [("/appointments", BOOKING)]
