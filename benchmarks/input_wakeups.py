"""The floor under a phone call's CPU: what being woken for the caller's audio costs, with no bot.

A Twilio Media Stream delivers the caller's audio as one WebSocket message per 20 ms. Whatever a
bot does with it, its process is woken 50 times a second per call to read it. On a shared VM each
wake-up after an idle gap is expensive (the vCPU was halted, the caches are cold), so this floor
is worth knowing before reading a call's ``CPU per call`` (``pipeline_overhead.py``).

Measured here, each for ``--secs`` seconds, as % of one core of this process (nothing else runs):

- ``timer``: a bare asyncio loop woken every 20 ms (``asyncio.sleep`` to the next frame time, as
  the loopback phone does), no work;
- ``twilio``: the bot server's stack (uvicorn + Starlette's WebSocket, under FastAPI's;
  uvloop; ``model_service.server.serving``) receiving a child process's Twilio media messages
  (``connected``, ``start``, then ``media`` with 160 bytes of mu-law, base64 in JSON), each
  parsed and decoded to PCM16 (``json.loads``, ``base64``, ``audioop.ulaw2lin``), one message
  every 20 ms;
- ``twilio``, K at a time: the same messages, K of them sent together every K x 20 ms (what the
  socket hands a reader that reads only every K frame times: the same bytes, K times fewer
  wake-ups).

    .venv/bin/python benchmarks/input_wakeups.py [--secs 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FRAME_SECS = 0.02
MULAW_FRAME = bytes(range(96, 256))  # 160 bytes: 20 ms of 8 kHz mu-law (a quiet-ish pattern)


def twilio_messages(stream_sid: str = "MZbench") -> tuple[list[str], str]:
    """The opening messages of a Media Stream and one ``media`` message (JSON text)."""
    opening = [
        json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}),
        json.dumps(
            {
                "event": "start",
                "streamSid": stream_sid,
                "start": {
                    "streamSid": stream_sid,
                    "callSid": "CAbench",
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                },
            }
        ),
    ]
    media = json.dumps(
        {
            "event": "media",
            "streamSid": stream_sid,
            "media": {"track": "inbound", "payload": base64.b64encode(MULAW_FRAME).decode()},
        }
    )
    return opening, media


def _send_media(url: str, secs: float, burst: int) -> None:
    """Child process: Twilio's side, ``burst`` media messages every ``burst`` frame times."""
    import websockets.sync.client as ws_client

    opening, media = twilio_messages()
    with ws_client.connect(url, compression=None) as ws:
        for m in opening:
            ws.send(m)
        start = time.monotonic()
        k = 0
        while time.monotonic() - start < secs + 1.0:
            k += burst
            for _ in range(burst):
                ws.send(media)
            time.sleep(max(0.0, start + k * FRAME_SECS - time.monotonic()))


async def measure_timer(secs: float) -> float:
    """% of a core of a bare loop woken every frame time."""
    start = time.monotonic()
    cpu0 = time.process_time()
    k = 0
    while True:
        k += 1
        due = start + k * FRAME_SECS
        if due - start > secs:
            break
        await asyncio.sleep(max(0.0, due - time.monotonic()))
    return 100.0 * (time.process_time() - cpu0) / (time.monotonic() - start)


async def measure_twilio(secs: float, burst: int) -> dict[str, float]:
    """% of a core of the bot server's stack taking a Media Stream, and the messages taken."""
    from pipecat.audio.utils import audioop as ulaw
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute

    from model_service.server import SESSION_PATH, serving

    taken = {"media": 0}
    first = asyncio.Event()

    async def media(ws: Any) -> None:
        await ws.accept()
        while True:
            try:
                text = await ws.receive_text()
            except Exception:
                return
            msg = json.loads(text)
            if msg.get("event") != "media":
                continue
            ulaw.ulaw2lin(base64.b64decode(msg["media"]["payload"]), 2)
            taken["media"] += 1
            first.set()

    app = Starlette(routes=[WebSocketRoute("/media", media)])  # what FastAPI's routes run on
    async with serving(app) as url:
        sender = mp.get_context("spawn").Process(
            target=_send_media, args=(url.replace(SESSION_PATH, "/media"), secs, burst), daemon=True
        )
        sender.start()
        await first.wait()
        await asyncio.sleep(0.5)  # past the connection's start
        n0, cpu0, t0 = taken["media"], time.process_time(), time.monotonic()
        await asyncio.sleep(secs)
        cpu, wall, n = time.process_time() - cpu0, time.monotonic() - t0, taken["media"] - n0
        sender.join(5)
    return {"cpu_percent_of_core": 100.0 * cpu / wall, "media_per_sec": n / wall}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--secs", type=float, default=20.0, help="length of each measurement")
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = ap.parse_args(argv)
    if args.secs <= 0:
        ap.error("--secs must be > 0")
    import uvloop

    from benchmarks.load_test import calibration_us

    res: dict[str, Any] = {"secs": args.secs}
    res["calibration_silero_window_us"] = round(calibration_us(), 1)
    print(f"machine: Silero window {res['calibration_silero_window_us']:.0f} us (calibration)")
    res["timer_50hz"] = uvloop.run(measure_timer(args.secs))
    print(f"bare uvloop timer, woken every 20 ms:           {res['timer_50hz']:5.2f}% of a core")
    for burst in (1, 2, 10):
        r = uvloop.run(measure_twilio(args.secs, burst))
        res[f"twilio_burst_{burst}"] = r
        wakes = 50.0 / burst
        print(
            f"Twilio media via uvicorn/Starlette, {burst:2d} message(s) every {20 * burst:3d} ms "
            f"({wakes:4.0f} wake-ups/s, {r['media_per_sec']:.0f} messages/s): "
            f"{r['cpu_percent_of_core']:5.2f}% of a core"
        )
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
