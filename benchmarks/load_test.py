"""Load test: N concurrent simulated phone calls against one bot server, on loopback.

Three processes: the instant model-service stand-in (``harness.canned_model_service``:
protocol v1, answers every response at once with ~2 s of flite speech), the bot server
(``bots.server.create_app`` under uvicorn, serving ``flows/front_desk.yaml``: Silero VAD, Smart
Turn v3, the flow runtime, call records in SQLite) and this process, the load generator
(``harness.loadtest.run_load``: the caller simulator, Twilio Media Streams in real time). The
server's CPU and RSS come from /proc.

    .venv/bin/python benchmarks/load_test.py [--calls 50] [--ramp 10] \
        [--plot benchmarks/load_test.png] [--json out.json] [--turn-model-at service]

Prints p50/p95/p99 voice-to-voice latency, underruns, failed calls, CPU and memory per call.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

REPLY = "We are open from nine to six, Monday to Friday."


def _serve_canned(queue: Any, turn_model: bool = False) -> None:
    """Child: the model-service stand-in speaking REPLY at 8 kHz; with ``turn_model`` it also
    answers ``turn.check`` with the model service's turn model (Smart Turn, one thread)."""
    from harness.canned_model_service import CannedModelService
    from model_service.turn_checks import TurnModel
    from stepcall.audio.speech import synthesize

    pcm = synthesize(REPLY, 8000).tobytes()
    model = TurnModel(1) if turn_model else None
    if model is not None:
        model.warm_up()

    async def main() -> None:
        async with CannedModelService(pcm, REPLY, turn_model=model).serving() as url:
            queue.put(url)
            await asyncio.Event().wait()

    asyncio.run(main())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve_bot(
    model_url: str,
    flows: str,
    db: str,
    port: int,
    log_level: str,
    lead_ms: float | None,
    vad_runtime: str = "numpy",
) -> None:
    """Child: the bot server."""
    import uvicorn
    from loguru import logger

    from stepcall.audio.inference import configure_vad_runtime

    configure_vad_runtime(vad_runtime)

    from bots.server import create_app
    from stepcall.settings import Settings

    logger.remove()
    logger.add(sys.stderr, level=log_level)
    settings = Settings(
        model_url=model_url,
        flows_dir=flows,
        database_url=f"sqlite:///{db}",
        max_calls=200,
        log_level=log_level,
        **({} if lead_ms is None else {"twilio_audio_lead_ms": lead_ms}),
    )
    uvicorn.run(create_app(settings), host="127.0.0.1", port=port, log_level="warning")


def calibration_us(runs: int = 300) -> float:
    """Median µs of one Silero VAD window on this machine now: a shared VM's speed varies
    from hour to hour (here ~60 µs quiet, ~100 µs when its host is busy), so results are
    read against it."""
    import numpy as np

    from stepcall.audio.inference import SILERO_MODEL, shared_session

    session = shared_session(SILERO_MODEL)
    feed = {
        "input": np.zeros((1, 288), np.float32),
        "state": np.zeros((2, 1, 128), np.float32),
        "sr": np.array(8000, dtype=np.int64),
    }
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - t) * 1e6)
    return float(np.median(times))


def _wait_port(port: int, secs: float = 60.0) -> None:
    deadline = time.monotonic() + secs
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"bot server did not open port {port}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=50)
    ap.add_argument("--ramp", type=float, default=10.0)
    ap.add_argument("--flow", default=str(ROOT / "flows" / "front_desk.yaml"))
    ap.add_argument("--plot", default=None, help="PNG path (default: none)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--server-log", default="WARNING")
    ap.add_argument("--audio-lead-ms", type=float, default=None,
                    help="the server's STEPCALL_TWILIO_AUDIO_LEAD_MS (default: its default; "
                    "100 is Pipecat's own pacing)")
    ap.add_argument("--vad-runtime", choices=["numpy", "onnxruntime"], default="numpy",
                    help="how the server runs Silero (stepcall.audio.inference.configure_vad_runtime)")
    ap.add_argument("--turn-model-at", choices=["bot", "service"], default="bot",
                    help="where the calls' Smart Turn runs: the bot server's pool (default, "
                    "as the earlier runs) or the stand-in's turn model (turn.check)")
    args = ap.parse_args()

    from harness.loadtest import LoadOptions, format_report, run_load, write_plot

    speed = calibration_us()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    canned = ctx.Process(
        target=_serve_canned, args=(queue, args.turn_model_at == "service"), daemon=True
    )
    canned.start()
    model_url = queue.get(timeout=60)
    tmp = Path(tempfile.mkdtemp(prefix="stepcall-load-"))
    flows = tmp / "flows"
    flows.mkdir()
    shutil.copy(args.flow, flows)
    port = _free_port()
    bot = ctx.Process(
        target=_serve_bot,
        args=(model_url, str(flows), str(tmp / "calls.db"), port, args.server_log,
              args.audio_lead_ms, args.vad_runtime),
        daemon=True,
    )
    bot.start()
    try:
        _wait_port(port)
        time.sleep(1.0)
        options = LoadOptions(
            calls=args.calls,
            ramp_secs=args.ramp,
            server_pid=bot.pid,
            caller={"greeting_wait_secs": 5.0, "pause_secs": 0.5},
        )
        url = f"ws://127.0.0.1:{port}/twilio/stream"
        report = asyncio.run(run_load(url, options))
    finally:
        bot.terminate()
        canned.terminate()
        bot.join(10)
        canned.join(10)
        shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"machine: {os.cpu_count()} CPUs, Silero window {speed:.0f} us (calibration); "
        f"bot: {Path(args.flow).name}; model: canned stand-in; Twilio audio lead "
        f"{'default' if args.audio_lead_ms is None else f'{args.audio_lead_ms:g} ms'}; "
        f"Silero on {args.vad_runtime}; Smart Turn on the {args.turn_model_at}"
    )
    print(format_report(report))
    if args.plot:
        print(f"plot: {write_plot(report, args.plot)}")
    if args.json:
        out = {**report.to_dict(), "calibration_silero_window_us": round(speed, 1),
               "audio_lead_ms": args.audio_lead_ms, "vad_runtime": args.vad_runtime,
               "turn_model_at": args.turn_model_at}
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0 if report.failed_calls == 0 and report.underruns == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
