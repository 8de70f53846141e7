"""The call widget in a real browser: headless Chromium calls the bot from the ``/call`` page.

Chromium's fake microphone plays a WAV of caller speech; the page's widget asks for the mic,
posts its offer to ``/webrtc/offer`` and plays the bot's answer. The test drives the page over the
DevTools protocol (plain WebSocket, no extra package) and reads what the widget exposes:
``window.stepcall`` (state, transcript, data-channel messages, ``audioStats()`` from
``RTCPeerConnection.getStats``) and the rendered DOM.

Needs Debian's ``chromium`` (``apt-get install -y chromium``); skipped without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import shutil
import time
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import websockets

from harness.checkpoints.demo_checkpoint import DEMO_REPLY

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium)"
    ),
]
MIC_RATE = 48000


def _write_mic_wav(path: Path, speech: np.ndarray) -> Path:
    """Half a second of silence, the speech, then 30 s of silence (played once)."""
    silence = np.zeros(MIC_RATE // 2, dtype=np.int16)
    tail = np.zeros(30 * MIC_RATE, dtype=np.int16)
    pcm = np.concatenate([silence, speech.astype(np.int16), tail])
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(MIC_RATE)
        w.writeframes(pcm.tobytes())
    return path


class DevTools:
    """A minimal Chrome DevTools protocol client for one page."""

    def __init__(self, ws: Any) -> None:
        self._ws = ws
        self._ids = itertools.count(1)

    async def call(self, method: str, **params: Any) -> dict:
        msg_id = next(self._ids)
        await self._ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            reply = json.loads(await self._ws.recv())
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    async def eval(self, expression: str) -> Any:
        result = await self.call(
            "Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"page error in {expression!r}: {result['exceptionDetails']}")
        return result["result"].get("value")


@contextlib.asynccontextmanager
async def chromium(profile_dir: Path, mic_wav: Path) -> AsyncIterator[DevTools]:
    """Headless Chromium with a fake mic playing ``mic_wav``; yields DevTools on a blank page."""
    args = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile_dir}",
        "--remote-debugging-port=0",
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-audio-capture={mic_wav}%noloop",
        "--autoplay-policy=no-user-gesture-required",
        "about:blank",
    ]
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    try:
        port_file = profile_dir / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            if proc.returncode is not None or time.monotonic() > deadline:
                err = (await proc.stderr.read()).decode(errors="replace")[-2000:]
                raise RuntimeError(f"chromium did not start its DevTools endpoint:\n{err}")
            await asyncio.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        async with httpx.AsyncClient() as http:
            targets = (await http.get(f"http://127.0.0.1:{port}/json/list")).json()
        page = next(t for t in targets if t.get("type") == "page")
        async with websockets.connect(page["webSocketDebuggerUrl"], max_size=None) as ws:
            yield DevTools(ws)
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def _until(tools: DevTools, expression: str, secs: float, what: str) -> Any:
    deadline = time.monotonic() + secs
    while True:
        value = await tools.eval(expression)
        if value:
            return value
        if time.monotonic() > deadline:
            snapshot = await tools.eval(
                "JSON.stringify(window.stepcall && {state: stepcall.state, error: stepcall.error,"
                " types: stepcall.messages.map(m => m.type), transcript: stepcall.transcript})"
            )
            raise AssertionError(f"timed out after {secs:g} s waiting for {what}: {snapshot}")
        await asyncio.sleep(0.2)


async def _calls_end(server: Any, secs: float = 15) -> None:
    """Wait until the bot server has no live call (fails after ``secs``)."""
    deadline = time.monotonic() + secs
    while server.app.state.calls.active:
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{server.app.state.calls.active} call(s) still live after {secs:g} s"
            )
        await asyncio.sleep(0.1)


def _letters(text: str) -> str:
    return "".join(text.split())


async def test_widget_call_in_chromium_hears_bot_and_shows_transcript(
    bot_server_factory, speech, tmp_path
):
    mic = _write_mic_wav(
        tmp_path / "mic.wav", speech("Hello, what time do you open tomorrow morning?", MIC_RATE)
    )
    async with bot_server_factory() as server, chromium(tmp_path / "profile", mic) as tools:
        await tools.call("Page.enable")
        await tools.call("Page.navigate", url=f"{server.url}/call?bot=front")
        await _until(
            tools,
            "!!(window.stepcall && document.querySelector('.stepcall-call'))",
            20,
            "the widget to load",
        )
        assert await tools.eval("stepcall.state") == "idle"
        assert await tools.eval("document.querySelector('.stepcall-hangup').disabled") is True

        await tools.eval("document.querySelector('.stepcall-call').click()")
        await _until(tools, "stepcall.state === 'connected'", 20, "the call to connect")
        assert await tools.eval("document.querySelector('.stepcall').dataset.state") == "connected"
        assert server.app.state.calls.active == 1

        # the bot answers the fake mic's speech: its words arrive over the data channel...
        await _until(
            tools,
            "stepcall.transcript.some(e => e.role === 'bot' && e.final && e.text.length > 0)",
            90,
            "the bot's transcript",
        )
        bot_text = await tools.eval(
            "stepcall.transcript.filter(e => e.role === 'bot').map(e => e.text).join('')"
        )
        assert _letters(bot_text) == _letters(DEMO_REPLY)
        types = await tools.eval("stepcall.messages.map(m => m.type)")
        assert types.index("user-started-speaking") < types.index("bot-tts-text")
        shown = await tools.eval("document.querySelector('.stepcall-transcript').textContent")
        assert shown.startswith("Bot: ") and "Thank you for calling" in shown

        # ...and its voice plays in the page (WebRTC inbound audio with real energy)
        await _until(
            tools,
            "stepcall.messages.some(m => m.type === 'bot-stopped-speaking')",
            30,
            "the bot to finish speaking",
        )
        stats = await tools.eval("stepcall.audioStats()")
        assert stats["packetsReceived"] > 100, stats
        assert stats["totalAudioEnergy"] > 0.01, stats  # silence alone stays near 0
        playing = await tools.eval(
            "(() => { const a = document.querySelector('.stepcall-audio');"
            " return !!a.srcObject && !a.paused; })()"
        )
        assert playing, "the bot's audio stream is not playing in the page's <audio>"

        # mute silences the mic track; hang-up ends the call on both sides
        await tools.eval("document.querySelector('.stepcall-mute').click()")
        assert await tools.eval("stepcall.muted && !stepcall.micStream.getAudioTracks()[0].enabled")
        await tools.eval("document.querySelector('.stepcall-hangup').click()")
        await _until(tools, "stepcall.state === 'ended'", 10, "the page to end the call")
        await _calls_end(server)


async def test_embedded_snippet_on_another_site_places_a_call(bot_server_factory, speech, tmp_path):
    """The ``<script>`` snippet on a page of another origin: floating button, CORS, a live call."""
    from fastapi import FastAPI
    from fastapi.responses import HTMLResponse

    from model_service.server import serving

    mic = _write_mic_wav(tmp_path / "mic.wav", speech("Hello there.", MIC_RATE))
    async with bot_server_factory() as server:
        site = FastAPI()

        @site.get("/", response_class=HTMLResponse)
        async def shop() -> str:
            return (
                "<!doctype html><title>A shop</title><h1>Our shop</h1>"
                f'<script src="{server.url}/widget/stepcall-widget.js" data-bot="front" '
                'data-label="Talk to us" async></script>'
            )

        async with serving(site) as site_ws, chromium(tmp_path / "profile", mic) as tools:
            site_url = site_ws.replace("ws://", "http://").replace("/v1/session", "/")
            assert site_url.split(":")[2] != server.url.split(":")[2]  # another origin
            await tools.call("Page.navigate", url=site_url)
            await _until(
                tools,
                "!!document.querySelector('.stepcall-floating .stepcall-toggle')",
                20,
                "the floating call button",
            )
            assert (
                await tools.eval("document.querySelector('.stepcall-toggle').textContent")
                == "Talk to us"
            )
            assert await tools.eval("document.querySelector('.stepcall').hidden") is True
            # the widget's stylesheet comes from the bot server
            await _until(
                tools,
                "getComputedStyle(document.querySelector('.stepcall-floating')).position === 'fixed'",
                10,
                "the widget stylesheet",
            )
            await tools.eval("document.querySelector('.stepcall-toggle').click()")
            assert await tools.eval("document.querySelector('.stepcall').hidden") is False
            await tools.eval("document.querySelector('.stepcall-call').click()")
            await _until(
                tools,
                "stepcall.state === 'connected' && stepcall.messages.some(m => m.type === 'bot-ready')",
                20,
                "the embedded widget to connect",
            )
            assert await tools.eval("stepcall.server") == server.url
            await tools.eval("document.querySelector('.stepcall-hangup').click()")
            await _until(tools, "stepcall.state === 'ended'", 10, "the call to end")
        await _calls_end(server)
