"""Fixtures that run the real processes: `stepcall model` and `stepcall serve` on loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Proc:
    """A started stepcall process and its log file."""

    popen: subprocess.Popen
    log: Path

    def tail(self, n: int = 60) -> str:
        lines = self.log.read_text(errors="replace").splitlines()
        return "\n".join(lines[-n:])


def _start(args: list[str], env: dict[str, str], log: Path) -> Proc:
    handle = log.open("w")
    popen = subprocess.Popen(
        [sys.executable, "-m", "bots.cli", *args],
        cwd=ROOT,
        env=env,
        stdout=handle,
        stderr=subprocess.STDOUT,
    )
    return Proc(popen, log)


def _wait_http(url: str, proc: Proc, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"process exited ({proc.popen.returncode}):\n{proc.tail()}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"timed out waiting for {url}:\n{proc.tail()}")


def _stop(proc: Proc) -> None:
    if proc.popen.poll() is None:
        proc.popen.terminate()
        try:
            proc.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.popen.kill()
            proc.popen.wait()


@dataclass
class Stack:
    """A running model service + bot server."""

    model: Proc
    web: Proc
    model_port: int
    web_port: int

    @property
    def stream_url(self) -> str:
        return f"ws://127.0.0.1:{self.web_port}/twilio/stream"


@pytest.fixture(scope="session")
def shaped_checkpoint(tmp_path_factory) -> Path:
    """The tiny Step-Audio 2 checkpoint, shaped to speak a scripted TA4 reply."""
    from harness.checkpoints.demo_checkpoint import build_demo_checkpoint

    return build_demo_checkpoint(tmp_path_factory.mktemp("tiny-step-audio2"))


@pytest.fixture(scope="session")
def stack(shaped_checkpoint, tmp_path_factory) -> Iterator[Stack]:
    """`stepcall model` (reference backend, tiny checkpoint) + `stepcall serve`, on loopback."""
    logs = tmp_path_factory.mktemp("logs")
    flows = tmp_path_factory.mktemp("flows")  # empty: the server serves its default bot
    model_port, web_port = free_port(), free_port()
    env = {
        **os.environ,
        "STEPCALL_MODEL_PORT": str(model_port),
        "STEPCALL_PORT": str(web_port),
        "STEPCALL_MODEL_URL": f"ws://127.0.0.1:{model_port}/v1/session",
        "STEPCALL_FLOWS_DIR": str(flows),
        "STEPCALL_LOG_LEVEL": "DEBUG",
        "STEPCALL_DATABASE_URL": f"sqlite:///{logs}/calls.db",
        "PYTHONUNBUFFERED": "1",
    }
    for name in ("TWILIO_AUTH_TOKEN", "STEPCALL_STREAM_SECRET", "STEPCALL_MODEL_TOKEN"):
        env.pop(name, None)  # an unauthenticated loopback stack, whatever the shell has set
    model = _start(
        ["model", "--backend", "reference", "--model", str(shaped_checkpoint), "--device", "cpu"],
        env,
        logs / "model.log",
    )
    web = None
    try:
        _wait_http(f"http://127.0.0.1:{model_port}/readyz", model, timeout=180)
        web = _start(["serve"], env, logs / "web.log")
        _wait_http(f"http://127.0.0.1:{web_port}/healthz", web, timeout=120)
        yield Stack(model, web, model_port, web_port)
    finally:
        if web is not None:
            _stop(web)
        _stop(model)
