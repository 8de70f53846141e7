"""The bot web server (``stepcall serve``, Procfile ``web:``): many bots, many calls.

Routes:
- ``POST /twilio/voice``: Twilio's voice webhook; answers TwiML ``<Connect><Stream>`` to our media
  WebSocket, choosing the bot by the called number.
- ``WS /twilio/stream``: Twilio Media Streams; one Pipecat pipeline per call.
- ``GET /healthz``, ``GET /``: liveness and a landing page with the URLs to configure.
"""

from __future__ import annotations

import asyncio
import html
from typing import Any

from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import HTMLResponse, JSONResponse, Response
from loguru import logger
from pipecat.runner.utils import parse_telephony_websocket
from twilio.request_validator import RequestValidator
from twilio.twiml.voice_response import Connect, Hangup, Say, Stream, VoiceResponse

from bots.call import CallInfo, run_twilio_call
from bots.registry import BotRegistry
from bots.settings import Settings


class CallCounter:
    """Counts live calls and enforces the server's concurrent-call limit."""

    def __init__(self, limit: int) -> None:
        """Create a counter allowing ``limit`` calls at once."""
        self.limit = limit
        self.active = 0
        self.total = 0

    def try_acquire(self) -> bool:
        """Take a call slot; False when the server is full."""
        if self.active >= self.limit:
            return False
        self.active += 1
        self.total += 1
        return True

    def release(self) -> None:
        """Give a call slot back."""
        self.active = max(0, self.active - 1)


def stream_url(settings: Settings) -> str:
    """The public ``wss://`` (or ``ws://``) URL of the media-stream WebSocket."""
    base = settings.base_url
    if base.startswith("https://"):
        return "wss://" + base[len("https://") :] + "/twilio/stream"
    if base.startswith("http://"):
        return "ws://" + base[len("http://") :] + "/twilio/stream"
    return base + "/twilio/stream"


def connect_twiml(settings: Settings, bot: str, from_number: str, to_number: str) -> str:
    """TwiML that connects the call's audio to our media-stream WebSocket."""
    response = VoiceResponse()
    connect = Connect()
    stream = Stream(url=stream_url(settings))
    stream.parameter(name="bot", value=bot)
    if from_number:
        stream.parameter(name="from_number", value=from_number)
    if to_number:
        stream.parameter(name="to_number", value=to_number)
    connect.append(stream)
    response.append(connect)
    return str(response)


def busy_twiml() -> str:
    """TwiML played when the server is at its call limit."""
    response = VoiceResponse()
    response.append(Say("Sorry, all our lines are busy right now. Please call again later."))
    response.append(Hangup())
    return str(response)


def create_app(settings: Settings, registry: BotRegistry | None = None) -> FastAPI:
    """Build the bot server app."""
    registry = registry or BotRegistry.load(settings)
    calls = CallCounter(settings.max_calls)
    app = FastAPI(title="stepcall bot server")
    app.state.settings = settings
    app.state.registry = registry
    app.state.calls = calls
    validator = RequestValidator(settings.twilio_auth_token) if settings.twilio_auth_token else None
    if validator is None:
        logger.warning("TWILIO_AUTH_TOKEN not set: Twilio webhook signatures are NOT validated")

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "active_calls": calls.active, "bots": registry.names()}

    @app.get("/", response_class=HTMLResponse)
    async def index() -> str:
        rows = "".join(
            f"<li><b>{html.escape(name)}</b> — {html.escape(registry.get(name).source or '')}</li>"
            for name in registry.names()
        )
        return (
            "<!doctype html><title>stepcall</title><h1>stepcall bot server</h1>"
            f"<p>Twilio voice webhook (POST): <code>{html.escape(settings.base_url)}/twilio/voice</code></p>"
            f"<p>Media stream: <code>{html.escape(stream_url(settings))}</code></p>"
            f"<h2>Bots</h2><ul>{rows}</ul>"
        )

    @app.post("/twilio/voice")
    async def twilio_voice(request: Request) -> Response:
        form = dict(await request.form())
        if validator is not None:
            signature = request.headers.get("X-Twilio-Signature", "")
            url = settings.base_url + request.url.path
            if request.url.query:
                url += "?" + request.url.query
            if not signature or not validator.validate(url, form, signature):
                logger.warning(f"rejected unsigned/invalid Twilio webhook for {form.get('CallSid')}")
                return Response("invalid signature", status_code=403)
        call_sid = str(form.get("CallSid", ""))
        if calls.active >= calls.limit:
            logger.bind(call_id=call_sid).warning("call limit reached: answering busy")
            return Response(busy_twiml(), media_type="application/xml")
        to_number = str(form.get("To", ""))
        bot = registry.for_number(to_number)
        logger.bind(call_id=call_sid).info(f"incoming call to {to_number or '?'} → bot {bot}")
        twiml = connect_twiml(settings, bot, str(form.get("From", "")), to_number)
        return Response(twiml, media_type="application/xml")

    @app.websocket("/twilio/stream")
    async def twilio_stream(websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            transport_type, call_data = await asyncio.wait_for(
                parse_telephony_websocket(websocket), timeout=10
            )
        except Exception as e:  # bad or missing start message
            logger.warning(f"media stream refused: no valid Twilio start message ({e})")
            await websocket.close(code=1008)
            return
        if transport_type != "twilio":
            logger.warning(f"media stream refused: {transport_type} is not supported here")
            await websocket.close(code=1008)
            return
        body = dict(call_data.get("body") or {})
        call = CallInfo(
            call_id=str(call_data["call_id"]),
            stream_sid=str(call_data["stream_id"]),
            from_number=body.get("from_number"),
            to_number=body.get("to_number"),
            params=body,
        )
        log = logger.bind(call_id=call.call_id)
        if not calls.try_acquire():
            log.warning("call limit reached: closing media stream")
            await websocket.close(code=1013)
            return
        try:
            profile = registry.get(body.get("bot") or registry.for_number(call.to_number or ""))
            await run_twilio_call(websocket, call, profile, settings)
        except Exception:
            log.exception("call failed")
        finally:
            calls.release()

    @app.exception_handler(KeyError)
    async def _unknown_bot(_request: Request, exc: KeyError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=404)

    return app


def run_server(settings: Settings) -> None:
    """Serve the bot server with uvicorn (blocking)."""
    import uvicorn

    app = create_app(settings)
    logger.info(f"bot server on http://{settings.host}:{settings.port}")
    logger.info(f"Twilio voice webhook: {settings.base_url}/twilio/voice")
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning")
