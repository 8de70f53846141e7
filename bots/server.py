"""The bot web server (``stepcall serve``, Procfile ``web:``): many bots, many calls.

Routes:
- ``POST /twilio/voice``: Twilio's voice webhook; answers TwiML ``<Connect><Stream>`` to our media
  WebSocket, choosing the bot by the called number (or by ``?bot=NAME`` on outbound calls), with a
  per-call stream token (``bots/twilio/stream_auth.py``).
- ``WS /twilio/stream``: Twilio Media Streams; one Pipecat pipeline per call, started only for a
  stream whose token matches its call (any stream in development, with no secret configured).
- ``POST /twilio/status``: call status callbacks, kept in a ``CallStatusStore``.
- ``POST /twilio/whisper``: what the human hears before a warm transfer connects.
- ``POST /calls/outbound`` (bearer ``STEPCALL_API_TOKEN``): start an outbound call;
  ``GET /calls/{sid}``: its status callbacks.
- ``GET /healthz``, ``GET /``: liveness and a landing page with the URLs to configure.
- ``GET /readyz``: readiness: 200 once every bot's verbatim greeting and holding line has been
  rendered (or refused for good), 503 while some still render (route calls here after a 200).
- ``/call``, ``/widget/*``, ``/webrtc/*``: the browser widget (``bots/webrtc/routes.py``).
- ``/dashboard``, ``/metrics``: call records and Prometheus metrics (``bots/records``), when
  ``STEPCALL_DATABASE_URL`` is not ``none``; the dashboard needs ``STEPCALL_DASHBOARD_TOKEN``.

Every Twilio webhook must carry a valid ``X-Twilio-Signature`` when TWILIO_AUTH_TOKEN is set.
"""

from __future__ import annotations

import html
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import HTMLResponse, JSONResponse, Response
from loguru import logger
from twilio.base.exceptions import TwilioRestException
from twilio.rest import Client
from twilio.twiml.voice_response import Connect, Hangup, Say, Stream, VoiceResponse

from bots.call import BROWSER_RATE, PHONE_RATE, CallInfo, greeting_line, holding_line
from bots.http_limits import BodySizeLimit
from bots.records.service import CallRecords, recorded_call
from bots.registry import BotRegistry
from bots.twilio.call import run_twilio_call
from bots.twilio.call_control import TwilioCallControl, whisper_twiml
from bots.twilio.config import TwilioConfig
from bots.twilio.media_stream import (
    MediaStreamError,
    MediaStreamGuard,
    StreamLimits,
    close_socket,
    read_start,
)
from bots.twilio.outbound import OutboundCallRequest, place_outbound_call
from bots.twilio.rest import close_rest_client, rest_client
from bots.twilio.status import CallStatusEvent, CallStatusStore, InMemoryCallStatusStore
from bots.twilio.stream_auth import AUTH_PARAM, StreamAuth
from bots.twilio.webhooks import WebhookValidator
from pipeline.step_audio2.spoken_lines import ModelServiceSpeech, SpokenLine, SpokenLines
from stepcall.audio.inference import configure_inference, configure_vad_runtime, warm_up
from stepcall.runtime.logs import install_log_redaction
from stepcall.runtime.realtime import (
    freeze_startup_heap,
    install_wait_for,
    shorten_gil_switch_interval,
)
from stepcall.runtime.tokens import bearer_token, secrets_equal
from stepcall.settings import Settings


class CallCounter:
    """Counts live calls and enforces the server's concurrent-call limit."""

    def __init__(self, limit: int) -> None:
        """Create a counter allowing ``limit`` calls at once."""
        self.limit = limit
        self.active = 0
        self.total = 0

    @property
    def full(self) -> bool:
        """True when no call slot is free."""
        return self.active >= self.limit

    def try_acquire(self) -> bool:
        """Take a call slot; False when the server is full."""
        if self.full:
            return False
        self.active += 1
        self.total += 1
        return True

    def release(self) -> None:
        """Give a call slot back."""
        self.active = max(0, self.active - 1)


def stream_limits(settings: Settings) -> StreamLimits:
    """The media-stream caps of ``settings`` (message size, idle time, call length)."""
    return StreamLimits(
        max_message_bytes=settings.ws_max_message_bytes,
        idle_secs=settings.stream_idle_secs,
        max_call_secs=settings.max_call_secs or None,
    )


def stream_url(settings: Settings) -> str:
    """The public ``wss://`` (or ``ws://``) URL of the media-stream WebSocket."""
    base = settings.base_url
    if base.startswith("https://"):
        return "wss://" + base[len("https://") :] + "/twilio/stream"
    if base.startswith("http://"):
        return "ws://" + base[len("http://") :] + "/twilio/stream"
    return base + "/twilio/stream"


def connect_twiml(
    settings: Settings,
    bot: str,
    from_number: str,
    to_number: str,
    *,
    stream_token: str | None = None,
) -> str:
    """TwiML that connects the call's audio to our media-stream WebSocket.

    The ``<Parameter>`` values come back in the stream's ``start.customParameters``.
    """
    response = VoiceResponse()
    connect = Connect()
    stream = Stream(url=stream_url(settings))
    stream.parameter(name="bot", value=bot)
    if from_number:
        stream.parameter(name="from_number", value=from_number)
    if to_number:
        stream.parameter(name="to_number", value=to_number)
    if stream_token:
        stream.parameter(name=AUTH_PARAM, value=stream_token)
    connect.append(stream)
    response.append(connect)
    return str(response)


def busy_twiml() -> str:
    """TwiML played when the server is at its call limit."""
    response = VoiceResponse()
    response.append(Say("Sorry, all our lines are busy right now. Please call again later."))
    response.append(Hangup())
    return str(response)


def _xml(twiml: str) -> Response:
    return Response(twiml, media_type="application/xml")


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


class TwilioRestHolder:
    """The server's one Twilio REST client, created on first use inside the event loop."""

    def __init__(self, config: TwilioConfig) -> None:
        """Hold no client yet."""
        self.config = config
        self._client: Client | None = None

    def get(self) -> Client:
        """The client (TwilioNotConfiguredError without credentials)."""
        if self._client is None:
            self._client = rest_client(self.config)
        return self._client

    def call_control(self, call_sid: str) -> TwilioCallControl | None:
        """Hang-up/transfer for a live call; None when Twilio credentials are not configured."""
        if not self.config.has_credentials or not call_sid:
            return None
        return TwilioCallControl(call_sid, self.get(), self.config)

    async def close(self) -> None:
        """Close the client's HTTP session."""
        if self._client is not None:
            await close_rest_client(self._client)
            self._client = None


def startup_lines(registry: BotRegistry) -> list[SpokenLine]:
    """The lines to render when the server starts, at the phone rate and the browser
    widget's: each bot's verbatim greeting first, then its holding line (in its voice)."""
    profiles = [registry.get(name) for name in registry.names()]
    out = []
    for profile in profiles:
        for rate in (PHONE_RATE, BROWSER_RATE):
            line = greeting_line(profile, rate)
            if line is not None:
                out.append(line)
    for profile in profiles:
        for rate in (PHONE_RATE, BROWSER_RATE):
            out.append(holding_line(profile, rate))
    return list(dict.fromkeys(out))


def create_app(
    settings: Settings,
    registry: BotRegistry | None = None,
    *,
    twilio: TwilioConfig | None = None,
    status_store: CallStatusStore | None = None,
    records: CallRecords | None = None,
    spoken_lines: SpokenLines | None = None,
) -> FastAPI:
    """Build the bot server app.

    ``twilio`` defaults to :meth:`TwilioConfig.from_settings`; ``status_store`` to an in-memory
    store; ``records`` to :meth:`CallRecords.from_settings` (None: no call records);
    ``spoken_lines`` to lines rendered by the model service at ``STEPCALL_MODEL_URL``.
    """
    registry = registry or BotRegistry.load(settings)
    config = twilio or TwilioConfig.from_settings(settings)
    # Smart Turn of every call on one low-priority pool (STEPCALL_TURN_MODEL_THREADS / _NICE)
    configure_inference(settings.turn_model_threads, settings.turn_model_nice)
    configure_vad_runtime(settings.vad_runtime)  # STEPCALL_VAD_RUNTIME: Silero on NumPy or ORT
    shorten_gil_switch_interval()  # the Smart Turn pool gets the GIL within 1 ms of asking
    install_wait_for()  # Python 3.12's asyncio.wait_for: no task per wait (stepcall/runtime/wait_for.py)
    calls = CallCounter(settings.max_calls)
    store = status_store or InMemoryCallStatusStore()
    rest = TwilioRestHolder(config)
    webhooks = WebhookValidator(config.auth_token, settings.base_url)
    stream_auth = StreamAuth(config.stream_key)
    if not webhooks.enabled:
        logger.warning("TWILIO_AUTH_TOKEN not set: Twilio webhook signatures are NOT validated")
    if not stream_auth.enabled:
        logger.warning(
            "no STEPCALL_STREAM_SECRET or TWILIO_AUTH_TOKEN: media streams are NOT authenticated"
        )

    if records is None:
        records = CallRecords.from_settings(settings)
    lines = spoken_lines or SpokenLines(ModelServiceSpeech(settings.model_url, settings.model_token))

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        warm_up()  # Silero VAD + Smart Turn, loaded once for all calls, before the first one
        freeze_startup_heap()  # full GC passes skip the start-up heap (a 120 ms stall before)
        if records is not None:
            records.start_purge_task()
        # every bot's verbatim greeting, in its voice, at the rates calls run at: rendered by
        # the model service now (it may still be loading: the render waits for it)
        lines.prerender(startup_lines(registry))
        try:
            yield
        finally:
            await rest.close()
            if records is not None:
                await records.aclose()

    install_log_redaction()  # uvicorn's access log would show ?token= (dashboard links)
    app = FastAPI(title="stepcall bot server", lifespan=lifespan)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes)
    app.state.settings = settings
    app.state.registry = registry
    app.state.calls = calls
    app.state.twilio = config
    app.state.twilio_rest = rest
    app.state.status_store = store
    app.state.stream_auth = stream_auth
    app.state.records = records
    app.state.spoken_lines = lines
    if records is not None:
        records.mount(app, dashboard_token=settings.dashboard_token)

    def api_auth_error(request: Request) -> JSONResponse | None:
        if not config.api_token:
            return _error(503, "the calls API is disabled: set STEPCALL_API_TOKEN")
        presented = bearer_token(request.headers.get("Authorization"))
        if presented is None or not secrets_equal(presented, config.api_token):
            return JSONResponse(
                {"error": "missing or wrong bearer token"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        return None

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {
            "status": "ok",
            "active_calls": calls.active,
            "bots": registry.names(),
            # the bots' verbatim greetings: "rendering" > 0 while the first calls may wait
            "spoken_lines": lines.status(),
        }

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        # a call placed before this says ready may wait up to GREETING_WAIT_SECS for its greeting
        status = lines.status()
        ready = status["rendering"] == 0
        return JSONResponse(
            {"ready": ready, "spoken_lines": status}, status_code=200 if ready else 503
        )

    @app.get("/", response_class=HTMLResponse)
    async def index() -> str:
        rows = "".join(
            f"<li><b>{html.escape(name)}</b> — {html.escape(registry.get(name).source or '')}</li>"
            for name in registry.names()
        )
        base = html.escape(settings.base_url)
        return (
            "<!doctype html><title>stepcall</title><h1>stepcall bot server</h1>"
            f"<p>Twilio voice webhook (POST): <code>{base}/twilio/voice</code></p>"
            f"<p>Status callback (POST): <code>{base}/twilio/status</code></p>"
            f"<p>Media stream: <code>{html.escape(stream_url(settings))}</code></p>"
            f"<p>Outbound calls (POST, bearer token): <code>{base}/calls/outbound</code></p>"
            f"<h2>Bots</h2><ul>{rows}</ul>"
        )

    @app.post("/twilio/voice")
    async def twilio_voice(request: Request) -> Response:
        form = await webhooks.form(request)
        if form is None:
            return Response("invalid signature", status_code=403)
        call_sid = str(form.get("CallSid", ""))
        log = logger.bind(call_id=call_sid or "-")
        if calls.full:
            log.warning("call limit reached: answering busy")
            return _xml(busy_twiml())
        to_number = str(form.get("To", ""))
        bot = request.query_params.get("bot") or registry.for_number(to_number)
        registry.get(bot)  # unknown bot → 404 (KeyError handler)
        if stream_auth.enabled and not call_sid:
            return _error(400, "voice webhook without CallSid")
        token = stream_auth.issue(call_sid, bot)
        direction = str(form.get("Direction", "inbound"))
        log.info(f"{direction} call {form.get('From') or '?'} → {to_number or '?'}: bot {bot}")
        twiml = connect_twiml(
            settings, bot, str(form.get("From", "")), to_number, stream_token=token
        )
        return _xml(twiml)

    @app.post("/twilio/status")
    async def twilio_status(request: Request) -> Response:
        form = await webhooks.form(request)
        if form is None:
            return Response("invalid signature", status_code=403)
        try:
            event = CallStatusEvent.from_form(form)
        except ValueError as e:
            return _error(400, str(e))
        await store.record(event)
        logger.bind(call_id=event.call_sid).info(f"call status: {event.status}")
        return Response(status_code=204)

    @app.post("/twilio/whisper")
    async def twilio_whisper(request: Request) -> Response:
        form = await webhooks.form(request)
        if form is None:
            return Response("invalid signature", status_code=403)
        return _xml(whisper_twiml(request.query_params.get("text", "")))

    @app.post("/calls/outbound")
    async def calls_outbound(request: Request) -> Response:
        denied = api_auth_error(request)
        if denied is not None:
            return denied
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "body must be JSON: {\"to\": \"+1555...\", \"bot\": \"name\"}")
        if not isinstance(body, dict):
            return _error(400, "body must be a JSON object")
        bot = str(body.get("bot") or registry.default)
        registry.get(bot)  # unknown bot → 404
        from_number = str(body.get("from") or config.from_number or "")
        if not from_number:
            return _error(400, "no caller ID: give \"from\" or set TWILIO_FROM_NUMBER")
        if not config.has_credentials:
            return _error(503, "outbound calls need TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN")
        if calls.full:
            return _error(503, "call limit reached")
        try:
            req = OutboundCallRequest(to=str(body.get("to") or ""), bot=bot, from_number=from_number)
            call = await place_outbound_call(rest.get(), config, req)
        except ValueError as e:
            return _error(400, str(e))
        except TwilioRestException as e:
            logger.warning(f"outbound call to {body.get('to')} refused by Twilio: {e.code} {e.msg}")
            return _error(502, f"Twilio refused the call: {e.msg}", twilio_code=e.code)
        logger.bind(call_id=call.call_sid).info(f"outbound call to {call.to}: bot {bot}")
        return JSONResponse(
            {"call_sid": call.call_sid, "status": call.status, "to": call.to,
             "from": call.from_number, "bot": call.bot},
            status_code=201,
        )

    @app.get("/calls/{call_sid}")
    async def call_status(call_sid: str, request: Request) -> Response:
        denied = api_auth_error(request)
        if denied is not None:
            return denied
        events = await store.events(call_sid)
        if not events:
            return _error(404, f"no status callbacks for call {call_sid}")
        return JSONResponse(
            {"call_sid": call_sid, "status": events[-1].status,
             "events": [e.to_dict() for e in events]}
        )

    limits = stream_limits(settings)

    @app.websocket("/twilio/stream")
    async def twilio_stream(websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            start = await read_start(websocket, limits)
        except MediaStreamError as e:  # bad, missing or late start message
            logger.bind(call_id=e.call_id or "-").warning(f"media stream refused: {e}")
            await close_socket(websocket, 1008)
            return
        body = dict(start.custom_parameters)
        token = body.pop(AUTH_PARAM, None)
        call = CallInfo(
            call_id=start.call_sid,
            stream_sid=start.stream_sid,
            from_number=body.get("from_number"),
            to_number=body.get("to_number"),
            params=body,
        )
        log = logger.bind(call_id=call.call_id)
        bot = body.get("bot") or registry.for_number(call.to_number or "")
        verdict = stream_auth.check(call.call_id, bot, token)
        if not verdict.ok:
            log.warning(f"media stream refused: {verdict.reason}")
            await close_socket(websocket, 1008)
            return
        if not verdict.verified:
            log.warning(f"media stream accepted without verification: {verdict.reason}")
        if not calls.try_acquire():
            log.warning("call limit reached: closing media stream")
            await close_socket(websocket, 1013)
            return
        try:
            profile = registry.get(bot)
            # Hang-up/transfer act on the live call through the REST API (None without creds).
            control = rest.call_control(call.call_id)
        except Exception:
            calls.release()
            log.exception("call set-up failed")
            await close_socket(websocket, 1011)
            return
        observer = records.observer(call, profile, call_control=control) if records else None
        # Bad frames are dropped, an idle/over-long stream ends, a drop is noted on the record.
        guard = MediaStreamGuard(
            websocket,
            call.call_id,
            limits,
            on_abnormal_end=observer.mark_error if observer is not None else None,
        )
        try:
            async with recorded_call(observer, log):
                await run_twilio_call(
                    guard,
                    call,
                    profile,
                    settings,
                    call_control=control,
                    observers=[observer] if observer is not None else None,
                    lines=lines,
                )
        except Exception:
            log.exception("call failed")
        finally:
            calls.release()

    @app.exception_handler(KeyError)
    async def _unknown_bot(_request: Request, exc: KeyError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=404)

    from bots.webrtc.routes import (  # browser widget: /call, /widget/*, /webrtc/*
        add_webrtc_routes,
    )

    add_webrtc_routes(app, settings, registry)
    return app


def run_server(settings: Settings) -> None:
    """Serve the bot server with uvicorn (blocking)."""
    import uvicorn

    from bots.tracing import setup_tracing

    setup_tracing(settings.otel_exporter)
    app = create_app(settings)
    logger.info(f"bot server on http://{settings.host}:{settings.port}")
    logger.info(f"Twilio voice webhook: {settings.base_url}/twilio/voice")
    logger.info(f"Twilio status callback: {settings.base_url}/twilio/status")
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level="warning",
        ws_max_size=settings.ws_max_message_bytes,  # bigger frames: connection closed (1009)
    )
