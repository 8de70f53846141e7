"""A scripted bot that speaks Twilio Media Streams from the server side, on loopback.

It plays the role of our bot server for the caller simulator's tests: it receives
``connected`` / ``start`` / ``media`` / ``dtmf`` / ``mark`` / ``stop``, detects the end of each
caller utterance from the audio itself (last voiced frame), and replies after a known delay
with ``media`` frames on the caller's streamSid followed by a ``mark``. Optional behaviours:
``clear`` after a while, barge-in detection, hanging up, a wrong streamSid.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import numpy as np
import pytest
from websockets.asyncio.server import ServerConnection, serve

from stepcall.audio.mulaw import pcm16_to_ulaw, ulaw_to_pcm16

RATE = 8000
FRAME = 160
VOICED_RMS = 200.0


def tone(secs: float, freq: float, amp: float = 0.3) -> np.ndarray:
    """An int16 sine tone at 8 kHz (stands in for speech in protocol tests)."""
    t = np.arange(int(secs * RATE)) / RATE
    return (amp * 32767 * np.sin(2 * np.pi * freq * t)).astype(np.int16)


@dataclass
class BotScript:
    """What the scripted bot does; times in seconds."""

    reply_delay: float = 0.3  # after the caller's last voiced frame
    reply_secs: float = 0.6
    reply_freq: float = 1000.0
    end_silence_frames: int = 5  # silent frames that confirm the caller stopped
    realtime: bool = False  # pace reply frames at 20 ms instead of sending them all at once
    mark: bool = True  # send a mark after each reply
    clear_after: float | None = None  # send `clear` this long after the reply began
    barge_in_clear: bool = False  # send `clear` when the caller speaks during a reply
    hang_up_after_replies: int | None = None  # close the socket after N replies
    stream_sid: str | None = None  # override the streamSid on bot messages (a bug to catch)
    greeting_secs: float = 0.0  # speak first for this long
    idle_silence: bool = False  # answer every caller frame with a silent frame while not replying
    holding_secs: float = 0.0  # before each reply: a holding line this long, a `holding-N` mark,
    holding_gap: float = 0.0  # then this much silence
    holding_mark: bool = True  # False: the holding line without its mark (a control)


@dataclass
class ScriptedTwilioBot:
    """The loopback server; everything it received is kept for assertions."""

    script: BotScript = field(default_factory=BotScript)
    messages: list[dict] = field(default_factory=list)
    recv_times: list[float] = field(default_factory=list)  # loop.time() per message
    reply_sent_at: list[float] = field(default_factory=list)  # first reply frame sent
    voiced_end_at: list[float] = field(default_factory=list)  # receipt of last voiced frame
    url: str = ""
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    async def handler(self, ws: ServerConnection) -> None:
        loop = asyncio.get_running_loop()
        sid: str | None = None
        last_voiced: float | None = None
        silent_run = 0
        replying: asyncio.Task | None = None
        replies = 0

        async def send(msg: dict) -> None:
            await ws.send(json.dumps(msg))

        async def reply(start_at: float, secs: float, index: int) -> None:
            nonlocal replies
            await asyncio.sleep(max(0.0, start_at - loop.time()))
            audio = pcm16_to_ulaw(tone(secs, self.script.reply_freq))
            out_sid = self.script.stream_sid or sid
            if self.script.holding_secs:
                hold = pcm16_to_ulaw(tone(self.script.holding_secs, 500.0))
                for k in range(0, len(hold), FRAME):
                    await send({"event": "media", "streamSid": out_sid,
                                "media": {"payload": base64.b64encode(hold[k:k + FRAME]).decode()}})
                if self.script.holding_mark:
                    await send({"event": "mark", "streamSid": out_sid,
                                "mark": {"name": f"holding-{index}"}})
                await asyncio.sleep(self.script.holding_secs + self.script.holding_gap)
            began = loop.time()
            self.reply_sent_at.append(began)
            for k in range(0, len(audio), FRAME):
                if self.script.realtime:
                    await asyncio.sleep(max(0.0, began + (k // FRAME) * 0.02 - loop.time()))
                await send({"event": "media", "streamSid": out_sid,
                            "media": {"payload": base64.b64encode(audio[k:k + FRAME]).decode()}})
            if self.script.mark:
                await send({"event": "mark", "streamSid": out_sid, "mark": {"name": f"reply-{index}"}})
            if self.script.clear_after is not None:
                await asyncio.sleep(max(0.0, began + self.script.clear_after - loop.time()))
                await send({"event": "clear", "streamSid": out_sid})
            replies += 1
            if self.script.hang_up_after_replies == replies:
                await asyncio.sleep(0.05)
                await ws.close()

        try:
            async for raw in ws:
                now = loop.time()
                msg = json.loads(raw)
                self.messages.append(msg)
                self.recv_times.append(now)
                event = msg.get("event")
                if event == "start":
                    sid = msg["start"]["streamSid"]
                    if self.script.greeting_secs:
                        replying = asyncio.create_task(reply(now, self.script.greeting_secs, 0))
                elif event == "media":
                    if self.script.idle_silence and (replying is None or replying.done()):
                        await send({"event": "media", "streamSid": sid,
                                    "media": {"payload": base64.b64encode(b"\xff" * FRAME).decode()}})
                    pcm = ulaw_to_pcm16(base64.b64decode(msg["media"]["payload"]))
                    voiced = float(np.sqrt((pcm.astype(np.float64) ** 2).mean())) > VOICED_RMS
                    if voiced:
                        if (self.script.barge_in_clear and replying is not None
                                and not replying.done()):
                            replying.cancel()
                            await send({"event": "clear", "streamSid": sid})
                        last_voiced, silent_run = now, 0
                    elif last_voiced is not None:
                        silent_run += 1
                        if silent_run == self.script.end_silence_frames:
                            self.voiced_end_at.append(last_voiced)
                            replying = asyncio.create_task(
                                reply(last_voiced + self.script.reply_delay,
                                      self.script.reply_secs, len(self.voiced_end_at)))
                            last_voiced = None
                elif event == "dtmf" and msg["dtmf"]["digit"] == "#":
                    self.voiced_end_at.append(now)
                    replying = asyncio.create_task(
                        reply(now + self.script.reply_delay, self.script.reply_secs,
                              len(self.voiced_end_at)))
        finally:
            if replying is not None:
                replying.cancel()
            self.closed.set()

    def events(self, name: str) -> list[dict]:
        return [m for m in self.messages if m.get("event") == name]


@pytest.fixture
async def twilio_bot() -> AsyncIterator:
    """Factory: ``await twilio_bot(**BotScript fields)`` starts a server and returns the bot."""
    servers = []

    async def start(**script: object) -> ScriptedTwilioBot:
        bot = ScriptedTwilioBot(script=BotScript(**script))
        server = await serve(bot.handler, "127.0.0.1", 0, compression=None)
        port = server.sockets[0].getsockname()[1]
        bot.url = f"ws://127.0.0.1:{port}/twilio/stream"
        servers.append(server)
        return bot

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()
