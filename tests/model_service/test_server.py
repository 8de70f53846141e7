"""Model-service server over a real loopback socket (uvicorn + raw websockets client).

Two backends: ``ScriptedBackend`` below (a stand-in at the GPU-model edge whose replies are
predictable, used for the server mechanics: resampling, cancellation, leaks, errors) and, when
available, the reference backend on the tiny checkpoint (see the ``reference`` tests at the end).
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import numpy as np
import pytest
import websockets
from websockets.asyncio.client import connect

from model_service.backends import base
from model_service.server import choose_backend, create_app, serving, vllm_build
from stepcall import protocol as p
from stepcall.audio.pcm import float_to_pcm16, pcm16_to_float
from stepcall.audio.resample import StreamResampler
from stepcall.runtime.tokens import token_matches
from tests.support.metrics import sample

TOKEN = "s3cret-token"

# --------------------------------------------------------------------------------------------
# a scripted backend (GPU-model edge)
# --------------------------------------------------------------------------------------------


@dataclass
class Record:
    """What a scripted session saw."""

    config: base.SessionConfig
    audio: list[np.ndarray] = field(default_factory=list)
    commits: int = 0
    clears: int = 0
    texts: list[tuple[str, str]] = field(default_factory=list)
    tool_results: list[tuple[str, str]] = field(default_factory=list)
    updates: list[base.SessionConfig] = field(default_factory=list)
    cancels: list[float | None] = field(default_factory=list)
    closed: bool = False


class ScriptedSession(base.BackendSession):
    """Replies by ``instructions``: "tool" → a tool call, "slow" → 10 s of audio in 40 ms steps,
    "boom" → raises; otherwise "Hello there." with 480 ms of 440 Hz tone."""

    def __init__(self, record: Record) -> None:
        self.r = record
        self._cancel = asyncio.Event()

    async def append_audio(self, pcm16k: np.ndarray) -> None:
        assert pcm16k.dtype == np.float32
        self.r.audio.append(pcm16k)

    async def clear_audio(self) -> None:
        self.r.clears += 1
        self.r.audio.clear()

    async def commit(self) -> None:
        self.r.commits += 1

    async def append_text(self, text: str, role: str = "human") -> None:
        self.r.texts.append((text, role))

    def respond(self, instructions: str | None = None) -> AsyncIterator[base.BackendEvent]:
        if instructions == "boom":
            raise RuntimeError("GPU fell over")
        self._cancel = asyncio.Event()  # armed now: a cancel right after this call counts
        return self._reply(instructions)

    async def _reply(self, instructions: str | None) -> AsyncIterator[base.BackendEvent]:
        if instructions == "boom-later":
            yield base.TextDelta("Hel")
            raise RuntimeError("GPU fell over later")
        if instructions == "tool":
            yield base.TextDelta("Let me check.")
            yield base.ToolCallEvent("call_1", "lookup", {"order": "42"})
            yield base.ResponseDone("tool_call", text="Let me check.", completion_tokens=7)
            return
        steps, step_ms = (250, 40) if instructions == "slow" else (6, 80)
        yield base.TextDelta("Hello ")
        t = 0
        for _ in range(steps):
            if self._cancel.is_set():
                yield base.ResponseDone("cancelled", text="Hello")
                return
            n = base.OUTPUT_RATE * step_ms // 1000
            tone = 0.3 * np.sin(2 * np.pi * 440 * (np.arange(t, t + n) / base.OUTPUT_RATE))
            t += n
            yield base.AudioChunk(tone.astype(np.float32))
            await asyncio.sleep(0.002 if instructions != "slow" else 0.02)
        yield base.TextDelta("there.")
        yield base.ResponseDone(
            "completed",
            timings=base.ResponseTimings(queue_ms=0.1, prefill_ms=5.0),
            prompt_tokens=11,
            completion_tokens=30,
        )

    async def cancel(self, heard_ms: float | None = None) -> None:
        self.r.cancels.append(heard_ms)
        self._cancel.set()

    async def add_tool_result(self, call_id: str, output: str) -> None:
        self.r.tool_results.append((call_id, output))

    async def update(self, config: base.SessionConfig) -> None:
        self.r.updates.append(config)

    async def close(self) -> None:
        self.r.closed = True


class ScriptedBackend(base.Backend):
    """Opens :class:`ScriptedSession`s and keeps their records; ``render_speech`` speaks a
    chirp 100 ms per character (the text's length and content shape the audio), slowly
    (``render_delay_s``), and refuses the voice "nobody" and the text "boom"."""

    name = "scripted"
    model_name = "scripted-test"

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.renders: list[tuple[str, str | None, str | None]] = []
        self.render_delay_s = 0.05

    async def render_speech(self, text, *, voice=None, style=None) -> np.ndarray:
        self.renders.append((text, voice, style))
        await asyncio.sleep(self.render_delay_s)
        if voice == "nobody":
            raise ValueError("unknown voice 'nobody'")
        if text == "boom":
            raise RuntimeError("GPU fell over")
        n = int(base.OUTPUT_RATE * 0.1 * len(text))
        f0 = 200.0 + 10 * (sum(map(ord, text)) % 50)
        return (0.3 * np.sin(2 * np.pi * f0 * np.arange(n) / base.OUTPUT_RATE)).astype(np.float32)

    async def open_session(self, config: base.SessionConfig) -> base.BackendSession:
        record = Record(config)
        self.records.append(record)
        return ScriptedSession(record)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def start_msg(**changes) -> str:
    d = {
        "type": "session.start",
        "protocol": 1,
        "call_id": "CAtest",
        "system_prompt": "Be nice.",
        "tools": [{"type": "function", "function": {"name": "lookup"}}],
        "input_sample_rate": 8000,
        "output_sample_rate": 8000,
    }
    d.update(changes)
    return json.dumps(d)


class Peer:
    """A raw protocol client: collects JSON events and audio bytes."""

    def __init__(self, ws) -> None:
        self.ws = ws

    async def send(self, obj: dict | str | bytes) -> None:
        await self.ws.send(json.dumps(obj) if isinstance(obj, dict) else obj)

    async def next_event(self, within: float = 5.0) -> dict:
        while True:
            raw = await asyncio.wait_for(self.ws.recv(), within)
            if isinstance(raw, str):
                return json.loads(raw)

    async def until(self, type_: str, within: float = 5.0) -> tuple[dict, list[dict], bytes]:
        """Events and audio up to (and including) the first event of ``type_``."""
        events: list[dict] = []
        audio = bytearray()
        while True:
            raw = await asyncio.wait_for(self.ws.recv(), within)
            if isinstance(raw, bytes):
                audio.extend(raw)
                continue
            ev = json.loads(raw)
            events.append(ev)
            if ev["type"] == type_:
                return ev, events, bytes(audio)


@pytest.fixture
async def backend() -> ScriptedBackend:
    return ScriptedBackend()


@pytest.fixture
async def service(backend: ScriptedBackend):
    app = create_app(backend, token=TOKEN, max_sessions=2)
    async with serving(app) as url:
        yield app, url


async def open_peer(url: str, start: str | None = None) -> Peer:
    ws = await connect(url, additional_headers={"Authorization": f"Bearer {TOKEN}"})
    peer = Peer(ws)
    if start is not None:
        await peer.send(start)
        ev = await peer.next_event()
        assert ev["type"] == "session.started", ev
    return peer


async def wait_for(predicate, within: float = 3.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def http_base(ws_url: str) -> str:
    return ws_url.replace("ws://", "http://").removesuffix("/v1/session")


# --------------------------------------------------------------------------------------------
# audio conversion
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rates", [(8000, 16000), (24000, 8000), (24000, 48000), (48000, 16000), (24000, 16000)]
)
def test_stream_resampler_is_steady_and_matches_one_shot(rates: tuple[int, int]) -> None:
    src, dst = rates
    t = np.arange(src) / src
    x = (0.5 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)
    chunk = src // 50  # 20 ms
    r = StreamResampler(src, dst)
    outs = [r.process(x[i : i + chunk]) for i in range(0, len(x), chunk)]
    expected = chunk * dst // src
    # no bursts: every 20 ms chunk yields 20 ms (±1 sample) of output; the first one is short
    # by the filter delay (< 3 ms), which is trimmed so the output lines up with the input
    assert StreamResampler(src, dst).delay_ms < 3.0
    assert expected - dst * 3 // 1000 <= len(outs[0]) < expected
    assert all(abs(len(o) - expected) <= 1 for o in outs[1:])
    tail = r.flush()
    streamed = np.concatenate(outs + [tail])
    assert len(streamed) == dst  # exactly 1 s out for 1 s in
    one_shot = StreamResampler(src, dst)
    np.testing.assert_allclose(
        streamed, np.concatenate([one_shot.process(x), one_shot.flush()]), atol=1e-6
    )
    # the 300 Hz tone survives, aligned in time
    ty = np.arange(len(streamed)) / dst
    ideal = 0.5 * np.sin(2 * np.pi * 300 * ty)
    mid = slice(dst // 10, -dst // 10)
    assert np.max(np.abs(streamed[mid] - ideal[mid])) < 0.02


def test_stream_resampler_removes_aliases_when_downsampling() -> None:
    t = np.arange(24000) / 24000
    tone = (0.5 * np.sin(2 * np.pi * 6000 * t)).astype(np.float32)  # above 4 kHz Nyquist
    y = StreamResampler(24000, 8000).process(tone)
    assert np.max(np.abs(y[800:-800])) < 0.005  # would alias to 2 kHz at full level otherwise


def test_pcm16_conversion_round_trips() -> None:
    x = np.array([0.0, 0.5, -0.5, 0.999, -1.0, 1.7], dtype=np.float32)
    back = pcm16_to_float(float_to_pcm16(x))
    np.testing.assert_allclose(back[:5], x[:5], atol=1 / 32768)
    assert back[5] == pytest.approx(32767 / 32768)  # clipped, not wrapped


def test_token_comparison() -> None:
    assert token_matches(None, None) and token_matches("", "anything")
    assert token_matches("abc", "abc")
    assert not token_matches("abc", "abd") and not token_matches("abc", None)


def test_backend_choice(tmp_path) -> None:
    assert choose_backend("reference", "x").name == "reference"
    (tmp_path / "config.json").write_text("{}")
    # this machine has vLLM's CPU build (make install): auto takes it for a local checkpoint
    assert vllm_build() == "cpu"
    choice = choose_backend("auto", str(tmp_path), device="cpu")
    assert choice.name == "vllm" and "cpu build" in choice.reason
    # ... but not for a GPU it does not run on, nor without a local checkpoint
    choice = choose_backend("auto", str(tmp_path), device="cuda")
    assert choice.name == "reference" and "device 'cuda' was asked for" in choice.reason
    choice = choose_backend("auto", str(tmp_path / "missing"), device="cpu")
    assert choice.name == "cpu" and "no local checkpoint" in choice.reason
    assert "serves local checkpoints only" in choice.reason
    with pytest.raises(ValueError, match="unknown model backend 'gpu'"):
        choose_backend("gpu", "x")


# --------------------------------------------------------------------------------------------
# HTTP endpoints
# --------------------------------------------------------------------------------------------


async def test_health_ready_and_metrics(service) -> None:
    app, url = service
    base_url = http_base(url)
    status, body = await asyncio.to_thread(http_get, base_url + "/healthz")
    assert status == 200
    status, body = await asyncio.to_thread(http_get, base_url + "/readyz")
    assert status == 200 and json.loads(body)["backend"] == "scripted"
    app.state.service.set_backend(None)
    status, _ = await asyncio.to_thread(http_get, base_url + "/readyz")
    assert status == 503
    status, body = await asyncio.to_thread(http_get, base_url + "/metrics")
    assert status == 200
    assert "# TYPE stepcall_model_sessions_active gauge" in body
    assert "stepcall_model_ready 0.0" in body
    assert 'stepcall_model_time_to_first_audio_seconds_bucket{le="+Inf"} 0.0' in body


async def test_not_ready_refuses_sessions(service) -> None:
    app, url = service
    app.state.service.set_backend(None)
    peer = await open_peer(url)
    await peer.send(start_msg())
    ev = await peer.next_event()
    assert ev["type"] == "error" and ev["code"] == "not_ready" and ev["fatal"] is True


# --------------------------------------------------------------------------------------------
# auth
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["none", "wrong-header", "wrong-query"])
async def test_auth_refused_with_4401(service, how: str) -> None:
    _, url = service
    headers = {"Authorization": "Bearer nope"} if how == "wrong-header" else None
    target = url + "?token=nope" if how == "wrong-query" else url
    async with connect(target, additional_headers=headers) as ws:
        with pytest.raises(websockets.ConnectionClosed) as info:
            await ws.recv()
    assert info.value.rcvd.code == p.CLOSE_UNAUTHORIZED


async def test_auth_by_query_parameter(service, backend) -> None:
    _, url = service
    async with connect(f"{url}?token={TOKEN}") as ws:
        await ws.send(start_msg())
        assert json.loads(await ws.recv())["type"] == "session.started"


async def test_token_never_logged(service, caplog) -> None:
    from loguru import logger

    lines: list[str] = []
    sink = logger.add(lines.append, level="DEBUG")
    try:
        _, url = service
        async with connect(url + "?token=wrong-secret-123") as ws:
            with pytest.raises(websockets.ConnectionClosed):
                await ws.recv()
        peer = await open_peer(url, start_msg())
        await peer.send({"type": "session.end"})
        await peer.until("session.ended")
    finally:
        logger.remove(sink)
    joined = "".join(lines)
    assert "refused" in joined
    assert TOKEN not in joined and "wrong-secret-123" not in joined


async def test_uvicorn_connection_log_masks_query_token(service, caplog) -> None:
    import logging

    _, url = service
    caplog.set_level(logging.INFO, logger="uvicorn.error")
    async with connect(f"{url}?token={TOKEN}") as ws:
        await ws.send(start_msg())
        assert json.loads(await ws.recv())["type"] == "session.started"
    accepted = [r.getMessage() for r in caplog.records if "WebSocket" in r.getMessage()]
    assert accepted and all("token=***" in m for m in accepted)
    assert TOKEN not in caplog.text


# --------------------------------------------------------------------------------------------
# sessions and responses
# --------------------------------------------------------------------------------------------


async def test_full_turn_audio_in_and_out(service, backend) -> None:
    app, url = service
    peer = await open_peer(url, start_msg())
    rec = backend.records[0]
    assert rec.config.call_id == "CAtest" and rec.config.tools[0]["function"]["name"] == "lookup"
    # 1 s of 8 kHz user audio in 20 ms frames → ~1 s at 16 kHz reaches the backend
    tone = (0.3 * np.sin(2 * np.pi * 200 * np.arange(8000) / 8000)).astype(np.float32)
    pcm = float_to_pcm16(tone)
    for i in range(0, len(pcm), 320):
        await peer.send(pcm[i : i + 320])
    await peer.send({"type": "input_audio.commit"})
    await peer.send({"type": "response.create"})
    done, events, audio = await peer.until("response.done")
    assert rec.commits == 1
    total_in = sum(len(a) for a in rec.audio)
    assert total_in == 16000  # flushed at commit: nothing lost, nothing added
    types = [e["type"] for e in events]
    assert types[0] == "response.started"
    assert "".join(e["text"] for e in events if e["type"] == "text.delta") == "Hello there."
    assert done["status"] == "completed" and done["text"] == "Hello there."
    # 480 ms of 24 kHz audio arrives as 8 kHz PCM16
    assert abs(len(audio) // 2 - 3840) <= 8
    assert done["audio_ms"] == pytest.approx(480, abs=2)
    assert done["usage"] == {"prompt_tokens": 11, "completion_tokens": 30}
    assert done["timings"]["prefill_ms"] == 5.0 and done["timings"]["first_audio_ms"] > 0
    assert all(e.get("response_id") == done["response_id"] for e in events)
    # the bot audio is the 440 Hz tone, not garbage
    out = pcm16_to_float(audio)[400:-400]
    spectrum = np.abs(np.fft.rfft(out))
    assert abs(np.argmax(spectrum) * 8000 / len(out) - 440) < 10
    metrics = app.state.service.metrics
    assert sample(metrics, "stepcall_model_responses_total", status="completed") == 1
    _, text = await asyncio.to_thread(http_get, http_base(url) + "/metrics")
    assert 'stepcall_model_responses_total{status="completed"} 1.0' in text
    assert "stepcall_model_tokens_generated_total 30.0" in text
    assert "stepcall_model_sessions_active 1.0" in text
    assert sample(metrics, "stepcall_model_tokens_generated_total") == 30
    assert sample(metrics, "stepcall_model_time_to_first_audio_seconds_count") == 1
    await peer.send({"type": "session.end"})
    ended, _, _ = await peer.until("session.ended")
    assert ended["session_id"]
    await wait_for(lambda: app.state.service.active_sessions == 0)
    assert rec.closed


async def test_cancel_mid_response_with_heard_ms(service, backend) -> None:
    _, url = service
    peer = await open_peer(url, start_msg())
    await peer.send({"type": "response.create", "instructions": "slow"})
    audio = bytearray()
    while len(audio) < 3200:  # ~200 ms of bot audio
        raw = await asyncio.wait_for(peer.ws.recv(), 5)
        if isinstance(raw, bytes):
            audio.extend(raw)
    await peer.send({"type": "response.cancel", "heard_ms": 150})
    done, events, _ = await peer.until("response.done")
    assert done["status"] == "cancelled"
    assert backend.records[0].cancels == [150.0]
    assert done["audio_ms"] < 3000  # stopped long before the 10 s script ends
    # the session is still usable: a new response runs to completion
    await peer.send({"type": "response.create"})
    done2, _, _ = await peer.until("response.done")
    assert done2["status"] == "completed" and done2["response_id"] != done["response_id"]


async def test_cancel_right_behind_create_stops_the_backend(service, backend) -> None:
    _, url = service
    peer = await open_peer(url, start_msg())
    await peer.send({"type": "response.create", "instructions": "slow"})
    await peer.send({"type": "response.cancel", "heard_ms": 0})
    done, _, audio = await peer.until("response.done")
    assert done["status"] == "cancelled" and audio == b""
    assert done["timings"]["total_ms"] < 1000  # the backend stopped; no 10 s drain


async def test_cancel_after_done_still_reaches_the_backend(service, backend) -> None:
    _, url = service
    peer = await open_peer(url, start_msg())
    await peer.send({"type": "response.create"})
    await peer.until("response.done")
    await peer.send({"type": "response.cancel", "heard_ms": 90})
    await wait_for(lambda: backend.records[0].cancels == [90.0])


async def test_response_create_while_active_is_refused_but_harmless(service) -> None:
    _, url = service
    peer = await open_peer(url, start_msg())
    await peer.send({"type": "response.create", "instructions": "slow"})
    await peer.until("response.started")
    await peer.send({"type": "response.create"})
    err, _, _ = await peer.until("error")
    assert err["code"] == "response_active" and err["fatal"] is False
    await peer.send({"type": "response.cancel", "heard_ms": 0})
    done, _, _ = await peer.until("response.done")
    assert done["status"] == "cancelled"


async def test_tool_call_round_trip(service, backend) -> None:
    _, url = service
    peer = await open_peer(url, start_msg())
    await peer.send({"type": "response.create", "instructions": "tool"})
    done, events, _ = await peer.until("response.done")
    call = next(e for e in events if e["type"] == "tool.call")
    assert call["name"] == "lookup" and call["arguments"] == {"order": "42"}
    assert done["status"] == "tool_call"
    await peer.send({"type": "tool.result", "call_id": "nope", "output": "x"})
    err, _, _ = await peer.until("error")
    assert err["code"] == "unknown_tool_call"
    await peer.send(
        {"type": "tool.result", "call_id": call["call_id"], "output": '{"status": "shipped"}'}
    )
    await peer.send({"type": "response.create"})
    done, _, _ = await peer.until("response.done")
    assert backend.records[0].tool_results == [("call_1", '{"status": "shipped"}')]
    assert done["status"] == "completed"


@pytest.mark.parametrize("script", ["boom", "boom-later"])
async def test_backend_exception_ends_response_with_error_not_session(service, script) -> None:
    _, url = service
    peer = await open_peer(url, start_msg())
    await peer.send({"type": "response.create", "instructions": script})
    done, events, _ = await peer.until("response.done")
    assert done["status"] == "error"
    assert any(e["type"] == "error" and "GPU fell over" in e["message"] for e in events)
    await peer.send({"type": "response.create"})
    done, _, _ = await peer.until("response.done")
    assert done["status"] == "completed"


async def test_text_update_and_clear_reach_the_backend(service, backend) -> None:
    _, url = service
    peer = await open_peer(url, start_msg())
    await peer.send({"type": "input_text.append", "text": "The caller pressed 5.", "role": "human"})
    await peer.send({"type": "session.update", "voice": "bob", "system_prompt": "Be terse."})
    await peer.send(b"\x00\x01" * 160)
    await peer.send({"type": "input_audio.clear"})
    await peer.send({"type": "session.end"})
    await peer.until("session.ended")
    rec = backend.records[0]
    assert rec.texts == [("The caller pressed 5.", "human")]
    assert rec.updates[-1].voice == "bob" and rec.updates[-1].system_prompt == "Be terse."
    assert rec.updates[-1].tools == rec.config.tools  # unchanged fields are kept
    assert rec.clears == 1 and rec.audio == []


@pytest.mark.parametrize(
    "message, code",
    [
        ("this is not json", "bad_message"),
        ({"type": "response.explode"}, "bad_message"),
        ({"type": "input_text.append"}, "bad_message"),
        ({"type": "response.cancel", "heard_ms": "later"}, "bad_message"),
        (b"\x00\x01\x02", "bad_audio"),
        (b"\x00" * (8000 * 2 + 2), "too_large"),
        ("x" * (65 * 1024), "too_large"),
        ({"type": "tool.result", "call_id": "c", "output": "o"}, "unknown_tool_call"),
        (start_msg(), "bad_message"),  # a second session.start
    ],
)
async def test_bad_input_gets_an_error_and_the_session_continues(service, message, code) -> None:
    _, url = service
    peer = await open_peer(url, start_msg())
    await peer.send(message)
    err, _, _ = await peer.until("error")
    assert err["code"] == code and err["fatal"] is False, err
    await peer.send({"type": "response.create"})
    done, _, audio = await peer.until("response.done")
    assert done["status"] == "completed" and audio


async def test_messages_before_session_start(service) -> None:
    _, url = service
    peer = await open_peer(url)
    await peer.send(b"\x00\x00" * 80)
    err = await peer.next_event()
    assert err["code"] == "bad_audio" and "before session.start" in err["message"]
    await peer.send({"type": "response.create"})
    err = await peer.next_event()
    assert err["code"] == "no_session"
    await peer.send(start_msg())
    assert (await peer.next_event())["type"] == "session.started"


async def test_connection_without_session_start_is_closed(backend) -> None:
    app = create_app(backend, token=None, max_sessions=1, start_timeout_s=0.3)
    async with serving(app) as url, connect(url) as ws:
        await ws.send("garbage")  # answered, but does not count as a start
        assert json.loads(await ws.recv())["code"] == "bad_message"
        err = json.loads(await asyncio.wait_for(ws.recv(), 3))
        assert err["code"] == "no_session" and err["fatal"] is True
        with pytest.raises(websockets.ConnectionClosed) as info:
            await ws.recv()
        assert info.value.rcvd.code == p.CLOSE_PROTOCOL


async def test_wrong_protocol_version_is_fatal(service) -> None:
    _, url = service
    peer = await open_peer(url)
    await peer.send(start_msg(protocol=2))
    err = await peer.next_event()
    assert err["code"] == "protocol_version" and err["fatal"] is True
    with pytest.raises(websockets.ConnectionClosed) as info:
        await peer.ws.recv()
    assert info.value.rcvd.code == p.CLOSE_PROTOCOL


async def test_busy_rejection_at_max_sessions(service) -> None:
    app, url = service
    a = await open_peer(url, start_msg(call_id="a"))
    b = await open_peer(url, start_msg(call_id="b"))
    c = await open_peer(url)
    await c.send(start_msg(call_id="c"))
    err = await c.next_event(within=2.0)
    assert err["type"] == "error" and err["code"] == "busy" and err["fatal"] is True
    with pytest.raises(websockets.ConnectionClosed) as info:
        await c.ws.recv()
    assert info.value.rcvd.code == p.CLOSE_BUSY
    assert sample(app.state.service.metrics, "stepcall_model_sessions_rejected_busy_total") == 1
    # a slot frees when a session leaves
    await a.ws.close()
    await wait_for(lambda: app.state.service.active_sessions == 1)
    d = await open_peer(url, start_msg(call_id="d"))
    await d.ws.close()
    await b.ws.close()
    await wait_for(lambda: app.state.service.active_sessions == 0)


async def test_disconnect_mid_response_cancels_and_frees_everything(service, backend) -> None:
    app, url = service
    peer = await open_peer(url, start_msg())
    await peer.send({"type": "response.create", "instructions": "slow"})
    await peer.until("response.started")
    await asyncio.sleep(0.1)
    await peer.ws.close()
    state = app.state.service
    await wait_for(lambda: state.active_sessions == 0 and backend.records[0].closed)
    assert state.sessions == {}
    assert backend.records[0].cancels  # the running response was cancelled
    await wait_for(lambda: sample(state.metrics, "stepcall_model_responses_active") == 0)
    assert sample(state.metrics, "stepcall_model_response_queue_depth") == 0


async def test_interleaved_sessions_keep_their_own_responses(service, backend) -> None:
    app, url = service
    a = await open_peer(url, start_msg(call_id="a", output_sample_rate=8000))
    b = await open_peer(url, start_msg(call_id="b", output_sample_rate=48000))
    await a.send({"type": "response.create", "instructions": "tool"})
    await b.send({"type": "response.create"})
    (done_a, ev_a, audio_a), (done_b, ev_b, audio_b) = await asyncio.gather(
        a.until("response.done"), b.until("response.done")
    )
    assert done_a["status"] == "tool_call" and audio_a == b""
    assert done_b["status"] == "completed"
    assert abs(len(audio_b) // 2 - 48000 * 480 // 1000) <= 16
    assert {e["session_id"] for e in ev_a} != {e["session_id"] for e in ev_b}
    for peer in (a, b):
        await peer.send({"type": "session.end"})
        await peer.until("session.ended")
    await wait_for(lambda: app.state.service.active_sessions == 0)


# --------------------------------------------------------------------------------------------
# turn.check: the turn model (Smart Turn v3) on the service
# --------------------------------------------------------------------------------------------


@pytest.fixture
async def turn_service(backend: ScriptedBackend):
    from model_service.turn_checks import TurnModel

    model = TurnModel(1)
    app = create_app(backend, token=TOKEN, max_sessions=2, turn_model=model)
    async with serving(app) as url:
        yield app, url
    model.close()


def _turn_audio(text: str, rate: int, keep: float = 1.0) -> np.ndarray:
    from stepcall.audio.speech import synthesize

    words = synthesize(text, rate)
    words = words[: int(words.size * keep)]
    return np.concatenate([np.zeros(rate // 2, np.int16), words, np.zeros(rate // 5, np.int16)])


def _check(check_id: int, pcm: np.ndarray, rate: int) -> str:
    return p.message_to_json(p.TurnCheck.of(check_id, pcm.tobytes(), rate))


async def test_turn_check_gives_the_bots_own_probability(turn_service) -> None:
    """The service's verdict is Smart Turn's on that audio, the number the bot's analyzer
    computes (``smart_turn_probability``), at 8 and 16 kHz; the session's audio goes on
    flowing while an inference runs, and the verdicts are counted on /metrics."""
    from stepcall.audio.inference import smart_turn_probability

    app, url = turn_service
    for rate in (8000, 16000):
        peer = await open_peer(url)
        await peer.send(start_msg(input_sample_rate=rate))
        started = await peer.next_event()
        assert started["turn_model"] == "smart-turn-v3.2-cpu"
        complete = _turn_audio("Could you check my order status?", rate)
        cut = _turn_audio("So I was wondering if", rate)
        await peer.send(_check(1, complete, rate))
        await peer.send(_check(2, cut, rate))
        await peer.send(np.zeros(rate // 50, np.int16).tobytes())  # audio meanwhile: fine
        verdicts = {}
        while len(verdicts) < 2:
            ev = await peer.next_event(within=20)
            assert ev["type"] == "turn.verdict", ev
            verdicts[ev["check_id"]] = ev
        for check_id, pcm in ((1, complete), (2, cut)):
            expected = smart_turn_probability(pcm.astype(np.float32) / 32768.0, rate)
            v = verdicts[check_id]
            assert v["probability"] == expected and v["complete"] == (expected > 0.5)
            assert v["inference_ms"] > 0 and "error" not in v
        assert verdicts[1]["complete"] and not verdicts[2]["complete"]
        await peer.ws.close()
    metrics = app.state.service.metrics
    assert sample(metrics, "stepcall_model_turn_checks_total", result="complete") == 2
    assert sample(metrics, "stepcall_model_turn_checks_total", result="incomplete") == 2
    _, text = await asyncio.to_thread(http_get, http_base(url) + "/metrics")
    assert 'stepcall_model_turn_checks_total{result="complete"} 2.0' in text


async def test_turn_check_without_a_turn_model_is_an_error_verdict(service) -> None:
    _, url = service
    peer = await open_peer(url)
    await peer.send(start_msg())
    started = await peer.next_event()
    assert "turn_model" not in started
    await peer.send(_check(7, np.zeros(800, np.int16), 8000))
    verdict = await peer.next_event()
    assert verdict["type"] == "turn.verdict" and verdict["check_id"] == 7
    assert "probability" not in verdict and "no turn model" in verdict["error"]


@pytest.mark.parametrize(
    ("check", "code"),
    [
        ({"check_id": 1, "sample_rate": 8000, "audio": "AAE"}, "bad_message"),  # not base64
        ({"check_id": 1, "sample_rate": 8000, "audio": "AAAA"}, "bad_message"),  # 3 bytes
        ({"check_id": 1, "sample_rate": 8000, "audio": ""}, "bad_message"),
        ({"check_id": -1, "sample_rate": 8000, "audio": "AAA="}, "bad_message"),
        ({"check_id": 1, "sample_rate": 11025, "audio": "AAA="}, "bad_message"),
        ({"check_id": 1, "sample_rate": 8000}, "bad_message"),
    ],
)
async def test_bad_turn_checks_are_refused_and_the_session_goes_on(turn_service, check, code):
    _, url = turn_service
    peer = await open_peer(url, start_msg())
    await peer.send({"type": "turn.check", **check})
    ev = await peer.next_event()
    assert ev["type"] == "error" and ev["code"] == code and not ev["fatal"]
    await peer.send(_check(2, np.zeros(800, np.int16), 8000))
    ev = await peer.next_event(within=20)
    assert ev["type"] == "turn.verdict" and ev["check_id"] == 2


async def test_turn_check_audio_size_limits(turn_service) -> None:
    """Up to 8 s of audio at 48 kHz passes (the one text message past 64 KiB); more is
    ``too_large``, and a message of another type past 64 KiB still is."""
    _, url = turn_service
    peer = await open_peer(url, start_msg(input_sample_rate=48000))
    long = np.zeros(8 * 48000, np.int16)
    await peer.send(_check(1, long, 48000))
    ev = await peer.next_event(within=20)
    assert ev["type"] == "turn.verdict" and ev["check_id"] == 1 and "error" not in ev
    await peer.send(_check(2, np.zeros(8 * 48000 + 1, np.int16), 48000))
    ev = await peer.next_event()
    assert ev["type"] == "error" and ev["code"] == "too_large"
    await peer.send({"type": "input_text.append", "text": "x" * (70 * 1024)})
    ev = await peer.next_event()
    assert ev["type"] == "error" and ev["code"] == "too_large"


async def test_a_session_cannot_queue_more_than_four_turn_checks(turn_service) -> None:
    """Six checks sent at once: four are judged, the two beyond the cap get an error verdict
    at once; the session goes on (a later check is judged)."""
    from model_service.sessions import MAX_PENDING_TURN_CHECKS

    app, url = turn_service
    peer = await open_peer(url, start_msg())
    pcm = _turn_audio("Could you check my order status?", 8000)
    for check_id in range(1, 7):
        await peer.send(_check(check_id, pcm, 8000))
    verdicts = {}
    while len(verdicts) < 6:
        ev = await peer.next_event(within=20)
        assert ev["type"] == "turn.verdict", ev
        verdicts[ev["check_id"]] = ev
    judged = [i for i, v in verdicts.items() if "error" not in v]
    refused = [i for i, v in verdicts.items() if "error" in v]
    assert judged == [1, 2, 3, 4] == list(range(1, MAX_PENDING_TURN_CHECKS + 1))
    assert refused == [5, 6] and "pending" in verdicts[5]["error"]
    errors = sample(app.state.service.metrics, "stepcall_model_turn_checks_total", result="error")
    assert errors == 2
    await peer.send(_check(7, pcm, 8000))
    ev = await peer.next_event(within=20)
    assert ev["check_id"] == 7 and ev["complete"]


# --------------------------------------------------------------------------------------------
# POST /v1/speech
# --------------------------------------------------------------------------------------------


async def speech_post(url: str, body, *, auth: str | None = TOKEN, query: str = ""):
    import httpx

    headers = {"Authorization": f"Bearer {auth}"} if auth else {}
    async with httpx.AsyncClient(base_url=http_base(url), timeout=10) as http:
        if isinstance(body, dict):
            return await http.post(f"/v1/speech{query}", json=body, headers=headers)
        return await http.post(f"/v1/speech{query}", content=body, headers=headers)


@pytest.mark.parametrize("rate", [8000, 16000, 24000, 48000])
async def test_speech_renders_pcm16_at_the_asked_rate_then_hits_the_cache(
    service, backend, rate
) -> None:
    app, url = service
    text = "Hello, thanks for calling."
    r = await speech_post(url, {"text": f"  {text} ", "voice": "v1", "sample_rate": rate})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == f"audio/L16; rate={rate}; channels=1"
    assert r.headers["x-stepcall-cache"] == "miss"
    assert float(r.headers["x-stepcall-render-ms"]) >= backend.render_delay_s * 1000 * 0.9
    want24 = await backend.render_speech(text, voice="v1")
    assert len(r.content) == 2 * len(want24) * rate // 24000  # PCM16: 2 bytes a sample
    got = pcm16_to_float(r.content)
    # the session path's resampler gives the same samples as the endpoint
    rs = StreamResampler(24000, rate)
    want = np.concatenate([rs.process(want24), rs.flush()]) if rate != 24000 else want24
    assert np.abs(got - want).max() < 2 / 32768
    # the same text and voice at another rate: from the cache, no second render
    backend.renders.clear()
    other = 24000 if rate != 24000 else 8000
    r2 = await speech_post(url, {"text": text, "voice": "v1", "sample_rate": other})
    assert r2.status_code == 200 and r2.headers["x-stepcall-cache"] == "hit"
    assert backend.renders == []
    assert len(r2.content) == 2 * len(want24) * other // 24000
    # another voice or style is another render
    r3 = await speech_post(url, {"text": text, "voice": "v1", "style": "calm"})
    assert r3.headers["x-stepcall-cache"] == "miss" and backend.renders == [(text, "v1", "calm")]
    metrics = app.state.service.metrics
    assert sample(metrics, "stepcall_model_speech_renders_total", cache="miss") == 2
    assert sample(metrics, "stepcall_model_speech_renders_total", cache="hit") == 1


async def test_concurrent_identical_speech_requests_share_one_render(service, backend) -> None:
    _, url = service
    backend.render_delay_s = 0.3
    body = {"text": "One moment, please.", "sample_rate": 8000}
    replies = await asyncio.gather(*(speech_post(url, body) for _ in range(4)))
    assert [r.status_code for r in replies] == [200] * 4
    assert len(backend.renders) == 1
    assert sorted(r.headers["x-stepcall-cache"] for r in replies) == ["hit", "hit", "hit", "miss"]
    assert len({r.content for r in replies}) == 1


async def test_speech_cache_keeps_the_most_recent_renders(backend) -> None:
    app = create_app(backend, token=None, max_sessions=1, speech_cache_entries=2)
    async with serving(app) as url:
        for text in ("one", "two", "one", "three"):  # "two" is the least recent at "three"
            assert (await speech_post(url, {"text": text}, auth=None)).status_code == 200
        backend.renders.clear()
        hits = [
            (await speech_post(url, {"text": t}, auth=None)).headers["x-stepcall-cache"]
            for t in ("one", "three", "two")
        ]
    assert hits == ["hit", "hit", "miss"]
    assert [t for t, _, _ in backend.renders] == ["two"]


@pytest.mark.parametrize("how", ["none", "wrong-header", "wrong-query", "right-query"])
async def test_speech_auth(service, backend, how) -> None:
    _, url = service
    body = {"text": "Hi."}
    if how == "none":
        r = await speech_post(url, body, auth=None)
    elif how == "wrong-header":
        r = await speech_post(url, body, auth="nope")
    elif how == "wrong-query":
        r = await speech_post(url, body, auth=None, query="?token=nope")
    else:
        r = await speech_post(url, body, auth=None, query=f"?token={TOKEN}")
    if how == "right-query":
        assert r.status_code == 200
    else:
        assert r.status_code == 401 and r.json() == {"error": "unauthorized"}
        assert backend.renders == []


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        ({"voice": "v1"}, "'text' is required"),
        ({"text": "   "}, "'text' must not be empty"),
        ({"text": "a" * 1001}, "at most 1000"),
        ({"text": 42}, "'text'"),
        ({"text": "Hi.", "sample_rate": 22050}, "'sample_rate' must be one of"),
        ({"text": "Hi.", "voice": "nobody"}, "unknown voice"),
    ],
)
async def test_speech_bad_input_is_400(service, backend, body, says) -> None:
    app, url = service
    r = await speech_post(url, body)
    assert r.status_code == 400, r.text
    assert says in r.json()["error"]
    assert sample(app.state.service.metrics, "stepcall_model_speech_errors_total", status="400") == 1


async def test_speech_before_the_backend_is_ready_is_503(service, backend) -> None:
    app, url = service
    app.state.service.set_backend(None)
    r = await speech_post(url, {"text": "Hi."})
    assert r.status_code == 503 and r.json() == {"status": "loading"}


async def test_speech_on_a_backend_that_cannot_speak_is_501() -> None:
    class Mute(ScriptedBackend):
        render_speech = base.Backend.render_speech  # the interface's default

    app = create_app(Mute(), token=TOKEN, max_sessions=1)
    async with serving(app) as url:
        r = await speech_post(url, {"text": "Hi."})
    assert r.status_code == 501 and "cannot render speech" in r.json()["error"]


async def test_a_failed_render_is_500_and_not_cached(service, backend) -> None:
    app, url = service
    r = await speech_post(url, {"text": "boom"})
    assert r.status_code == 500 and "GPU fell over" in r.json()["error"]
    r = await speech_post(url, {"text": "boom"})
    assert r.status_code == 500 and len(backend.renders) == 2  # tried again: nothing cached
    assert sample(app.state.service.metrics, "stepcall_model_speech_errors_total", status="500") == 2
