"""TwilioMediaTransport on a real WebSocket: caller audio goes straight downstream, in order with
DTMF, and no interrupted audio reaches the caller after Twilio's ``clear``.

A FastAPI endpoint served by uvicorn on loopback runs a small Pipecat pipeline around the
transport (Pipecat's Twilio serializer, as on a call); the client is the ``websockets`` library
speaking Twilio's Media Streams messages.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import time

import pytest
import websockets
from fastapi import FastAPI, WebSocket
from pipecat.frames.frames import (
    Frame,
    InputAudioRawFrame,
    InputDTMFFrame,
    InterruptionFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.transports.websocket.fastapi import FastAPIWebsocketParams
from pipecat.workers.runner import WorkerRunner

from bots.twilio.media_transport import TwilioMediaTransport, socket_transport
from bots.twilio.serializer import PhoneSerializer
from model_service.server import serving

RATE = 8000
SID = "MZ" + "0" * 32


class Probe(FrameProcessor):
    """Records what the input delivers; DTMF '1' starts 2 s of bot audio, '2' barges in."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []
        self.audio_bytes: list[bytes] = []
        #: (the frame's ``captured_at``, when the probe saw it) per audio frame
        self.stamps: list[tuple[float | None, float]] = []
        self.old_chunks: list[TTSAudioRawFrame] = []

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame):
            self.seen.append("audio")
            self.audio_bytes.append(frame.audio)
            self.stamps.append((getattr(frame, "captured_at", None), time.monotonic()))
            return
        if isinstance(frame, InputDTMFFrame):
            self.seen.append(f"dtmf {frame.button.value}")
            if frame.button.value == "1":
                await self.push_frame(TTSStartedFrame())
                for k in range(50):  # 2 s in 40 ms frames, all queued at once
                    chunk = TTSAudioRawFrame(bytes([k % 100 + 1, 0]) * 320, RATE, 1)
                    self.old_chunks.append(chunk)
                    await self.push_frame(chunk)
            elif frame.button.value == "2":
                await self.push_frame(InterruptionFrame())
            return
        await self.push_frame(frame, direction)


def _media(pcm: bytes) -> str:
    ulaw = bytes(0xFF if b == 0 else 0x7F for b in pcm[::2])  # silence / a loud sample
    return json.dumps(
        {"event": "media", "streamSid": SID, "media": {"payload": base64.b64encode(ulaw).decode()}}
    )


def _dtmf(digit: str) -> str:
    return json.dumps({"event": "dtmf", "streamSid": SID, "dtmf": {"digit": digit}})


async def _serve_call(
    probe: Probe,
    holder: dict,
    quiet=None,
    lead_secs: float = 0.1,
    hold=None,
    pause=None,
    speech=None,
) -> FastAPI:
    app = FastAPI()

    @app.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        serializer = PhoneSerializer(
            stream_sid=SID, params=PhoneSerializer.InputParams(auto_hang_up=False)
        )
        transport = TwilioMediaTransport(
            websocket,
            FastAPIWebsocketParams(
                audio_in_enabled=True,
                audio_out_enabled=True,
                audio_in_sample_rate=RATE,
                audio_out_sample_rate=RATE,
                serializer=serializer,
                allowed_origins=[],
            ),
            audio_lead_secs=lead_secs,
        )
        holder["transport"] = transport
        if quiet is not None or hold is not None or speech is not None:
            transport.input().coalesce_while(
                quiet, quiet=hold, pause_reading=pause, speech=speech
            )
        worker = PipelineWorker(
            Pipeline([transport.input(), probe, transport.output()]),
            params=PipelineParams(audio_in_sample_rate=RATE, audio_out_sample_rate=RATE),
            enable_rtvi=False,
            idle_timeout_secs=None,
        )

        @transport.event_handler("on_client_disconnected")
        async def _gone(_t, _ws) -> None:
            await worker.cancel()

        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(worker)
        await runner.run()

    return app


async def test_caller_audio_arrives_in_order_with_dtmf_and_no_audio_follows_the_clear() -> None:
    probe, holder = Probe(), {}
    app = await _serve_call(probe, holder)
    async with serving(app) as url:
        ws_url = url.replace("/v1/session", "/ws")
        received: list[dict] = []
        async with websockets.connect(ws_url) as ws:

            async def reader() -> None:
                async for raw in ws:
                    received.append(json.loads(raw))

            reading = asyncio.create_task(reader())
            frames = [bytes(320), bytes([0, 64]) * 160, bytes(320)]
            for pcm in frames:
                await ws.send(_media(pcm))
            await ws.send(_dtmf("5"))
            await ws.send(_media(bytes(320)))
            await asyncio.sleep(0.3)
            await ws.send(_dtmf("1"))  # the bot starts talking: 2 s queued at once
            await asyncio.sleep(0.3)
            await ws.send(_dtmf("2"))  # the caller barges in
            await asyncio.sleep(0.6)
            reading.cancel()
    transport: TwilioMediaTransport = holder["transport"]
    # input: straight through, in arrival order (no audio queue or task behind DTMF)
    assert probe.seen[:5] == ["audio", "audio", "audio", "dtmf 5", "audio"]
    assert [len(a) for a in probe.audio_bytes[:4]] == [320, 320, 320, 320]
    assert transport.input().audio_frames_pushed >= 4
    assert transport.input()._audio_task is None  # Pipecat's per-frame queue + task are gone
    # output: some audio, then clear, then nothing from the interrupted answer
    events = [m["event"] for m in received]
    assert "clear" in events, events
    cut = events.index("clear")
    assert 3 <= events[:cut].count("media") < 25  # ~0.3 s of the 2 s answer played
    assert "media" not in events[cut + 1 :], events[cut:]


async def test_chunks_queued_before_an_interruption_are_not_sent_unless_uninterruptible() -> None:
    probe, holder = Probe(), {}
    app = await _serve_call(probe, holder)
    async with serving(app) as url:
        ws_url = url.replace("/v1/session", "/ws")
        async with websockets.connect(ws_url) as ws:
            await ws.send(_media(bytes(320)))
            await asyncio.sleep(0.3)
            transport: TwilioMediaTransport = holder["transport"]
            output = transport.output()
            assert output.stale_audio.senders_guarded == 1
            stale = TTSAudioRawFrame(bytes(640), RATE, 1)
            keep = TTSAudioRawFrame(bytes(640), RATE, 1)
            keep.interruptible = False
            await ws.send(_dtmf("2"))  # InterruptionFrame through the output transport
            await asyncio.sleep(0.3)
            fresh = TTSAudioRawFrame(bytes(640), RATE, 1)
            # a chunk past the sender's queue when the caller barged in is refused at the write
            assert await output.write_audio_frame(stale) is False
            assert await output.write_audio_frame(keep) is True
            assert await output.write_audio_frame(fresh) is True
            assert output.stale_audio.chunks_dropped == 1


async def test_caller_frames_go_in_pairs_while_quiet_and_alone_otherwise() -> None:
    probe, holder = Probe(), {}
    state = {"quiet": True}
    app = await _serve_call(probe, holder, quiet=lambda: state["quiet"])
    async with serving(app) as url:
        async with websockets.connect(url.replace("/v1/session", "/ws")) as ws:
            for _ in range(4):
                await ws.send(_media(bytes(320)))
            await ws.send(_media(bytes(320)))  # held: its partner has not come yet
            await ws.send(_dtmf("5"))  # sends it first, alone
            await asyncio.sleep(0.3)
            state["quiet"] = False  # the caller speaks: no frame waits
            for _ in range(3):
                await ws.send(_media(bytes([0, 64]) * 160))
            await asyncio.sleep(0.3)
    assert probe.seen == ["audio", "audio", "audio", "dtmf 5", "audio", "audio", "audio"]
    assert [len(a) for a in probe.audio_bytes] == [640, 640, 320, 320, 320, 320]
    assert holder["transport"].input().frames_coalesced == 2


def _ulaw_media(code: int, samples: int = 160, stamp_ms: int | None = None) -> str:
    """One caller frame of a single mu-law code (0xFF: digital silence, 0x00: full scale),
    with Twilio's stream timestamp when ``stamp_ms`` is given."""
    media = {"payload": base64.b64encode(bytes([code]) * samples).decode()}
    if stamp_ms is not None:
        media["timestamp"] = str(stamp_ms)
    return json.dumps({"event": "media", "streamSid": SID, "media": media})


async def test_quiet_caller_audio_waits_up_to_200_ms_and_goes_down_with_what_is_not_quiet() -> None:
    probe, holder = Probe(), {}
    offers: list[tuple[float, int]] = []

    def silent_line(sum_squares: float, samples: int, _last: bytes | None) -> bool:
        """The quiet test of a line that holds digital silence only (rms 0 bounds to n)."""
        offers.append((sum_squares, samples))
        return sum_squares <= samples

    app = await _serve_call(probe, holder, quiet=lambda: False, hold=silent_line)
    async with serving(app) as url:
        async with websockets.connect(url.replace("/v1/session", "/ws")) as ws:
            for _ in range(10):  # 200 ms of silence: one push when the hold is full
                await ws.send(_ulaw_media(0xFF))
            for _ in range(3):  # held ...
                await ws.send(_ulaw_media(0xFF))
            await ws.send(_ulaw_media(0x00))  # ... and sent at once with the loud frame
            await ws.send(_ulaw_media(0xFF))  # held again
            await ws.send(_ulaw_media(0xFF))
            await ws.send(_dtmf("5"))  # the waiting audio goes first
            await asyncio.sleep(0.3)
    assert probe.seen == ["audio", "audio", "audio", "dtmf 5"]
    assert [len(a) for a in probe.audio_bytes] == [3200, 1280, 640]
    assert probe.audio_bytes[0] == bytes(3200)
    loud = probe.audio_bytes[1]
    assert loud[:960] == bytes(960)
    assert abs(int.from_bytes(loud[960:962], "little", signed=True)) > 30000  # the loud frame
    assert probe.audio_bytes[2] == bytes(640)
    transport_in = holder["transport"].input()
    assert transport_in.frames_coalesced == 9 + 3 + 1
    assert transport_in.batcher.quiet_frames == 15
    # the test saw the waiting audio's bound grow frame by frame, never more than 200 ms
    assert max(n for _, n in offers) == 1600
    assert offers[:2] == [(160.0, 160), (320.0, 320)]


def _silent_line(sum_squares: float, samples: int, _last: bytes | None) -> bool:
    """The quiet test of a line that holds digital silence only (rms 0 bounds to n)."""
    return sum_squares <= samples


async def _send_paced(app: FastAPI, holder: dict, codes: list[int], digit: str) -> list[bool]:
    """Send one mu-law frame per code, 20 ms apart as Twilio paces them, then DTMF ``digit``;
    returns whether the server's socket was being read, sampled every 5 ms meanwhile."""
    reading: list[bool] = []
    async with serving(app) as url:
        async with websockets.connect(url.replace("/v1/session", "/ws")) as ws:
            await asyncio.sleep(0.1)
            reader = socket_transport(holder["transport"].input()._client)
            assert reader is not None and reader.is_reading()

            async def watch() -> None:
                while True:
                    reading.append(reader.is_reading())
                    await asyncio.sleep(0.005)

            watcher = asyncio.create_task(watch())
            for b in codes:
                await ws.send(_ulaw_media(b))
                await asyncio.sleep(0.02)
            await ws.send(_dtmf(digit))
            await asyncio.sleep(0.5)
            watcher.cancel()
    return reading


async def test_the_socket_is_left_unread_while_a_quiet_hold_fills_and_nothing_is_lost() -> None:
    probe, holder = Probe(), {}
    idle = {"bot": True}

    app = await _serve_call(
        probe,
        holder,
        quiet=lambda: False,
        hold=_silent_line,
        pause=lambda: math.inf if idle["bot"] else 0.0,
    )
    frames = [0xFF] * 10 + [0xFF] * 3 + [0x00] + [0xFF] * 2
    reading = await _send_paced(app, holder, frames, "5")
    # the same pushes, in the same order, as when every frame is read on arrival
    assert probe.seen == ["audio", "audio", "audio", "dtmf 5"]
    assert [len(a) for a in probe.audio_bytes] == [3200, 1280, 640]
    assert probe.audio_bytes[0] == bytes(3200) and probe.audio_bytes[2] == bytes(640)
    assert abs(int.from_bytes(probe.audio_bytes[1][960:962], "little", signed=True)) > 30000
    transport_in = holder["transport"].input()
    assert transport_in.read_pauses >= 2
    assert 0.15 * transport_in.read_pauses <= transport_in.read_paused_secs
    assert False in reading and reading[-1] is True  # really unread, then read again


async def test_the_socket_is_left_unread_while_a_speech_hold_fills_and_nothing_is_lost() -> None:
    """A speech hold of 70 ms (the call's test says how long the caller's speech may wait):
    frames go down four at a time, the socket is unread while the first three wait, every
    sample arrives in order and a DTMF press comes after the audio that waited before it."""
    probe, holder = Probe(), {}
    asked: list[bytes | None] = []

    def speaking(last: bytes | None) -> float:
        asked.append(last)
        return 0.07

    app = await _serve_call(probe, holder, pause=lambda: math.inf, speech=speaking)
    levels = [0x80 + k for k in range(10)]  # ten loud frames, each its own level
    reading = await _send_paced(app, holder, levels, "7")
    assert probe.seen == ["audio", "audio", "audio", "dtmf 7"]
    assert [len(a) for a in probe.audio_bytes] == [1280, 1280, 640]
    got = b"".join(probe.audio_bytes)
    firsts = [int.from_bytes(got[k * 320 : k * 320 + 2], "little", signed=True) for k in range(10)]
    assert len(set(firsts)) == 10  # every frame once, in the order sent
    assert firsts == sorted(firsts, reverse=firsts[0] > firsts[-1])
    transport_in = holder["transport"].input()
    assert transport_in.batcher.speech_frames == 3 + 3 + 2
    assert len(asked) == 3 and asked[0] is None  # once per hold
    assert transport_in.read_pauses == 3
    assert transport_in.read_paused_secs == pytest.approx(3 * 0.05)
    assert False in reading and reading[-1] is True  # really unread, then read again


async def test_no_read_pause_when_none_is_allowed() -> None:
    probe, holder = Probe(), {}

    app = await _serve_call(
        probe, holder, quiet=lambda: False, hold=_silent_line, pause=lambda: 0.0
    )
    async with serving(app) as url:
        async with websockets.connect(url.replace("/v1/session", "/ws")) as ws:
            for _ in range(12):
                await ws.send(_ulaw_media(0xFF))
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.2)
    transport_in = holder["transport"].input()
    assert transport_in.read_pauses == 0
    assert [len(a) for a in probe.audio_bytes] == [3200]  # the quiet hold itself works as before


async def test_a_shorter_read_pause_is_kept_and_late_frames_keep_the_time_they_came() -> None:
    """While the bot answers the call allows a shorter pause than the hold (the VAD's start
    lead): the socket is unread for that long only. A loud frame that came during the pause is
    read late with the ones before it, goes down at once with them, and the joined frame
    carries when it came (Twilio's stream timestamp on this host's clock), not when it was read:
    what the echo guard lines up with the bot's audio."""
    probe, holder = Probe(), {}

    app = await _serve_call(
        probe, holder, quiet=lambda: False, hold=_silent_line, pause=lambda: 0.1
    )
    sent: list[float] = []
    async with serving(app) as url:
        async with websockets.connect(url.replace("/v1/session", "/ws")) as ws:
            await asyncio.sleep(0.1)
            start = time.monotonic()
            for k in range(14):  # a hold read with a pause, then one ended by a loud frame
                code = 0x00 if k == 13 else 0xFF  # the last one loud, during the pause
                sent.append(time.monotonic())  # stamped as Twilio does: its place in the stream
                await ws.send(_ulaw_media(code, stamp_ms=round(1000 * (sent[-1] - start))))
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.3)
    transport_in = holder["transport"].input()
    assert transport_in.read_pauses == 2  # one per hold
    assert transport_in.read_paused_secs == pytest.approx(0.2)  # not the holds' 180 ms each
    assert [len(a) for a in probe.audio_bytes] == [3200, 1280]
    (first, first_seen), (late, late_seen) = probe.stamps
    assert first is not None and late is not None
    assert abs(first - sent[9]) < 0.015  # read as it came: stamped when it came
    # the loud frame came ~60 ms into the pause and was read when it ended
    assert abs(late - sent[13]) < 0.015
    assert late_seen - late > 0.02


async def _media_arrivals(lead_secs: float) -> tuple[list[float], float, TwilioMediaTransport]:
    """DTMF '1' queues 2 s of bot audio at once; the client's arrival times of its media, and
    when the barge-in's ``clear`` arrived (the media before it only)."""
    probe, holder = Probe(), {}
    app = await _serve_call(probe, holder, lead_secs=lead_secs)
    arrivals: list[float] = []
    cleared: list[float] = []
    async with serving(app) as url:
        async with websockets.connect(url.replace("/v1/session", "/ws")) as ws:
            await ws.send(_media(bytes(320)))
            await asyncio.sleep(0.2)
            await ws.send(_dtmf("1"))

            async def reader() -> None:
                async for raw in ws:
                    event = json.loads(raw)["event"]
                    now = asyncio.get_running_loop().time()
                    if event == "clear":
                        cleared.append(now)
                    elif event == "media" and not cleared:
                        arrivals.append(now)

            reading = asyncio.create_task(reader())
            await asyncio.sleep(1.0)
            await ws.send(_dtmf("2"))  # barge in: Twilio's buffer is cleared
            await asyncio.sleep(0.3)
            reading.cancel()
    assert cleared, "no clear after the barge-in"
    return arrivals, cleared[0], holder["transport"]


async def test_bot_audio_runs_the_lead_ahead_of_playout_then_real_time() -> None:
    """A 320 ms lead sends the first 360 ms of an answer (40 ms chunks) at once, then one chunk
    per 40 ms (the next one 40 ms after the burst); a 120 ms lead, about Pipecat's own pacing,
    only 160 ms. When the caller barges in, the lead is what Twilio still holds."""
    for lead, burst in ((0.32, 9), (0.12, 4)):
        arrivals, cleared_at, transport = await _media_arrivals(lead)
        t0 = arrivals[0]
        at_once = sum(1 for t in arrivals if t - t0 < 0.02)
        assert at_once == burst, (lead, [round(t - t0, 3) for t in arrivals[:12]])
        # afterwards real time: chunk k never goes out before its playout minus the lead
        for k, t in enumerate(arrivals):
            assert t - t0 >= k * 0.04 - lead - 0.04 - 0.005, (lead, k, t - t0)
        # at the clear, the audio sent minus the audio played since the first chunk arrived is
        # what was queued ahead: the lead, one chunk more right after a send
        ahead = len(arrivals) * 0.04 - (cleared_at - t0)
        assert lead - 0.03 <= ahead <= lead + 0.04 + 0.03, (lead, ahead)
        assert transport.output().playout_end == 0.0  # the clear emptied Twilio's buffer


async def test_a_stalled_sender_catches_up_to_the_lead(monkeypatch) -> None:
    """After the event loop stalled, chunks go out back to back until the caller's buffer holds
    the lead again, instead of staying behind (and short) for the rest of the answer."""
    import bots.twilio.media_transport as mt

    clock = {"t": 100.0}

    class FakeAsyncio:
        @staticmethod
        async def sleep(secs: float) -> None:
            clock["t"] += secs

    monkeypatch.setattr(mt.time, "monotonic", lambda: clock["t"])
    monkeypatch.setattr(mt, "asyncio", FakeAsyncio)
    out = mt.ClearAwareOutputTransport(None, None, FastAPIWebsocketParams(), lead_secs=0.3)
    sent: list[float] = []
    for k in range(12):
        if k == 6:
            clock["t"] += 0.5  # a 500 ms stall of the event loop
        sent.append(round(clock["t"] - 100.0, 3))
        out._chunk_secs = 0.1
        await out._write_audio_sleep()
    # 4 chunks at once (400 ms queued), then one per 100 ms: 0.3 s always ahead
    assert sent[:6] == [0.0, 0.0, 0.0, 0.0, 0.1, 0.2]
    # the stall ate the lead (the caller's buffer ran dry at 0.6 s); the sender refills it
    # with 4 chunks back to back, then paces again
    assert sent[6:] == [0.8, 0.8, 0.8, 0.8, 0.9, 1.0]
    with pytest.raises(ValueError):
        mt.ClearAwareOutputTransport(None, None, FastAPIWebsocketParams(), lead_secs=-0.1)
