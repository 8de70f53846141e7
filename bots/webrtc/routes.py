"""Browser calls: the SmallWebRTC (aiortc) routes of the bot server and one pipeline per call.

Routes added by :func:`add_webrtc_routes`:

- ``GET /call?bot=NAME``: a page with the call widget (call button, mic permission, connection
  state, live transcript, mute, hang-up).
- ``GET /widget/...``: the widget's static files; ``/widget/stepcall-widget.js`` is also the
  embeddable snippet: ``<script src="https://BOTS/widget/stepcall-widget.js" data-bot="NAME"
  async></script>`` on any site adds a floating call button.
- ``GET /webrtc/config``: ICE servers for the browser and the bots it may call.
- ``POST /webrtc/offer``: SDP offer ``{"sdp", "type": "offer", "pc_id"?, "request_data":
  {"bot"}}`` → answer ``{"sdp", "type", "pc_id"}``. Starts a call (shares the server's
  concurrent-call limit: 503 when full) and is rate limited per client IP (429 + Retry-After).
  With ``STEPCALL_WIDGET_SECRET`` set it needs a call token for the bot in
  ``request_data.token`` (401 otherwise; ``bots/webrtc/tokens.py``).
- ``POST /webrtc/token`` (bearer ``STEPCALL_API_TOKEN``): ``{"bot", "ttl_secs"?}`` → a call token
  ``{"token", "bot", "expires_at"}`` for the site that embeds the widget.
- ``PATCH /webrtc/offer``: trickle ICE ``{"pc_id", "candidates": [{"candidate", "sdp_mid",
  "sdp_mline_index"}]}``.

Audio: the pipeline runs at 16 kHz in and out. The browser sends Opus at 48 kHz, which the
transport resamples once (PyAV) to 16 kHz, the native rate of Silero VAD, Smart Turn and the
model's audio encoder; the model service returns 16 kHz PCM, which aiortc encodes to Opus. One
pipeline rate keeps every in-process hop free of stream resamplers (see ``bots/call.py``), and
16 kHz wideband is as good as the bot's speech needs on a laptop speaker. Browsers cancel echo
themselves (``echoCancellation``), so the phone path's echo guard is off here.

Settings (env vars; proposed for ``stepcall/settings.py``, read from the environment until then):

| env var | default | meaning |
|---|---|---|
| STEPCALL_ICE_SERVERS | (none: host candidates only) | JSON list (URLs or ``{"urls", "username", "credential"}``) or comma list of ``stun:``/``turn:``/``turns:`` URLs |
| STEPCALL_WEBRTC_OFFERS_PER_MINUTE | 10 | new calls per client IP per minute (0: no limit) |
| STEPCALL_WIDGET_ORIGINS | * | comma list of sites allowed to embed the widget (CORS) |
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from loguru import logger
from pipecat.transports.smallwebrtc.connection import SmallWebRTCConnection
from pipecat.transports.smallwebrtc.request_handler import (
    IceCandidate,
    SmallWebRTCPatchRequest,
    SmallWebRTCRequest,
    SmallWebRTCRequestHandler,
)

from bots.call import CallInfo
from bots.records.service import recorded_call
from bots.registry import BotRegistry
from bots.webrtc.call import WEBRTC_RATE, run_webrtc_call
from bots.webrtc.config import (
    OfferRateLimiter,
    WebRTCConfig,
    ice_servers_for_browser,
    sdp_offer_problem,
)
from bots.webrtc.tokens import WidgetTokens
from stepcall.runtime.tokens import bearer_token, secrets_equal
from stepcall.settings import Settings

STATIC_DIR = Path(__file__).resolve().parent / "static"


# --------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# one call
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# routes
# --------------------------------------------------------------------------------------------


class WebRTCCalls:
    """The app's live browser calls: the SmallWebRTC request handler and the call tasks."""

    def __init__(self, config: WebRTCConfig) -> None:
        """Create the handler with the configured ICE servers."""
        self.config = config
        self.handler = SmallWebRTCRequestHandler(ice_servers=config.ice_servers or None)
        self.tasks: set[asyncio.Task] = set()
        self.limiter = OfferRateLimiter(config.offers_per_minute)
        self.tokens = WidgetTokens(config.widget_secret, ttl_secs=config.widget_token_ttl_secs)

    def start(self, coro: Any, name: str) -> asyncio.Task:
        """Run a call in the background, keeping a reference until it ends."""
        task = asyncio.create_task(coro, name=name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def has_peer(self, pc_id: str) -> bool:
        """True while the peer connection ``pc_id`` is live."""
        return pc_id in self.handler._pcs_map  # the handler keeps no public lookup

    async def close(self) -> None:
        """End every call (server shutdown)."""
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.handler.close()


def _cors_headers(config: WebRTCConfig, request: Request) -> dict[str, str]:
    origin = request.headers.get("origin")
    if not origin:
        return {}
    if "*" in config.allowed_origins:
        allowed = "*"
    elif origin.rstrip("/") in config.allowed_origins:
        allowed = origin
    else:
        return {}
    return {
        "Access-Control-Allow-Origin": allowed,
        "Access-Control-Allow-Methods": "GET, POST, PATCH, OPTIONS",
        "Access-Control-Allow-Headers": "Content-Type",
        "Access-Control-Max-Age": "600",
        "Vary": "Origin",
    }


def _json(
    request: Request, config: WebRTCConfig, body: Any, status: int = 200, **headers: str
) -> JSONResponse:
    return JSONResponse(
        body, status_code=status, headers={**_cors_headers(config, request), **headers}
    )


def _client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _wrap_lifespan(app: FastAPI, calls: WebRTCCalls) -> None:
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(a: FastAPI) -> AsyncIterator[Any]:
        async with inner(a) as state:
            try:
                yield state
            finally:
                await calls.close()

    app.router.lifespan_context = lifespan


def _is_webrtc_route(route: object) -> bool:
    path = getattr(route, "path", "")
    return path == "/call" or path.startswith(("/widget", "/webrtc"))


def add_webrtc_routes(
    app: FastAPI,
    settings: Settings,
    registry: BotRegistry,
    *,
    config: WebRTCConfig | None = None,
) -> None:
    """Add the browser-call routes and the widget to the bot server ``app``.

    ``config`` defaults to :meth:`WebRTCConfig.from_settings`. Calls count against
    ``app.state.calls`` (the server's concurrent-call limit) when the app has one.
    """
    config = config or WebRTCConfig.from_settings(settings)
    # Calling this again (e.g. with another config) replaces the routes added before.
    app.router.routes[:] = [r for r in app.router.routes if not _is_webrtc_route(r)]
    calls = WebRTCCalls(config)
    app.state.webrtc = calls
    _wrap_lifespan(app, calls)
    if not config.ice_servers:
        logger.info("STEPCALL_ICE_SERVERS not set: WebRTC uses host candidates only (no NAT)")
    if not calls.tokens.enabled:
        logger.warning(
            "STEPCALL_WIDGET_SECRET not set: anyone may start browser calls "
            "(/webrtc/offer is only rate limited per IP)"
        )
    app.mount("/widget", StaticFiles(directory=STATIC_DIR), name="widget")

    @app.get("/call")
    async def call_page() -> FileResponse:
        return FileResponse(STATIC_DIR / "call.html", media_type="text/html")

    @app.get("/webrtc/config")
    async def webrtc_config(request: Request) -> JSONResponse:
        return _json(
            request,
            config,
            {
                "iceServers": ice_servers_for_browser(config.ice_servers),
                "bots": registry.names(),
                "default": registry.default,
                "sampleRate": WEBRTC_RATE,
            },
        )

    @app.options("/webrtc/config")
    @app.options("/webrtc/offer")
    async def webrtc_preflight(request: Request) -> Response:
        return Response(status_code=204, headers=_cors_headers(config, request))

    @app.post("/webrtc/offer")
    async def webrtc_offer(request: Request) -> JSONResponse:
        try:
            body = await request.json()
        except ValueError:
            return _json(request, config, {"error": 'body must be JSON with "sdp" and "type"'}, 400)
        if not isinstance(body, dict):
            return _json(request, config, {"error": "body must be a JSON object"}, 400)
        sdp, kind = body.get("sdp"), body.get("type")
        if not isinstance(sdp, str) or not sdp.strip():
            return _json(
                request, config, {"error": 'missing "sdp" (the browser\'s SDP offer)'}, 400
            )
        if kind != "offer":
            return _json(request, config, {"error": f'"type" must be "offer", got {kind!r}'}, 400)
        data = body.get("request_data") or body.get("requestData") or {}
        if not isinstance(data, dict):
            return _json(request, config, {"error": '"request_data" must be an object'}, 400)
        data = dict(data)
        call_token = data.pop("token", None)  # checked here; never handed on (nor logged)
        problem = sdp_offer_problem(sdp)
        if problem:
            logger.warning(f"WebRTC offer from {_client_ip(request)} refused: {problem}")
            return _json(request, config, {"error": problem}, 400)
        pc_id = body.get("pc_id") or None
        webrtc_request = SmallWebRTCRequest(
            sdp=sdp,
            type=kind,
            pc_id=pc_id,
            restart_pc=bool(body.get("restart_pc")),
            request_data=data,
        )
        if pc_id:  # renegotiation of a live call
            if not calls.has_peer(pc_id):
                return _json(request, config, {"error": f"no live call with pc_id {pc_id!r}"}, 404)
            answer = await calls.handler.handle_web_request(webrtc_request, _no_new_call)
            return _json(request, config, answer)

        ip = _client_ip(request)
        retry = calls.limiter.check(ip)
        if retry:
            logger.warning(f"WebRTC offer from {ip} refused: over {config.offers_per_minute}/min")
            return _json(
                request,
                config,
                {"error": "too many calls from this address; try again later"},
                429,
                **{"Retry-After": str(int(retry) + 1)},
            )
        bot = str(data.get("bot") or request.query_params.get("bot") or registry.default)
        if bot not in registry.names():
            return _json(
                request,
                config,
                {"error": f"unknown bot {bot!r} (known: {', '.join(registry.names())})"},
                404,
            )
        allowed = calls.tokens.check(bot, call_token)
        if not allowed.ok:
            logger.warning(f"WebRTC offer from {ip} for bot {bot} refused: {allowed.reason}")
            return _json(request, config, {"error": allowed.reason}, 401)
        counter = getattr(app.state, "calls", None)
        if counter is not None and not counter.try_acquire():
            logger.warning(f"WebRTC offer from {ip} refused: call limit reached")
            return _json(request, config, {"error": "all lines are busy; try again later"}, 503)
        profile = registry.get(bot)
        call_id = f"web-{uuid.uuid4().hex[:16]}"
        started = False

        async def on_connection(connection: SmallWebRTCConnection) -> None:
            nonlocal started
            started = True
            call = CallInfo(
                call_id=call_id,
                stream_sid=connection.pc_id,
                params={"bot": bot, "transport": "webrtc", "client_ip": ip},
            )

            async def run() -> None:
                records = getattr(app.state, "records", None)
                observer = records.observer(call, profile) if records is not None else None
                log = logger.bind(call_id=call_id)
                try:
                    async with recorded_call(observer, log):
                        await run_webrtc_call(
                            connection,
                            call,
                            profile,
                            settings,
                            connect_timeout_secs=config.connect_timeout_secs,
                            observers=[observer] if observer is not None else None,
                            lines=getattr(app.state, "spoken_lines", None),
                        )
                except Exception:
                    log.exception("browser call failed")
                finally:
                    if counter is not None:
                        counter.release()

            calls.start(run(), name=f"webrtc-call-{call_id}")

        try:
            answer = await calls.handler.handle_web_request(webrtc_request, on_connection)
        except Exception as e:
            if counter is not None and not started:
                counter.release()
            logger.warning(f"WebRTC offer from {ip} failed: {e}")
            return _json(request, config, {"error": f"could not answer the offer: {e}"}, 400)
        logger.bind(call_id=call_id).info(f"browser call from {ip}: bot {bot}")
        return _json(request, config, {**answer, "call_id": call_id})

    @app.post("/webrtc/token")
    async def webrtc_token(request: Request) -> JSONResponse:
        if not calls.tokens.enabled:
            return _json(request, config, {"error": "widget tokens are off: set "
                                           "STEPCALL_WIDGET_SECRET"}, 404)
        if not config.api_token:
            return _json(request, config, {"error": "minting tokens needs STEPCALL_API_TOKEN"}, 503)
        presented = bearer_token(request.headers.get("Authorization"))
        if presented is None or not secrets_equal(presented, config.api_token):
            logger.warning(f"widget token request from {_client_ip(request)}: wrong bearer token")
            return _json(
                request, config, {"error": "missing or wrong bearer token"}, 401,
                **{"WWW-Authenticate": "Bearer"},
            )
        try:
            body = await request.json()
        except ValueError:
            body = {}
        body = body if isinstance(body, dict) else {}
        bot = str(body.get("bot") or registry.default)
        if bot not in registry.names():
            return _json(request, config, {"error": f"unknown bot {bot!r}"}, 404)
        ttl = body.get("ttl_secs")
        try:
            token = calls.tokens.issue(bot, ttl_secs=None if ttl is None else int(ttl))
        except (TypeError, ValueError) as e:
            return _json(request, config, {"error": str(e)}, 400)
        return _json(
            request, config,
            {"token": token, "bot": bot, "expires_at": WidgetTokens.expires_at(token)},
        )

    @app.patch("/webrtc/offer")
    async def webrtc_candidates(request: Request) -> Response:
        try:
            body = await request.json()
            candidates = [
                IceCandidate(
                    candidate=str(c.get("candidate") or ""),
                    sdp_mid=str(c.get("sdp_mid", c.get("sdpMid")) or "0"),
                    sdp_mline_index=int(c.get("sdp_mline_index", c.get("sdpMLineIndex")) or 0),
                )
                for c in body.get("candidates") or []
            ]
            patch = SmallWebRTCPatchRequest(pc_id=str(body["pc_id"]), candidates=candidates)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            return _json(
                request,
                config,
                {"error": f'body must be {{"pc_id", "candidates": [...]}} ({e})'},
                400,
            )
        if not calls.has_peer(patch.pc_id):
            return _json(
                request, config, {"error": f"no live call with pc_id {patch.pc_id!r}"}, 404
            )
        await calls.handler.handle_patch_request(patch)
        return Response(status_code=204, headers=_cors_headers(config, request))


async def _no_new_call(_connection: SmallWebRTCConnection) -> None:
    raise RuntimeError("a renegotiation must not start a new call")


__all__ = ["WebRTCCalls", "add_webrtc_routes"]
