"""Browser calls without a browser: an aiortc peer calls the bot server's WebRTC routes.

Real parts end to end: aiortc client (Opus mic track + data channel) → ``POST /webrtc/offer`` →
SmallWebRTC transport → call pipeline (Silero VAD, StepAudio2Service at 16 kHz) → in-process
model service (reference backend, demo checkpoint) → bot audio back over RTP and the bot's text
over the data channel (``bots/webrtc/transcript.py``).
"""

from __future__ import annotations

import asyncio
import fractions
import json
import time

import httpx
import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from av import AudioFrame

from bots.profile import BotProfile
from bots.webrtc.config import WebRTCConfig, parse_ice_servers
from harness.checkpoints.demo_checkpoint import DEMO_REPLY

RATE = 48000
FRAME = 960  # 20 ms at 48 kHz


class SpeechTrack(MediaStreamTrack):
    """A microphone that says ``pcm`` once (in real time), then stays silent."""

    kind = "audio"

    def __init__(self, pcm: np.ndarray, lead_secs: float = 0.5) -> None:
        super().__init__()
        lead = np.zeros(int(lead_secs * RATE), dtype=np.int16)
        self._pcm = np.concatenate([lead, pcm.astype(np.int16)])
        self._pos = 0
        self._start: float | None = None
        self.finished_at: float | None = None

    async def recv(self) -> AudioFrame:
        if self._start is None:
            self._start = time.monotonic()
        due = self._start + self._pos / RATE
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        chunk = self._pcm[self._pos : self._pos + FRAME]
        if len(chunk) < FRAME:
            if self.finished_at is None:
                self.finished_at = time.monotonic()
            chunk = np.concatenate([chunk, np.zeros(FRAME - len(chunk), dtype=np.int16)])
        frame = AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = self._pos
        frame.time_base = fractions.Fraction(1, RATE)
        self._pos += FRAME
        return frame


class Peer:
    """The browser's side of a call, in aiortc."""

    def __init__(self, mic: MediaStreamTrack | None) -> None:
        self.pc = RTCPeerConnection()
        self.messages: list[dict] = []
        self.bot_pcm: list[np.ndarray] = []
        self.first_audible_at: float | None = None
        self._readers: list[asyncio.Task] = []
        if mic is not None:
            self.pc.addTrack(mic)
        else:
            self.pc.addTransceiver("audio", direction="sendrecv")
        self.channel = self.pc.createDataChannel("stepcall")

        @self.channel.on("message")
        def _on_message(message: str) -> None:
            self.messages.append(json.loads(message))

        @self.pc.on("track")
        def _on_track(track: MediaStreamTrack) -> None:
            self._readers.append(asyncio.ensure_future(self._read(track)))

    async def _read(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except Exception:
                return
            pcm = frame.to_ndarray().reshape(-1).astype(np.int16)
            self.bot_pcm.append(pcm)
            if self.first_audible_at is None and np.abs(pcm).max() > 1000:
                self.first_audible_at = time.monotonic()

    async def offer(self) -> dict:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return {"sdp": self.pc.localDescription.sdp, "type": self.pc.localDescription.type}

    async def accept(self, answer: dict) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))

    def types(self) -> list[str]:
        return [m.get("type") for m in self.messages]

    def bot_text(self) -> str:
        return "".join(m["data"]["text"] for m in self.messages if m.get("type") == "bot-tts-text")

    async def close(self) -> None:
        await self.pc.close()
        for task in self._readers:
            task.cancel()


def _letters(text: str) -> str:
    return "".join(text.split())


async def _wait(predicate, secs: float, what: str) -> None:
    deadline = time.monotonic() + secs
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {secs:g} s waiting for {what}")
        await asyncio.sleep(0.05)


async def test_offer_is_answered_with_audio_and_data_channel(bot_server_factory):
    async with bot_server_factory() as server:
        peer = Peer(mic=None)
        try:
            async with httpx.AsyncClient(base_url=server.url) as http:
                r = await http.post(
                    "/webrtc/offer", json={**await peer.offer(), "request_data": {"bot": "front"}}
                )
            assert r.status_code == 200, r.text
            answer = r.json()
            assert (
                answer["type"] == "answer"
                and answer["pc_id"]
                and answer["call_id"].startswith("web-")
            )
            assert "m=audio" in answer["sdp"] and "m=application" in answer["sdp"]
            assert "opus" in answer["sdp"].lower()
            await peer.accept(answer)
            await _wait(lambda: peer.pc.connectionState == "connected", 15, "ICE/DTLS connection")
            await _wait(lambda: "bot-ready" in peer.types(), 15, "the bot-ready message")
            ready = next(m for m in peer.messages if m["type"] == "bot-ready")
            assert ready == {
                "label": "rtvi-ai",
                "type": "bot-ready",
                "data": {"bot": "front", "call_id": answer["call_id"]},
            }
            assert server.app.state.calls.active == 1
            # the widget's hang-up message ends the call and frees its slot
            peer.channel.send(json.dumps({"type": "stepcall-hangup"}))
            await _wait(lambda: server.app.state.calls.active == 0, 15, "the call to end")
            await _wait(lambda: not server.app.state.webrtc.tasks, 5, "the call task to finish")
        finally:
            await peer.close()


async def test_caller_speech_gets_bot_audio_and_transcript(bot_server_factory, speech):
    mic = SpeechTrack(speech("Hello, what time do you open tomorrow morning?", RATE))
    async with bot_server_factory() as server:
        peer = Peer(mic)
        try:
            async with httpx.AsyncClient(base_url=server.url) as http:
                r = await http.post("/webrtc/offer", json=await peer.offer())
            assert r.status_code == 200, r.text
            await peer.accept(r.json())
            await _wait(
                lambda: "bot-tts-text" in peer.types() and "bot-llm-stopped" in peer.types(),
                60,
                f"the bot's transcript (got {peer.types()})",
            )
            await _wait(lambda: peer.first_audible_at is not None, 20, "audible bot audio")
            assert mic.finished_at is not None and peer.first_audible_at > mic.finished_at
            # the transcript is the demo reply, in order, bracketed by the response events (the
            # tiny test tokenizer decodes some word breaks without their space)
            assert _letters(peer.bot_text()) == _letters(DEMO_REPLY)
            types = peer.types()
            assert types.index("user-started-speaking") < types.index("bot-llm-started")
            assert (
                types.index("bot-llm-started")
                < types.index("bot-tts-text")
                < types.index("bot-llm-stopped")
            )
            await _wait(
                lambda: "bot-stopped-speaking" in peer.types(), 20, "the bot to finish speaking"
            )
            pcm = np.concatenate(peer.bot_pcm).astype(np.float64)
            loud = pcm[np.abs(pcm) > 1000]
            assert loud.size > RATE // 2, "less than 0.5 s of audible bot audio"  # stereo 48 kHz
        finally:
            await peer.close()
        await _wait(lambda: server.app.state.calls.active == 0, 20, "the call to end after hang-up")


async def test_bot_speaks_first_greets_without_caller_speech(bot_server_factory):
    profile = BotProfile(
        name="front", smart_turn=False, bot_speaks_first=True, greeting="Say hello."
    )
    async with bot_server_factory(profile=profile) as server:
        peer = Peer(mic=None)
        try:
            async with httpx.AsyncClient(base_url=server.url) as http:
                r = await http.post("/webrtc/offer", json=await peer.offer())
            await peer.accept(r.json())
            await _wait(
                lambda: "bot-llm-stopped" in peer.types(), 60, f"the greeting (got {peer.types()})"
            )
            assert peer.bot_text().strip()
            assert "user-started-speaking" not in peer.types()
        finally:
            await peer.close()


async def test_offer_errors_rate_limit_and_call_limit(bot_server_factory):
    config = WebRTCConfig(offers_per_minute=2)
    async with bot_server_factory(config=config, max_calls=0) as server:
        async with httpx.AsyncClient(base_url=server.url) as http:
            r = await http.post("/webrtc/offer", content=b"not json")
            assert r.status_code == 400 and "JSON" in r.json()["error"]
            r = await http.post("/webrtc/offer", json={"type": "offer"})
            assert r.status_code == 400 and "sdp" in r.json()["error"]
            r = await http.post("/webrtc/offer", json={"sdp": "v=0", "type": "answer"})
            assert r.status_code == 400 and "offer" in r.json()["error"]
            r = await http.patch("/webrtc/offer", json={"pc_id": "nope", "candidates": []})
            assert r.status_code == 404 and "nope" in r.json()["error"]
            # an SDP with no audio section is refused before it can hold a call slot
            r = await http.post("/webrtc/offer", json={"sdp": "v=0", "type": "offer"})
            assert r.status_code == 400 and "m=audio" in r.json()["error"]
            # valid-looking offers count against the per-IP limit
            audio = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"
            r = await http.post(
                "/webrtc/offer",
                json={"sdp": audio, "type": "offer", "request_data": {"bot": "ghost"}},
            )
            assert r.status_code == 404 and "ghost" in r.json()["error"]
            r = await http.post("/webrtc/offer", json={"sdp": audio, "type": "offer"})
            assert r.status_code == 503 and "busy" in r.json()["error"]  # max_calls=0
            r = await http.post("/webrtc/offer", json={"sdp": audio, "type": "offer"})
            assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    assert server.app.state.calls.active == 0


async def test_widget_page_config_and_cors(bot_server_factory):
    config = WebRTCConfig(
        ice_servers=parse_ice_servers(
            '["stun:stun.example.org:3478", {"urls": ["turn:turn.example.org"], "username": "u", "credential": "p"}]'
        ),
        allowed_origins=("https://shop.example.com",),
    )
    async with bot_server_factory(config=config) as server:
        async with httpx.AsyncClient(base_url=server.url) as http:
            page = await http.get("/call")
            assert page.status_code == 200 and "stepcall-widget.js" in page.text
            js = await http.get("/widget/stepcall-widget.js")
            assert js.status_code == 200 and "/webrtc/offer" in js.text
            css = await http.get("/widget/stepcall-widget.css")
            assert css.status_code == 200 and ".stepcall" in css.text
            cfg = await http.get("/webrtc/config", headers={"Origin": "https://shop.example.com"})
            assert cfg.json()["iceServers"] == [
                {"urls": "stun:stun.example.org:3478"},
                {"urls": ["turn:turn.example.org"], "username": "u", "credential": "p"},
            ]
            assert cfg.json()["bots"] == ["front"] and cfg.json()["sampleRate"] == 16000
            assert cfg.headers["access-control-allow-origin"] == "https://shop.example.com"
            pre = await http.options(
                "/webrtc/offer", headers={"Origin": "https://shop.example.com"}
            )
            assert pre.status_code == 204 and "POST" in pre.headers["access-control-allow-methods"]
            other = await http.get("/webrtc/config", headers={"Origin": "https://evil.example"})
            assert "access-control-allow-origin" not in other.headers


async def test_peer_that_never_connects_is_dropped(bot_server_factory):
    config = WebRTCConfig(connect_timeout_secs=1.0)
    async with bot_server_factory(config=config) as server:
        peer = Peer(mic=None)
        try:
            async with httpx.AsyncClient(base_url=server.url) as http:
                r = await http.post("/webrtc/offer", json=await peer.offer())
            assert r.status_code == 200, r.text
            assert server.app.state.calls.active == 1
            # the answer is never applied: no ICE, no DTLS; the slot comes back after the timeout
            await _wait(
                lambda: server.app.state.calls.active == 0, 10, "the unconnected call to drop"
            )
            assert not server.app.state.webrtc.has_peer(r.json()["pc_id"])
        finally:
            await peer.close()
