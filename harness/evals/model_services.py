"""Model services for eval scenarios, started on loopback and shared by equal ``ModelSpec``s.

- ``demo`` / ``tiny``: the reference backend (PyTorch, CPU, fp32) on a tiny checkpoint built
  with ``harness.checkpoints`` (the demo checkpoint, or one shaped to call a tool), served by
  the real model service app. Built checkpoints are cached under ``cache_dir`` by a key made of
  the spec and the source of the checkpoint builders, so a second run skips the ~13 s build.
- ``cpu``: the CPU backend (``model_service.backends.cpu.load_cpu_backend``, models from their
  packages), loaded once in a thread and served by the real model service app;
- ``canned``: :class:`harness.canned_model_service.CannedModelService` speaking the text
  (synthesised at the phone rate, 8 kHz), with or without the text.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
from pathlib import Path

from loguru import logger

from harness.evals.spec import ModelSpec
from stepcall.settings import Settings

PHONE_RATE = 8000
_BUILDER_SOURCES = (
    "tiny_checkpoint.py", "demo_checkpoint.py", "tiny_tokenizer.py", "tiny_token2wav.py",
)


def default_cache_dir() -> Path:
    """``$STEPCALL_EVAL_CACHE`` or ``~/.cache/stepcall/evals``."""
    env = Settings.from_env().eval_cache_dir
    return Path(env).expanduser() if env else Path.home() / ".cache" / "stepcall" / "evals"


def checkpoint_key(spec: ModelSpec) -> str:
    """Cache key of a tiny checkpoint: the spec plus the builders' source code."""
    import harness.checkpoints as testing

    h = hashlib.sha256(spec.key().encode())
    folder = Path(testing.__file__).parent
    for name in _BUILDER_SOURCES:
        f = folder / name
        if f.is_file():
            h.update(f.read_bytes())
    return h.hexdigest()[:20]


def build_checkpoint(spec: ModelSpec, out: Path) -> Path:
    """Build the tiny checkpoint of ``spec`` into ``out`` (blocking)."""
    from harness.checkpoints.demo_checkpoint import DEMO_REPLY, build_demo_checkpoint

    if spec.kind == "demo":
        return build_demo_checkpoint(out, reply=spec.reply or DEMO_REPLY)
    if spec.kind != "tiny" or not spec.tool_name:
        raise ValueError(f"no checkpoint for model kind {spec.kind!r}")
    import tempfile

    from harness.checkpoints.tiny_checkpoint import (
        after_tool_script,
        build_tiny_checkpoint,
        tool_call_script,
    )
    from harness.checkpoints.tiny_tokenizer import build_tiny_tokenizer
    from model_service.stepaudio2.tokenizer import StepAudio2Tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        build_tiny_tokenizer(tmp)
        tok = StepAudio2Tokenizer.from_pretrained(tmp)
    first = tool_call_script(tok, name=spec.tool_name, arguments=spec.tool_arguments,
                             filler=spec.filler)
    after = after_tool_script(tok, first, text=spec.after_tool)
    return build_tiny_checkpoint(out, script=first, after_tool_script=after)


def cached_checkpoint(spec: ModelSpec, cache_dir: Path) -> Path:
    """The checkpoint of ``spec``, built into ``cache_dir`` once (blocking)."""
    target = cache_dir / f"{spec.kind}-{checkpoint_key(spec)}"
    if (target / "config.json").is_file() and (target / ".complete").is_file():
        return target
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    build_checkpoint(spec, tmp)
    (tmp / ".complete").write_text("ok\n")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


class ModelServices:
    """Starts one loopback model service per distinct spec; ``async with`` closes them all."""

    def __init__(self, cache_dir: Path | None = None, max_sessions: int = 4) -> None:
        self.cache_dir = cache_dir or default_cache_dir()
        self.max_sessions = max_sessions
        self._urls: dict[str, str] = {}
        self._stack = contextlib.AsyncExitStack()
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> ModelServices:
        await self._stack.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.__aexit__(*exc)

    async def url(self, spec: ModelSpec) -> str:
        """The session URL of the service for ``spec`` (started on first use)."""
        async with self._lock:
            key = spec.key()
            if key not in self._urls:
                self._urls[key] = await self._start(spec)
            return self._urls[key]

    async def _start(self, spec: ModelSpec) -> str:
        if spec.kind == "canned":
            from harness.canned_model_service import CannedModelService
            from stepcall.audio.speech import synthesize

            assert spec.canned is not None
            pcm = await asyncio.to_thread(synthesize, spec.canned, PHONE_RATE)
            service = CannedModelService(pcm.tobytes(), spec.canned if spec.canned_text else "")
            return await self._stack.enter_async_context(service.serving())

        from model_service.server import create_app, serving

        if spec.kind == "cpu":
            from model_service.backends.cpu import load_cpu_backend

            logger.info("eval model: cpu backend (loading its models)")
            backend = await asyncio.to_thread(load_cpu_backend)  # the app's lifespan closes it
            app = create_app(backend, token=None, max_sessions=self.max_sessions)
            return await self._stack.enter_async_context(serving(app))

        from model_service.backends.reference import load_reference_backend

        self.cache_dir.mkdir(parents=True, exist_ok=True)
        logger.info(f"eval model: {spec.kind} checkpoint (cache {self.cache_dir})")
        ckpt = await asyncio.to_thread(cached_checkpoint, spec, self.cache_dir)
        backend = await asyncio.to_thread(load_reference_backend, ckpt, "cpu", "float32")
        app = create_app(backend, token=None, max_sessions=self.max_sessions)
        return await self._stack.enter_async_context(serving(app))
