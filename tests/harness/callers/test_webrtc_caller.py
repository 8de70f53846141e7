"""``stepcall call --webrtc``: the simulated caller dials the real bot server over WebRTC.

Real parts end to end: the caller's aiortc peer (scripted 48 kHz microphone, ``stepcall`` data
channel) → ``GET /webrtc/config`` + ``POST /webrtc/offer`` → SmallWebRTC transport → call
pipeline (Silero VAD, StepAudio2Service at 16 kHz) → in-process model service (reference
backend on the demo checkpoint, which always answers DEMO_REPLY) → bot audio over RTP and the
bot's transcript over the data channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import wave
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np
import pytest
from fastapi import FastAPI

from bots.webrtc.tokens import WidgetTokens
from harness.callers.cli import main
from harness.callers.report import format_table
from harness.callers.twilio_client import CallerTurn
from harness.callers.webrtc_client import (
    HANGUP_MESSAGE,
    WebRTCCallOptions,
    run_webrtc_call,
    webrtc_endpoints,
)
from harness.checkpoints.demo_checkpoint import DEMO_REPLY
from stepcall.audio.speech import available_engines

needs_speech = pytest.mark.skipif(
    not available_engines(), reason="no TTS engine (CI: apt-get install -y flite)"
)
QUESTION = "Hello, what time do you open tomorrow morning?"
SECRET = "test-widget-secret"
FAST = dict(greeting_wait_secs=0.0, pause_secs=0.2, wait_secs=30.0, hangup_delay_secs=0.05)


@pytest.fixture(scope="module")
def demo_backend(tmp_path_factory):
    """Reference backend on the demo checkpoint: every reply speaks DEMO_REPLY."""
    from harness.checkpoints.demo_checkpoint import build_demo_checkpoint
    from model_service.backends.reference import load_reference_backend

    ckpt = build_demo_checkpoint(tmp_path_factory.mktemp("webrtc-caller-demo"))
    return load_reference_backend(ckpt, "cpu", "float32")


@dataclass
class BotServer:
    app: FastAPI
    url: str  # http://127.0.0.1:PORT


@pytest.fixture
def bot_server(demo_backend):
    """``async with bot_server(config=..., **settings) as server``: model service + bot server
    with the WebRTC routes, both served on loopback."""
    from bots.profile import BotProfile
    from bots.registry import BotRegistry
    from bots.server import create_app as create_bot_app
    from bots.webrtc.config import WebRTCConfig
    from bots.webrtc.routes import add_webrtc_routes
    from model_service.server import create_app as create_model_app
    from model_service.server import serving
    from stepcall.settings import Settings

    @contextlib.asynccontextmanager
    async def make(config: WebRTCConfig | None = None, profile: BotProfile | None = None,
                   **settings_kw) -> AsyncIterator[BotServer]:
        model_app = create_model_app(demo_backend, token=None, max_sessions=4)
        async with serving(model_app) as model_url:
            settings = Settings(model_url=model_url, **settings_kw)
            registry = BotRegistry.single(profile or BotProfile(name="front", smart_turn=False))
            app = create_bot_app(settings, registry)
            add_webrtc_routes(app, settings, registry, config=config or WebRTCConfig())
            async with serving(app) as url:
                yield BotServer(app, url.replace("ws://", "http://").replace("/v1/session", ""))

    return make


def _letters(text: str) -> str:
    # the tiny test tokenizer decodes some word breaks without their space
    return "".join(text.split())


def _voiced_secs(channel: np.ndarray, rate: int) -> np.ndarray:
    """Start times (s) of the 20 ms frames of ``channel`` with RMS above 200."""
    n = rate // 50
    frames = channel[: channel.size // n * n].astype(np.float64).reshape(-1, n)
    return np.nonzero(np.sqrt((frames**2).mean(axis=1)) > 200)[0] * 0.02


async def _until(predicate, secs: float) -> bool:
    deadline = time.monotonic() + secs
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


@needs_speech
async def test_call_gets_reply_latency_transcript_and_stereo_recording(bot_server, tmp_path):
    out = tmp_path / "web.wav"
    async with bot_server() as server:
        result = await run_webrtc_call(
            server.url, [CallerTurn(text=QUESTION)],
            WebRTCCallOptions(bot="front", record_path=out, quiet_secs=2.0, **FAST),
        )
        # the widget's hang-up message ends the call on the server and frees its slot
        assert await _until(lambda: server.app.state.calls.active == 0, 5)
    from bots.webrtc.call import HANGUP_MESSAGE as SERVER_HANGUP

    assert HANGUP_MESSAGE == SERVER_HANGUP
    assert result.ok, result.errors
    assert result.offer_status == 200 and result.bot_ready and result.bot == "front"
    assert result.call_id.startswith("web-") and result.pc_id
    assert result.hung_up_by == "caller"
    turn = result.turns[0]
    assert turn.speech_end_ms - turn.speech_start_ms > 1000  # real synthesised speech
    assert turn.replied and 0 < turn.latency_ms < 30_000
    assert turn.first_bot_media_ms == pytest.approx(turn.speech_end_ms + turn.latency_ms)
    assert turn.bot_bytes_during_speech == 0
    assert _letters(turn.bot_text) == _letters(DEMO_REPLY)
    assert _letters(result.bot_text) == _letters(DEMO_REPLY)
    assert turn.bot_audio_secs > 2.0  # the demo reply is ~3 s of speech
    types = [m["type"] for m in result.messages]
    assert types[0] == "bot-ready" and "bot-stopped-speaking" in types
    # the data channel's bot-stopped-speaking ended the reply, not 2 s of waiting for silence
    stopped = next(m["t_ms"] for m in result.messages if m["type"] == "bot-stopped-speaking")
    reply_end = next(e["t_ms"] for e in result.events if e["event"] == "reply_end")
    assert 0 <= reply_end - stopped < 1000

    table = format_table(result)
    assert f"WebRTC call {result.call_id}" in table and f"{turn.latency_ms:.0f}" in table
    assert "result: OK" in table

    # left = the caller, right = the bot as heard, on one clock: the bot's channel turns on
    # about one measured latency after the caller's channel goes quiet
    assert result.record_path == str(out)
    with wave.open(str(out), "rb") as w:
        assert w.getnchannels() == 2 and w.getframerate() == 16000
        audio = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)
    caller, bot = _voiced_secs(audio[:, 0], 16000), _voiced_secs(audio[:, 1], 16000)
    assert caller.size * 0.02 > 1.0 and bot.size * 0.02 > 2.0
    assert bot[0] > caller[-1]
    assert (bot[0] - caller[-1]) * 1000 == pytest.approx(turn.latency_ms, abs=300)


@needs_speech
async def test_greeting_barge_in_and_silent_turn(bot_server):
    from bots.profile import BotProfile

    profile = BotProfile(name="front", smart_turn=False, bot_speaks_first=True,
                         greeting="Say hello.")
    silence = CallerTurn(text="(silence)", audio=np.zeros(8000, np.int16),  # 1 s at 8 kHz
                         expect_reply=False, wait_secs=0.3)
    options = WebRTCCallOptions(greeting_wait_secs=15.0, pause_secs=0.2, wait_secs=30.0,
                                barge_in_after=0.5, hangup_delay_secs=0.05)
    async with bot_server(profile=profile) as server:
        result = await run_webrtc_call(server.url, [CallerTurn(text=QUESTION), silence], options)
    assert result.ok, result.errors
    greeting = result.greeting
    assert greeting is not None and greeting.kind == "greeting" and greeting.latency_ms > 0
    assert _letters(greeting.bot_text) == _letters(DEMO_REPLY)  # the demo model's only reply
    assert greeting.bot_audio_secs > 2.0  # heard to its end before the caller spoke
    question, quiet = result.turns
    # the next turn started 0.5 s into the reply: only that much of it belongs to turn 1 ...
    assert question.replied and question.barged_in
    assert 0.2 < question.bot_audio_secs < 1.0
    # ... and the silent turn does not interrupt the bot, which talks on over it
    assert not quiet.barged_in and quiet.bot_bytes_during_speech > 0
    assert quiet.speech_end_ms - question.first_bot_media_ms < 2500


@needs_speech
async def test_cli_webrtc_json_summary_with_widget_token(bot_server, capsys):
    from bots.webrtc.config import WebRTCConfig

    token = WidgetTokens(SECRET).issue("front")
    async with bot_server(config=WebRTCConfig(widget_secret=SECRET)) as server:
        argv = [server.url, "--webrtc", "--bot", "front", "--token", token, "--say", QUESTION,
                "--greeting-wait", "0", "--pause", "0.2", "--wait", "30", "--json"]
        rc = await asyncio.to_thread(main, argv)
    summary = json.loads(capsys.readouterr().out)
    assert rc == 0, summary["errors"]
    assert summary["transport"] == "webrtc" and summary["ok"] and summary["offer_status"] == 200
    assert summary["call_id"].startswith("web-") and summary["bot"] == "front"
    assert len(summary["latency_ms"]) == 1 and summary["latency_ms"][0] > 0
    turn = summary["turns"][0]
    assert turn["replied"] and turn["latency_ms"] == summary["latency_ms"][0]
    assert _letters(turn["bot_text"]) == _letters(DEMO_REPLY)
    assert turn["bot_audio_secs"] > 2.0
    assert "stream_sid" not in summary and "marks" not in summary  # Twilio-only keys


@needs_speech
async def test_refused_offers_and_bad_urls_are_reported(bot_server, capsys):
    from bots.webrtc.config import WebRTCConfig

    token = WidgetTokens(SECRET).issue("front")
    turns = [CallerTurn(text="hi", audio=np.zeros(1600, np.int16))]  # no speech engine needed
    config = WebRTCConfig(widget_secret=SECRET, offers_per_minute=3)
    async with bot_server(config=config, max_calls=0) as server:
        # no token: the CLI prints the server's JSON error and fails
        rc = await asyncio.to_thread(
            main, [server.url, "--webrtc", "--say", "hi", "--greeting-wait", "0"])
        table = capsys.readouterr().out
        assert rc == 1
        assert "HTTP 401" in table and "a call token is required" in table and "FAILED" in table
        # a valid token, but every line is busy (max_calls=0)
        busy = await run_webrtc_call(server.url, turns, WebRTCCallOptions(bot="front",
                                                                          token=token))
        assert busy.offer_status == 503 and not busy.ok
        assert any("HTTP 503" in e and "busy" in e for e in busy.errors)
        assert busy.turns[0].skipped and busy.hung_up_by is None
        ghost = await run_webrtc_call(server.url, turns, WebRTCCallOptions(bot="ghost"))
        assert ghost.offer_status == 404 and "unknown bot 'ghost'" in ghost.errors[0]
        # the fourth offer in a minute from this address hits the rate limit
        limited = await run_webrtc_call(server.url, turns, WebRTCCallOptions(token=token))
        assert limited.offer_status == 429
        assert "too many calls" in limited.errors[0] and "retry after" in limited.errors[0]
        # a URL that is not a bot server's root
        wrong = await run_webrtc_call(server.url + "/nope", turns)
        assert "HTTP 404" in wrong.errors[0] and "WebRTC routes" in wrong.errors[0]
        assert server.app.state.calls.active == 0
    # nothing listens there any more
    gone = await run_webrtc_call(server.url, turns)
    assert "could not reach the bot server" in gone.errors[0] and gone.turns[0].skipped


async def test_dtmf_turn_is_refused():
    # refused up front: the URL is never contacted (nothing listens on port 9)
    with pytest.raises(ValueError, match="DTMF '1#'.*no keypad"):
        await run_webrtc_call("http://127.0.0.1:9",
                              [CallerTurn(text="hi"), CallerTurn(dtmf="1#")])
    with pytest.raises(ValueError, match="at least one"):
        await run_webrtc_call("http://127.0.0.1:9", [])


def test_endpoints_and_usage_errors(capsys, monkeypatch):
    assert webrtc_endpoints("https://bots.example.com/voice/") == (
        "https://bots.example.com/voice/webrtc/config",
        "https://bots.example.com/voice/webrtc/offer",
    )
    for bad in ("ws://127.0.0.1:8080/twilio/stream", "127.0.0.1:8080", "http://", "http://h?x=1"):
        with pytest.raises(ValueError, match="http://HOST:PORT|query"):
            webrtc_endpoints(bad)
    assert main(["--webrtc", "ws://127.0.0.1:8080/twilio/stream", "--say", "hi"]) == 2
    assert "http(s) base URL" in capsys.readouterr().err
    assert main(["--webrtc", "http://127.0.0.1:9", "--dtmf", "1"]) == 2
    assert "no keypad" in capsys.readouterr().err
    assert main(["--webrtc", "http://127.0.0.1:9", "--say", "hi", "--param", "bot=x"]) == 2
    assert "--param only apply to Twilio" in capsys.readouterr().err
    assert main(["ws://127.0.0.1:9/twilio/stream", "--say", "hi", "--bot", "front"]) == 2
    assert "--bot only apply with --webrtc" in capsys.readouterr().err
    # no speech engine installed: a clear message, before any connection
    monkeypatch.setattr("stepcall.audio.speech.available_engines", lambda: [])
    assert main(["--webrtc", "http://127.0.0.1:9", "--say", "hi"]) == 2
    assert "no speech synthesis engine" in capsys.readouterr().err
