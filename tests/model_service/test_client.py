"""ModelServiceClient against the real model service running the reference backend.

The backend is ``ReferenceBackend`` on a tiny checkpoint (built once per module) shaped so that
greedy decoding first says a filler and calls ``get_weather`` and, once the tool call is in the
context, speaks the answer. Everything runs over a real loopback socket.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
from websockets.asyncio.client import connect

from harness.checkpoints.tiny_checkpoint import (
    after_tool_script,
    build_tiny_checkpoint,
    tool_call_script,
)
from harness.checkpoints.tiny_tokenizer import build_tiny_tokenizer
from model_service.backends.reference import ReferenceBackend, load_reference_backend
from model_service.server import create_app, serving
from model_service.stepaudio2.tokenizer import StepAudio2Tokenizer
from pipeline.step_audio2 import client as mc
from stepcall import protocol as p
from stepcall.audio.pcm import float_to_pcm16

TOKEN = "client-test-token"
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
FILLER = "One moment, let me check."
ANSWER = "Sunny with 18 degrees today."


@pytest.fixture(scope="module")
def scripts(tmp_path_factory) -> tuple[list[int], list[int]]:
    """(first reply: filler + tool call, reply after the tool result) as token ids."""
    tok_dir = tmp_path_factory.mktemp("tok")
    build_tiny_tokenizer(tok_dir)
    tok = StepAudio2Tokenizer.from_pretrained(tok_dir)
    first = tool_call_script(tok, filler=FILLER)
    return first, after_tool_script(tok, first, text=ANSWER)


@pytest.fixture(scope="module")
def tool_ckpt(tmp_path_factory, scripts) -> Path:
    first, after = scripts
    return build_tiny_checkpoint(
        tmp_path_factory.mktemp("tool"), script=first, after_tool_script=after
    )


@pytest.fixture(scope="module")
def reference(tool_ckpt) -> ReferenceBackend:
    return load_reference_backend(tool_ckpt, "cpu", "float32")


@pytest.fixture
async def service(reference):
    app = create_app(reference, token=TOKEN, max_sessions=2)
    async with serving(app) as url:
        yield app, url
    assert app.state.service.active_sessions == 0


def start(call_id: str = "CA1", rate: int = 8000, **kw) -> mc.SessionStart:
    return mc.SessionStart(
        call_id=call_id,
        system_prompt="You answer weather questions.",
        tools=TOOLS,
        input_sample_rate=rate,
        output_sample_rate=rate,
        sampling=mc.Sampling(temperature=0.0, repetition_penalty=1.0),
        max_response_tokens=200,
        **kw,
    )


async def connect_client(url: str, call_id: str = "CA1", rate: int = 8000) -> mc.ModelServiceClient:
    client = mc.ModelServiceClient(url, token=TOKEN)
    started = await client.connect(start(call_id, rate))
    assert started.backend == "reference" and started.output_sample_rate == rate
    return client


async def one_response(client: mc.ModelServiceClient, events, within: float = 30.0) -> list:
    """Collect events up to and including the next ResponseDone."""
    out = []
    while True:
        ev = await asyncio.wait_for(anext(events), within)
        out.append(ev)
        if isinstance(ev, (mc.ResponseDone, mc.Closed)):
            return out


def texts(events: list) -> str:
    return "".join(e.text for e in events if isinstance(e, mc.TextDelta))


def user_audio(seconds: float, rate: int) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    return float_to_pcm16(0.2 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2)


async def test_tool_call_round_trip(service, reference) -> None:
    _, url = service
    client = await connect_client(url)
    events = client.events()
    await client.send_audio(user_audio(1.0, 8000))
    await client.commit()
    await client.create_response()
    first = await one_response(client, events)
    assert isinstance(first[0], mc.ResponseStarted)
    calls = [e for e in first if isinstance(e, mc.ToolCall)]
    assert [(c.name, c.arguments) for c in calls] == [("get_weather", {"city": "Paris"})]
    assert texts(first).strip() == FILLER
    done = first[-1]
    assert isinstance(done, mc.ResponseDone) and done.status == "tool_call"
    assert done.usage["completion_tokens"] > 0 and done.timings["total_ms"] is not None
    audio = [e for e in first if isinstance(e, mc.AudioChunk)]
    if reference.vocoder is not None:  # tiny token2wav present: the filler is spoken at 8 kHz
        assert audio and all(a.sample_rate == 8000 for a in audio)
        assert all(a.response_id == first[0].response_id for a in audio)
        assert done.audio_ms > 0

    await client.send_tool_result(calls[0].call_id, json.dumps({"forecast": "sunny", "temp": 18}))
    await client.create_response()
    second = await one_response(client, events)
    assert second[-1].status == "completed"
    assert "18 degrees today" in texts(second)  # (the script de-duplicates repeated tokens)
    assert second[0].response_id != first[0].response_id
    await client.close()
    assert isinstance(await asyncio.wait_for(anext(events), 5), mc.Closed)


async def test_tool_result_sent_before_the_response_ends_is_applied_after_it(service) -> None:
    """A client may answer ``tool.call`` at once; the service holds the result until the
    response that made the call is in the history, then applies it before ``response.done``."""
    _, url = service
    client = await connect_client(url)
    events = client.events()
    await client.append_text("What's the weather in Paris?", "human")
    await client.create_response()
    first = []
    while True:
        ev = await asyncio.wait_for(anext(events), 30)
        first.append(ev)
        if isinstance(ev, mc.ToolCall):  # answered while the filler is still being generated
            await client.send_tool_result(ev.call_id, json.dumps({"temp": 18}))
        if isinstance(ev, (mc.ResponseDone, mc.Closed)):
            break
    assert first[-1].status == "tool_call"
    assert not [e for e in first if isinstance(e, mc.ErrorEvent)], first
    await client.create_response()
    second = await one_response(client, events)
    assert not [e for e in second if isinstance(e, mc.ErrorEvent)], second
    assert second[-1].status == "completed" and "18 degrees today" in texts(second)
    await client.close()


async def test_caller_turns_are_transcribed_after_the_reply(service, reference) -> None:
    """``input_transcription``: after the response, one ``input_audio.transcript`` per
    committed caller turn, made by Step-Audio 2's own ASR pass (the model's task prompt)."""
    _, url = service
    client = mc.ModelServiceClient(url, token=TOKEN)
    await client.connect(start(input_transcription=True))
    events = client.events()
    await client.send_audio(user_audio(1.0, 8000))
    await client.commit()
    await client.create_response()
    reply = await one_response(client, events)
    assert reply[-1].status == "tool_call"
    transcript = await asyncio.wait_for(anext(events), 30)
    assert isinstance(transcript, mc.InputAudioTranscript), transcript
    assert transcript.item == 1 and isinstance(transcript.text, str)
    assert "<" not in transcript.text  # special and language tags are stripped
    # the ASR prompt is the model's transcription task over the turn's audio, text reply
    session = next(iter(reference.sessions))
    prompt = session.asr_prompt([session.conversation.messages[0].parts[0].mel])
    rendered = reference.tok.decode(prompt.ids)
    assert "请记录下你所听到的语音内容。" in rendered and "<audio_start>" in rendered
    assert reference.tok.ids.tts_start not in prompt.ids
    await client.close()


async def test_no_transcripts_unless_asked(service) -> None:
    _, url = service
    client = await connect_client(url)
    events = client.events()
    await client.send_audio(user_audio(0.6, 8000))
    await client.commit()
    await client.create_response()
    await one_response(client, events)
    await client.close()
    rest = [ev async for ev in events]
    assert not [e for e in rest if isinstance(e, mc.InputAudioTranscript)], rest


async def test_interleaved_sessions(service) -> None:
    app, url = service
    a = await connect_client(url, "A", 8000)
    b = await connect_client(url, "B", 16000)
    ea, eb = a.events(), b.events()
    await a.append_text("What's the weather in Paris?", "human")
    await b.send_audio(user_audio(0.6, 16000))
    await b.commit()
    await a.create_response()
    await b.create_response()
    ra, rb = await asyncio.gather(one_response(a, ea), one_response(b, eb))
    assert ra[-1].status == rb[-1].status == "tool_call"
    assert texts(ra).strip() == texts(rb).strip() == FILLER
    assert {e.session_id for e in ra if hasattr(e, "session_id")} == {a.session.session_id}
    assert {e.session_id for e in rb if hasattr(e, "session_id")} == {b.session.session_id}
    assert len(app.state.service.sessions) == 2
    for c in (a, b):
        await c.close()


async def test_cancel_right_after_create_with_heard_ms(service) -> None:
    app, url = service
    client = await connect_client(url)
    events = client.events()
    await client.append_text("Weather please.", "human")
    await client.create_response()
    await client.cancel_response(heard_ms=0)
    evs = await one_response(client, events)
    assert evs[-1].status == "cancelled"
    assert not [e for e in evs if isinstance(e, mc.ToolCall)]
    # the session goes on
    await client.append_text("Hello?", "human")
    await client.create_response()
    evs = await one_response(client, events)
    assert evs[-1].status in ("tool_call", "completed")
    await client.close()


async def test_cancel_mid_audio_keeps_only_what_was_heard(service, reference, scripts) -> None:
    if reference.vocoder is None:
        pytest.skip("the tiny checkpoint has no token2wav: no audio to barge in on")
    app, url = service
    client = await connect_client(url)
    events = client.events()
    await client.append_text("Weather please.", "human")
    await client.create_response()
    seen = []
    while not any(isinstance(e, mc.AudioChunk) for e in seen):
        seen.append(await asyncio.wait_for(anext(events), 30))
    await client.cancel_response(heard_ms=120)
    evs = seen + await one_response(client, events)
    done = evs[-1]
    assert done.status == "cancelled"
    call = app.state.service.sessions[client.session.session_id]
    kept = call.backend_session.conversation.last_reply_ids()
    full = scripts[0]
    assert kept and len(kept) < len(full) // 2  # cut to ~120 ms of speech
    assert kept == full[: len(kept)] or kept[:-1] == full[: len(kept) - 1]
    await client.close()


async def test_busy_rejection(service) -> None:
    _, url = service
    a = await connect_client(url, "A")
    b = await connect_client(url, "B")
    c = mc.ModelServiceClient(url, token=TOKEN)
    with pytest.raises(mc.ModelServiceBusy) as info:
        await asyncio.wait_for(c.connect(start("C")), 5)
    assert info.value.code == "busy"
    await a.close()
    # the slot comes back
    for _ in range(100):
        try:
            d = await connect_client(url, "D")
            break
        except mc.ModelServiceBusy:
            await asyncio.sleep(0.02)
    else:
        raise AssertionError("slot never freed")
    await d.close()
    await b.close()


async def test_auth_refused(service) -> None:
    _, url = service
    for token in (None, "wrong"):
        client = mc.ModelServiceClient(url, token=token)
        with pytest.raises(mc.ModelServiceAuthError):
            await client.connect(start())
        assert not client.connected


async def test_bad_messages_answered_and_session_still_usable(service) -> None:
    _, url = service
    async with connect(url, additional_headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
        await ws.send(p.message_to_json(start()))
        assert json.loads(await ws.recv())["type"] == "session.started"

        async def expect_error(payload: str | bytes, code: str) -> None:
            await ws.send(payload)
            while True:
                raw = await asyncio.wait_for(ws.recv(), 10)
                if isinstance(raw, str):
                    ev = json.loads(raw)
                    assert ev["type"] == "error" and ev["code"] == code and not ev["fatal"], ev
                    return

        await expect_error("{not json", "bad_message")
        await expect_error('{"type": "input_text.append", "role": "human"}', "bad_message")
        await expect_error(b"\x01\x02\x03", "bad_audio")
        await expect_error(b"\x00" * 20000, "too_large")
        await expect_error(json.dumps({"type": "input_audio.commit"}), "bad_message")  # no audio
        await ws.send(json.dumps({"type": "input_text.append", "text": "Weather?"}))
        await ws.send(json.dumps({"type": "response.create"}))
        while True:
            raw = await asyncio.wait_for(ws.recv(), 30)
            if isinstance(raw, str) and json.loads(raw)["type"] == "response.done":
                assert json.loads(raw)["status"] == "tool_call"
                break


async def test_long_audio_is_split_and_session_update_accepted(service) -> None:
    app, url = service
    client = await connect_client(url, rate=16000)
    events = client.events()
    await client.send_audio(user_audio(2.5, 16000))  # > 1 s: sent as several messages
    await client.commit()
    await client.update_session(system_prompt="Be very brief.", tools=TOOLS)
    await client.create_response(instructions="Answer in one sentence.")
    evs = await one_response(client, events)
    assert not [e for e in evs if isinstance(e, mc.ErrorEvent)]
    assert evs[-1].status == "tool_call"
    call = app.state.service.sessions[client.session.session_id]
    assert call.config.system_prompt == "Be very brief."
    await client.close()


async def test_closed_event_and_dropped_sends_when_the_service_goes_away(reference) -> None:
    app = create_app(reference, token=TOKEN, max_sessions=1)
    async with serving(app) as url:
        client = await connect_client(url)
        events = client.events()
    # the server shut down under the client
    ev = await asyncio.wait_for(anext(events), 10)
    assert isinstance(ev, mc.Closed)
    assert not client.connected
    await client.send_audio(b"\x00\x00" * 160)  # dropped, no exception
    await client.commit()
    await client.close()


async def test_connect_errors_are_model_service_errors() -> None:
    client = mc.ModelServiceClient("ws://127.0.0.1:9/v1/session", open_timeout=2)
    with pytest.raises(mc.ModelServiceError, match="cannot connect"):
        await client.connect(start())
    with pytest.raises(mc.ModelServiceError, match="not connected"):
        await mc.ModelServiceClient("ws://x").commit()
    with pytest.raises(ValueError, match="even byte count"):
        await client.send_audio(b"\x00")


async def test_check_turn_is_none_without_a_turn_model_or_once_the_connection_is_gone() -> None:
    """A service that offers no turn model is never asked; a check pending when the connection
    drops (a service that fell over mid-inference) ends with None, not a hang."""
    from websockets.asyncio.server import serve

    checks: list[dict] = []

    async def handler(ws) -> None:
        start = json.loads(await ws.recv())
        offer = start["call_id"] == "offer"
        started = {"type": "session.started", "session_id": "s1", "input_sample_rate": 8000,
                   "output_sample_rate": 8000}
        if offer:
            started["turn_model"] = "smart-turn-v3.2-cpu"
        await ws.send(json.dumps(started))
        async for raw in ws:
            message = json.loads(raw)
            if message["type"] == "turn.check":
                checks.append(message)
                await ws.close()  # fell over before answering

    async with serve(handler, "127.0.0.1", 0) as server:
        url = f"ws://127.0.0.1:{next(iter(server.sockets)).getsockname()[1]}/v1/session"
        plain = mc.ModelServiceClient(url)
        await plain.connect(start(call_id="plain"))
        assert plain.turn_model is None
        assert await plain.check_turn(b"\0\0" * 80, 8000) is None and checks == []
        await plain.close()

        client = mc.ModelServiceClient(url)
        await client.connect(start(call_id="offer"))
        assert client.turn_model == "smart-turn-v3.2-cpu"

        async def read() -> list:
            return [e async for e in client.events()]

        reader = asyncio.create_task(read())
        verdict = await asyncio.wait_for(client.check_turn(b"\1\0" * 80, 8000), 5)
        closed = await asyncio.wait_for(reader, 5)
        assert verdict is None and isinstance(closed[-1], mc.Closed)
        assert checks[0]["type"] == "turn.check" and checks[0]["check_id"] == 1
        assert await client.check_turn(b"\0\0" * 80, 8000) is None  # closed: not sent
        assert len(checks) == 1
