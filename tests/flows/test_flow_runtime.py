"""FlowRuntime on a real call pipeline: StepAudio2Service against the real model service.

The model service runs the reference backend on a tiny checkpoint shaped so that greedy decoding
first speaks a filler and calls ``check_stock`` and, once that tool result is in the context,
speaks an answer. Everything goes over loopback sockets: the model-service WebSocket and an HTTP
server for the webhook tool. The session updates the model service received are read from
``app.state.service.sessions``. Transitions the tiny model cannot say (it can call one tool) are
made the way the model makes them: by running the transition function through the service's
function-calling path, or by ``FlowRuntime.go_to``.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from pipecat.audio.dtmf.types import KeypadEntry
from pipecat.frames.frames import (
    BotStoppedSpeakingFrame,
    EndFrame,
    FunctionCallResultFrame,
    InputAudioRawFrame,
    InputDTMFFrame,
    TTSAudioRawFrame,
)

from harness.checkpoints.tiny_checkpoint import (
    after_tool_script,
    build_tiny_checkpoint,
    tool_call_script,
)
from harness.checkpoints.tiny_tokenizer import build_tiny_tokenizer
from model_service.backends.reference import load_reference_backend
from model_service.stepaudio2.tokenizer import StepAudio2Tokenizer
from pipeline.flows.runtime import SILENCE_TRANSFER

from .conftest import RATE, Call, model_session, system_messages, tool_names

FILLER = "One moment."
ANSWER = "We have it in stock."

FLOW = """
bot: {name: runtime-test}
persona: You are Rita, the assistant of the Stepcall test shop.
style: calm
greeting: {who_speaks_first: bot, text: Greet the caller and check the stock.}
timeouts: {silence_secs: 1, max_reprompts: 1, then: transfer, transfer_to: "+15550100009"}
tools:
  - name: check_stock
    kind: webhook
    description: Check whether an item is in stock.
    url: URL
    timeout_secs: 0.4
    retries: 1
    parameters:
      type: object
      properties: {x: {type: integer}}
      required: [x]
  - {name: end_call, kind: builtin}
variables:
  caller_name: string
nodes:
  greet:
    instructions: Greet the caller and check the stock with check_stock.
    style: cheerful
    tools: [check_stock]
    transitions: [{to: order, when: The caller wants to order.}]
  order:
    instructions: Take the order item by item.
    style: serious
    tools: [end_call]
    transitions: [{to: goodbye, when: The order is complete.}]
  goodbye:
    instructions: Thank {{ caller_name }} and say goodbye.
    style: empathetic
    end: true
"""


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    tok_dir = tmp_path_factory.mktemp("tok")
    build_tiny_tokenizer(tok_dir)
    tok = StepAudio2Tokenizer.from_pretrained(tok_dir)
    first = tool_call_script(tok, name="check_stock", arguments={"x": 1}, filler=FILLER)
    after = after_tool_script(tok, first, text=ANSWER)
    return build_tiny_checkpoint(
        tmp_path_factory.mktemp("ckpt"), script=first, after_tool_script=after
    )


@pytest.fixture(scope="module")
def backend(checkpoint):
    return load_reference_backend(checkpoint, "cpu", "float32")


@pytest.fixture
async def stock_server():
    """A webhook endpoint that is slow on its first request (0.8 s) and quick afterwards."""
    requests: list[dict[str, Any]] = []

    async def handle(request: web.Request) -> web.Response:
        requests.append(await request.json())
        if len(requests) == 1:
            await asyncio.sleep(0.8)
        return web.json_response({"in_stock": True, "count": 3})

    app = web.Application()
    app.router.add_post("/stock", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}/stock", requests
    await runner.cleanup()


def write_flow(tmp_path: Path, url: str, **replace: str) -> Path:
    text = FLOW.replace("URL", url)
    for old, new in replace.items():
        text = text.replace(old, new)
    path = tmp_path / "runtime.yaml"
    path.write_text(text)
    return path


async def test_multi_node_flow_runs_start_to_finish(tmp_path, model_service, stock_server) -> None:
    app, url = model_service
    stock_url, requests = stock_server
    async with Call(write_flow(tmp_path, stock_url), url) as call:
        await call.start()

        # greet: the model greets, calls the webhook (first attempt times out, the retry answers)
        await call.wait_for(lambda: call.runtime.tools.calls, "the check_stock call", 20)
        session = model_session(app)
        assert session.config.style == "cheerful"
        assert tool_names(session) == {"check_stock", "go_to_order", "save_variables"}
        assert session.config.system_prompt.startswith("You are Rita")
        assert (
            "Greet the caller and check the stock with check_stock." in system_messages(session)[0]
        )
        name, args, result = call.runtime.tools.calls[0]
        assert (name, args, result) == ("check_stock", {"x": 1}, {"in_stock": True, "count": 3})
        assert len(requests) == 2  # timed out once, retried
        await call.wait_for(lambda: call.responses_done() >= 2, "the answer after the tool")
        assert call.spoken().startswith(FILLER) and "have it in" in call.spoken()

        # the model saves a variable; the next node's instructions use it
        await call.call_function("save_variables", {"caller_name": "Ada"})
        await call.wait_for(lambda: call.runtime.state.get("caller_name") == "Ada", "saved state")

        # greet -> order: per-node style, tools and instructions reach the model session
        done = call.responses_done()
        await call.call_function("go_to_order", {})
        await call.wait_for(lambda: call.runtime.current_node == "order", "node order")
        await call.wait_for(lambda: call.responses_done() > done, "the order node's response")
        assert session.config.style == "serious"
        assert tool_names(session) == {"end_call", "go_to_goodbye", "save_variables"}
        assert system_messages(session)[-1] == "Take the order item by item."

        # order -> goodbye (end: true): the goodbye plays, then the call ends and hangs up
        done = call.responses_done()
        await call.runtime.go_to("goodbye")
        await asyncio.wait_for(call.task, 20)
        assert call.responses_done() > done, "the goodbye response finished before the end"
        assert session.config.style == "empathetic"
        assert system_messages(session)[-1] == "Thank Ada and say goodbye."
        assert call.runtime.node_history == ["greet", "order", "goodbye"]
        assert call.control.events == ["hang_up:flow_end"]


async def test_slow_webhook_does_not_block_audio(tmp_path, model_service, stock_server) -> None:
    app, url = model_service
    stock_url, requests = stock_server
    async with Call(write_flow(tmp_path, stock_url), url) as call:
        await call.start()
        await call.wait_for(lambda: len(requests) == 1, "the slow first webhook request")
        sent_at = time.monotonic()
        for _ in range(10):  # caller audio keeps flowing through the service meanwhile
            await call.worker.queue_frame(InputAudioRawFrame(b"\0\0" * 160, RATE, 1))
            await asyncio.sleep(0.02)
        await call.wait_for(lambda: call.log.of(FunctionCallResultFrame), "the tool result", 20)
        audio_in = [t for t, _ in call.service_in.of(InputAudioRawFrame)]
        result_at = call.log.of(FunctionCallResultFrame)[0][0]
        assert len(audio_in) == 10 and max(audio_in) < result_at
        assert max(audio_in) - sent_at < 0.6  # no frame waited for the tool
        bot_audio = [t for t, _ in call.log.of(TTSAudioRawFrame)]
        assert bot_audio and min(bot_audio) < result_at  # the filler played before the result


async def test_end_call_tool_hangs_up_after_goodbye(tmp_path, model_service, stock_server) -> None:
    app, url = model_service
    stock_url, _ = stock_server
    async with Call(write_flow(tmp_path, stock_url), url) as call:
        await call.start()
        await call.wait_for(lambda: call.responses_done() >= 2, "the greeting exchange")
        done = call.responses_done()
        await call.runtime.go_to("order")
        await call.wait_for(lambda: call.responses_done() > done, "the order node's response")
        assert "end_call" in tool_names(model_session(app))
        done = call.responses_done()
        await call.call_function("end_call", {"reason": "order placed"})
        await asyncio.wait_for(call.task, 25)
        assert call.responses_done() > done  # the goodbye after the tool result was spoken
        assert call.runtime.end_reason == "order placed"
        assert call.control.events == ["hang_up:order placed"]


async def test_bad_tool_arguments_are_an_error_result(
    tmp_path, model_service, stock_server
) -> None:
    app, url = model_service
    stock_url, requests = stock_server
    async with Call(write_flow(tmp_path, stock_url), url) as call:
        handler = call.runtime.tools.handlers["check_stock"]
        result = await handler({"x": "three"}, call.runtime.flow_manager)
        assert (
            result["error"] == "invalid arguments for check_stock: x: expected integer, got string"
        )
        assert requests == []  # the webhook was never called


async def test_silence_reprompts_then_transfers(tmp_path, model_service, stock_server) -> None:
    app, url = model_service
    stock_url, _ = stock_server
    flow = write_flow(tmp_path, stock_url, **{"who_speaks_first: bot": "who_speaks_first: caller"})
    async with Call(flow, url) as call:
        await call.start()
        session_msgs = lambda: system_messages(model_session(app))  # noqa: E731
        prompt = lambda: model_session(app).config.system_prompt  # noqa: E731
        await call.wait_for(
            lambda: app.state.service.sessions and "check_stock" in prompt(), "initial node"
        )
        assert "\n\nGreet the caller and check the stock with check_stock." in prompt()
        assert call.responses_done() == 0  # the caller speaks first: no greeting

        # the bot finished a turn (no transport here: tell the idle timer directly)
        await call.worker.queue_frame(BotStoppedSpeakingFrame())
        await call.wait_for(lambda: call.runtime.reprompts == 1, "the first re-prompt", 5)
        # the runtime counts the re-prompt as it sends it; the model service reads it a moment later
        await call.wait_for(session_msgs, "the re-prompt at the model service", 5)
        assert session_msgs()[0] == "Ask whether the caller is still there."
        # this model answers the re-prompt with a tool call, then speaks after its result
        await call.wait_for(lambda: call.responses_done() == 2, "the re-prompt responses")

        await call.worker.queue_frame(BotStoppedSpeakingFrame())
        await call.wait_for(lambda: call.control.events, "the transfer", 10)
        assert call.responses_done() == 3  # the transfer was announced first
        assert session_msgs()[-1] == SILENCE_TRANSFER
        assert call.control.events == ["transfer:+15550100009"]
        assert call.runtime.end_reason == "caller_silent_transfer"


async def test_collect_dtmf_reads_keypad_frames(tmp_path, model_service, stock_server) -> None:
    app, url = model_service
    stock_url, _ = stock_server
    flow = write_flow(
        tmp_path,
        stock_url,
        **{
            "  - {name: end_call, kind: builtin}": "  - {name: end_call, kind: builtin}\n"
            "  - {name: collect_dtmf, kind: builtin}\ntools_allowed: [collect_dtmf]"
        },
    )
    async with Call(flow, url) as call:
        handler = call.runtime.tools.handlers["collect_dtmf"]
        waiting = asyncio.create_task(
            handler({"prompt": "Type your PIN"}, call.runtime.flow_manager)
        )
        await asyncio.sleep(0.05)
        for key in ("4", "2", "#"):
            await call.worker.queue_frame(InputDTMFFrame(KeypadEntry(key)))
        assert await asyncio.wait_for(waiting, 5) == {"digits": "42", "status": "terminator"}
        await call.worker.queue_frame(EndFrame())


async def test_switch_voice_reaches_the_model_session(
    tmp_path, model_service, stock_server
) -> None:
    app, url = model_service
    stock_url, _ = stock_server
    voice = tmp_path / "voices" / "default"  # the tiny checkpoint's only voice is "default"
    voice.mkdir(parents=True)
    (voice / "description.txt").write_text("a soft robotic test voice")
    flow = write_flow(
        tmp_path,
        stock_url,
        **{
            "  - {name: end_call, kind: builtin}": "  - {name: end_call, kind: builtin}\n"
            "  - {name: switch_voice, kind: builtin}\ntools_allowed: [switch_voice]"
        },
    )
    async with Call(flow, url) as call:
        await call.start()
        await call.wait_for(lambda: app.state.service.sessions, "the model session")
        session = model_session(app)
        await call.wait_for(lambda: "switch_voice" in tool_names(session), "the tools")
        result = await call.runtime.tools.handlers["switch_voice"](
            {"voice_description": "a robot", "style": "whisper"}, call.runtime.flow_manager
        )
        assert result["voice"] == "default"
        await call.wait_for(lambda: session.config.voice == "default", "the voice update")
        assert session.config.style == "whisper"
        await call.worker.queue_frame(EndFrame())
