"""`stepcall model --backend vllm` as a process, on the real engine (vLLM's CPU build).

One service on a tiny checkpoint shaped to say a filler and call ``get_weather`` (then answer
once the result is in the context): a tool-call round trip and 8 concurrent sessions over the
real WebSocket protocol, then SIGTERM must leave no child process (vLLM's EngineCore and worker
are children of the service). Further services: SIGINT, and an engine killed under the service
(``/readyz`` fails, the process exits non-zero).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import pytest

from harness.checkpoints.tiny_checkpoint import (
    after_tool_script,
    build_tiny_checkpoint,
    tool_call_script,
)
from harness.checkpoints.tiny_tokenizer import build_tiny_tokenizer
from model_service.stepaudio2.tokenizer import StepAudio2Tokenizer
from pipeline.step_audio2 import client as mc
from stepcall.audio.pcm import float_to_pcm16

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
FILLER = "One moment, let me check."
ANSWER = "Sunny with 18 degrees today."
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


@pytest.fixture(scope="module")
def tool_ckpt(tmp_path_factory) -> Path:
    tok_dir = tmp_path_factory.mktemp("tok")
    build_tiny_tokenizer(tok_dir)
    tok = StepAudio2Tokenizer.from_pretrained(tok_dir)
    first = tool_call_script(tok, filler=FILLER)
    return build_tiny_checkpoint(
        tmp_path_factory.mktemp("tool"),
        script=first,
        after_tool_script=after_tool_script(tok, first, text=ANSWER),
    )


@dataclass
class Service:
    popen: subprocess.Popen
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/session"

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    def readyz(self) -> tuple[int, dict] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=2) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")
        except OSError:
            return None

    def children(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.popen.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_service(ckpt: Path, logs: Path) -> Service:
    port = free_port()
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "VLLM_CACHE_ROOT": str(logs / "vllm-cache"),
        "STEPCALL_VLLM_ENFORCE_EAGER": "1",  # start-up time: no torch.compile
        "STEPCALL_VLLM_MAX_NUM_SEQS": "8",
        "STEPCALL_VLLM_CPU_KV_CACHE_GIB": "1",
        "STEPCALL_MAX_SESSIONS": "16",
        "STEPCALL_MODEL_TURN_MODEL": "none",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("STEPCALL_MODEL_TOKEN", None)
    log = logs / f"model-{port}.log"
    popen = subprocess.Popen(
        [sys.executable, "-m", "bots.cli", "model", "--backend", "vllm", "--model", str(ckpt),
         "--device", "cpu", "--dtype", "float32", "--port", str(port)],
        cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    service = Service(popen, port, log)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            raise RuntimeError(f"model service exited ({popen.returncode}):\n{service.tail()}")
        ready = service.readyz()
        if ready is not None and ready[0] == 200:
            assert ready[1]["backend"] == "vllm"
            return service
        time.sleep(0.5)
    popen.kill()
    raise RuntimeError(f"model service not ready in 240 s:\n{service.tail()}")


def stop(service: Service) -> None:
    if service.popen.poll() is None:
        service.popen.kill()
        service.popen.wait(10)
    for child in service.children():
        child.kill()


def assert_no_child_left(children: list[psutil.Process], within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    alive = children
    while alive and time.monotonic() < deadline:
        alive = [c for c in alive if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
        time.sleep(0.2)
    assert not alive, f"left running: {[(c.pid, c.name()) for c in alive]}"


@pytest.fixture(scope="module")
def service(tool_ckpt, tmp_path_factory) -> Iterator[Service]:
    svc = start_service(tool_ckpt, tmp_path_factory.mktemp("vllm-service"))
    yield svc
    stop(svc)


def start(call_id: str) -> mc.SessionStart:
    return mc.SessionStart(
        call_id=call_id,
        system_prompt="You answer weather questions.",
        tools=TOOLS,
        input_sample_rate=8000,
        output_sample_rate=8000,
        sampling=mc.Sampling(temperature=0.0, repetition_penalty=1.0),
    )


async def one_response(events, within: float = 60.0) -> list:
    out = []
    while True:
        ev = await asyncio.wait_for(anext(events), within)
        out.append(ev)
        if isinstance(ev, (mc.ResponseDone, mc.Closed)):
            return out


def texts(events: list) -> str:
    return "".join(e.text for e in events if isinstance(e, mc.TextDelta))


def caller_audio(seconds: float, seed: int) -> bytes:
    rate = 8000
    t = np.arange(int(seconds * rate)) / rate
    f0 = 150 + 10 * seed
    return float_to_pcm16(0.2 * np.sin(2 * np.pi * f0 * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2)


async def tool_call_round_trip(url: str, call_id: str) -> tuple[list, list]:
    client = mc.ModelServiceClient(url)
    started = await client.connect(start(call_id))
    assert started.backend == "vllm"
    events = client.events()
    await client.send_audio(caller_audio(1.0, len(call_id)))
    await client.commit()
    await client.create_response()
    first = await one_response(events)
    calls = [e for e in first if isinstance(e, mc.ToolCall)]
    assert [(c.name, c.arguments) for c in calls] == [("get_weather", {"city": "Paris"})], first
    await client.send_tool_result(calls[0].call_id, json.dumps({"temp": 18}))
    await client.create_response()
    second = await one_response(events)
    await client.close()
    return first, second


async def test_tool_call_round_trip_over_the_protocol(service):
    first, second = await tool_call_round_trip(service.url, "CA-tool")
    assert texts(first).strip() == FILLER
    assert first[-1].status == "tool_call"
    assert [e for e in first if isinstance(e, mc.AudioChunk)]  # the filler is spoken
    assert second[-1].status == "completed" and "18 degrees today" in texts(second)
    # prompts go to vLLM rendered (the raw-dict form is deprecated and warns on each request)
    assert "Passing raw prompts" not in service.log.read_text(errors="replace")


async def test_eight_concurrent_sessions(service):
    results = await asyncio.gather(
        *(tool_call_round_trip(service.url, f"CA-{i}") for i in range(8))
    )
    for first, second in results:
        assert texts(first).strip() == FILLER and first[-1].status == "tool_call"
        assert second[-1].status == "completed" and "18 degrees today" in texts(second)


def test_sigterm_leaves_no_child_process(service):
    children = service.children()
    names = " ".join(c.name() for c in children)
    assert len(children) >= 1, names  # vLLM's EngineCore (and its worker)
    service.popen.send_signal(signal.SIGTERM)
    service.popen.wait(60)
    assert_no_child_left(children)


def test_sigint_leaves_no_child_process(tool_ckpt, tmp_path):
    svc = start_service(tool_ckpt, tmp_path)
    try:
        children = svc.children()
        assert children
        svc.popen.send_signal(signal.SIGINT)
        svc.popen.wait(60)
        assert_no_child_left(children)
    finally:
        stop(svc)


def test_a_dead_engine_fails_readyz_and_ends_the_service_non_zero(tool_ckpt, tmp_path):
    svc = start_service(tool_ckpt, tmp_path)
    try:
        engine = [c for c in svc.children() if "EngineCore" in " ".join(c.cmdline()) + c.name()]
        assert engine, [(c.name(), c.cmdline()) for c in svc.children()]
        engine[0].kill()
        seen = []
        deadline = time.monotonic() + 60
        while svc.popen.poll() is None and time.monotonic() < deadline:
            ready = svc.readyz()
            seen.append(ready[0] if ready else None)
            time.sleep(0.05)
        assert svc.popen.poll() is not None, f"still running:\n{svc.tail()}"
        assert svc.popen.returncode != 0
        assert 200 not in seen[2:], seen  # never ready again once the engine died
        assert "the vLLM engine died" in svc.log.read_text(errors="replace"), svc.tail()
    finally:
        stop(svc)

