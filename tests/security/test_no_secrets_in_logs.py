"""No secret ever reaches the logs: a server with every secret set handles a signed webhook, an
authenticated media-stream call through a token-protected model service, widget-token minting,
dashboard and API access (right and wrong credentials); everything logged at TRACE level
(loguru) and DEBUG (standard logging: uvicorn, websockets, httpx) is searched for the secrets
and for the per-call tokens derived from them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re

import httpx
from loguru import logger
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import connect

from bots.profile import BotProfile
from bots.registry import BotRegistry
from bots.server import create_app
from harness.callers.twilio_messages import StreamIdentity, TwilioMessageBuilder
from model_service.server import create_app as create_model_app
from model_service.server import serving
from stepcall.settings import Settings

#: The smallest offer that passes our SDP check (aiortc then refuses it: no ICE).
AUDIO_SDP = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"

SECRETS = {
    "twilio_auth_token": "TWILIOAUTHsecret0001",
    "stream_secret": "STREAMsecret0002",
    "api_token": "APItokenSecret0003",
    "dashboard_token": "DASHtokenSecret0004",
    "widget_secret": "WIDGETsecret0005",
    "model_token": "MODELtokenSecret0006",
}
PUBLIC = "https://bots.example.com"


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(("httpx", "httpcore")):  # this test's own HTTP client
            return
        try:
            self.lines.append(record.getMessage())
        except Exception:  # a record whose args do not format: keep the raw parts
            self.lines.append(f"{record.msg} {record.args}")


_CAPTURE = _Capture()


async def _scenario(demo_backend, tmp_path) -> list[str]:
    """Run everything that handles a secret; returns the tokens issued along the way."""
    issued: list[str] = []
    model_app = create_model_app(demo_backend, token=SECRETS["model_token"], max_sessions=2)
    async with serving(model_app) as model_url:
        settings = Settings(
            public_url=PUBLIC, model_url=model_url, database_url=f"sqlite:///{tmp_path}/c.db",
            twilio_account_sid="AC" + "a" * 32, **SECRETS,
        )
        logger.info(f"settings: {settings.redacted()} {settings!r}")
        profile = BotProfile(name="front", bot_speaks_first=True, smart_turn=False)
        app = create_app(settings, BotRegistry.single(profile))
        async with serving(app) as url:
            access = logging.getLogger("uvicorn.access")  # on, to see what it would write
            access.setLevel(logging.INFO)
            access.addHandler(_CAPTURE)
            base = url.removesuffix("/v1/session")
            http_base = base.replace("ws://", "http://")
            call = StreamIdentity()
            form = {"CallSid": call.call_sid, "From": "+15550001111", "To": "+15550002222"}
            sig = RequestValidator(SECRETS["twilio_auth_token"]).compute_signature(
                PUBLIC + "/twilio/voice", form)
            async with httpx.AsyncClient(base_url=http_base) as http:
                twiml = (await http.post("/twilio/voice", data=form,
                                         headers={"X-Twilio-Signature": sig})).text
                await http.post("/twilio/voice", data=form, headers={"X-Twilio-Signature": "x"})
                stream_token = re.search(r'name="auth" value="([^"]+)"', twiml).group(1)
                issued.append(stream_token)
                minted = await http.post(
                    "/webrtc/token", json={"bot": "front"},
                    headers={"Authorization": f"Bearer {SECRETS['api_token']}"})
                issued.append(minted.json()["token"])
                await http.post("/webrtc/offer", json={
                    "sdp": AUDIO_SDP, "type": "offer",
                    "request_data": {"bot": "front", "token": minted.json()["token"]}})
                await http.post("/webrtc/offer", json={"sdp": AUDIO_SDP, "type": "offer"})
                await http.get(f"/dashboard?token={SECRETS['dashboard_token']}")
                await http.get("/dashboard?token=wrong-one")
                await http.post("/calls/outbound", json={"to": "+15550003333"},
                                headers={"Authorization": f"Bearer {SECRETS['api_token']}"})
                await http.post("/calls/outbound", json={"to": "+1"},
                                headers={"Authorization": "Bearer wrong"})
            # an authenticated media-stream call that reaches the model (bot speaks first)
            b = TwilioMessageBuilder(call)
            async with connect(base + "/twilio/stream") as ws:
                await ws.send(json.dumps(b.connected()))
                await ws.send(json.dumps(b.start({"bot": "front", "auth": stream_token})))
                heard = False
                async with asyncio.timeout(20):
                    i = 0
                    while not heard:
                        i += 1
                        await ws.send(json.dumps(b.media(i, i * 20, b"\xff" * 160)))
                        try:
                            msg = json.loads(await asyncio.wait_for(ws.recv(), 0.02))
                            heard = msg.get("event") == "media"
                        except TimeoutError:
                            pass
                await ws.send(json.dumps(b.stop()))
            for _ in range(100):
                if app.state.calls.active == 0:
                    break
                await asyncio.sleep(0.05)
            assert app.state.calls.active == 0 and heard
    return issued


async def test_no_secret_or_token_appears_in_any_log(demo_backend, tmp_path):
    lines: list[str] = []
    sink = logger.add(
        lambda m: lines.append(f"{m} {m.record['extra']}"), level="TRACE", format="{message}"
    )
    capture = _CAPTURE
    capture.lines.clear()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(capture)
    root.setLevel(logging.DEBUG)
    try:
        issued = await _scenario(demo_backend, tmp_path)
    finally:
        logger.remove(sink)
        root.removeHandler(capture)
        root.setLevel(old_level)
        logging.getLogger("uvicorn.access").removeHandler(capture)
    everything = "\n".join(lines + capture.lines)
    assert len(lines) > 50, "the capture saw (almost) nothing: the test would prove nothing"
    assert "call connected" in everything and "/dashboard?token=***" in everything
    for name, secret in SECRETS.items():
        assert secret not in everything, f"{name} appears in the logs"
    for token in issued:
        mac = token.rsplit(".", 1)[-1]
        assert mac not in everything, f"an issued token appears in the logs: {token[:12]}..."
