"""Soak test: continuous simulated phone calls against one bot server; does it leak?

The bot server (``bots.server.create_app``: media streams, call records in SQLite, the widget
routes) runs in a child process, with the canned model service (``harness.canned_model_service``:
protocol v1 over loopback, answers at once with a tone) in the same child. This process keeps
``--concurrency`` calls going for ``--minutes`` (loopback only, bounded), rotating through:

- ``normal``: the Twilio caller simulator (``harness.callers.run_call``): greeting, one spoken
  question (flite; greeting only without a speech engine), hang-up with ``stop``;
- ``garbage``: a call that sends malformed frames (bad JSON, bad base64, huge frames) between
  good ones, then hangs up;
- ``drop``: a call whose TCP connection is aborted mid-greeting (no ``stop``, no close).

Every ``--sample-secs`` it samples the server process's RSS (``/proc/PID/status`` VmRSS) and its
open file descriptors (``/proc/PID/fd``) and prints them. After a warm-up (``--warmup-secs``),
the baseline is the median of the first third of the samples and the end value the median of the
last third; the run PASSES when

    RSS growth <= --max-rss-growth-mib (default 64 MiB)  and  FD growth <= --max-fd-growth (16)

and no call left the server with calls still active at the end. ``--ci`` is a short run
(60 s, 5 s samples, 15 s warm-up) for the test suite. Exit status 0 on PASS, 1 on FAIL.

The server runs with ``MALLOC_ARENA_MAX=2`` (``--malloc-arena-max``; 0 keeps glibc's default of
8 arenas per core), as production should: every call starts threads (ONNX runtime, thread
offloads) and glibc gives new threads their own malloc arenas, so with the default the RSS
climbs by a few MiB per call until 8 x cores arenas exist (measured: 163 -> 594 MiB over the
first 3 minutes on 2 vCPUs, then flat) - high-water memory, not a leak, but it scales with the
core count. With 2 arenas it stays flat from the first calls on.

    .venv/bin/python benchmarks/soak_test.py [--minutes 30] [--concurrency 2] [--json out.json]
    .venv/bin/python benchmarks/soak_test.py --ci
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RATE = 8000
QUESTION = "Hello, what time do you open tomorrow?"
KINDS = ("normal", "normal", "garbage", "drop")


# --------------------------------------------------------------------------------------------
# the server (child process)
# --------------------------------------------------------------------------------------------


def _tone(secs: float) -> bytes:
    t = np.arange(int(secs * RATE)) / RATE
    return (3000 * np.sin(2 * np.pi * 300 * t)).astype("<i2").tobytes()


async def _serve(port: int, db_url: str) -> None:
    import uvicorn
    from loguru import logger

    from bots.profile import BotProfile
    from bots.registry import BotRegistry
    from bots.server import create_app
    from harness.canned_model_service import CannedModelService
    from stepcall.settings import Settings

    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    canned = CannedModelService(_tone(0.8), text="We open at nine.")
    async with canned.serving() as model_url:
        settings = Settings(port=port, model_url=model_url, database_url=db_url,
                            stream_idle_secs=5.0, max_calls=50)
        profile = BotProfile(name="soak", bot_speaks_first=True, smart_turn=False)
        app = create_app(settings, BotRegistry.single(profile))
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                ws_max_size=settings.ws_max_message_bytes)
        await uvicorn.Server(config).serve()


# --------------------------------------------------------------------------------------------
# sampling
# --------------------------------------------------------------------------------------------


@dataclass
class Sample:
    """One reading of the server process."""

    t: float  # seconds since the start
    rss_mib: float
    fds: int
    calls_done: int


def sample_process(pid: int) -> tuple[float, int]:
    """(RSS in MiB, open file descriptors) of process ``pid`` (Linux /proc)."""
    rss_kib = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss_kib = int(line.split()[1])
                break
    return rss_kib / 1024.0, len(os.listdir(f"/proc/{pid}/fd"))


# --------------------------------------------------------------------------------------------
# the calls
# --------------------------------------------------------------------------------------------


@dataclass
class Tally:
    """What the calls did."""

    started: dict[str, int] = field(default_factory=dict)
    ok: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def add(self, kind: str, ok: bool, error: str | None = None) -> None:
        target = self.ok if ok else self.failed
        target[kind] = target.get(kind, 0) + 1
        if error and len(self.errors) < 20:
            self.errors.append(f"{kind}: {error}")

    @property
    def done(self) -> int:
        return sum(self.ok.values()) + sum(self.failed.values())


async def _raw_call(stream: str, kind: str) -> None:
    """A misbehaving call: garbage frames, or a dropped connection."""
    from websockets.asyncio.client import connect

    from harness.callers.twilio_messages import StreamIdentity, TwilioMessageBuilder

    b = TwilioMessageBuilder(StreamIdentity())
    ws = await connect(stream, compression=None, max_size=None)
    try:
        await ws.send(json.dumps(b.connected()))
        await ws.send(json.dumps(b.start({"bot": "soak"})))
        heard = False
        for i in range(150):  # 3 s of call
            await ws.send(json.dumps(b.media(i + 1, i * 20, b"\xff" * 160)))
            if kind == "garbage" and i % 10 == 5:
                await ws.send("not json")
                await ws.send('{"event": "media", "media": {"payload": "###"}}')
                await ws.send('{"event": "media", "media": {"payload": "' + "A" * 60_000 + '"}}')
            with contextlib.suppress(TimeoutError):
                msg = json.loads(await asyncio.wait_for(ws.recv(), 0.02))
                heard = heard or msg.get("event") == "media"
            if kind == "drop" and heard and i > 40:
                ws.transport.abort()  # no stop, no close handshake
                return
        await ws.send(json.dumps(b.stop()))
        if not heard:
            raise RuntimeError("the bot never spoke")
    finally:
        with contextlib.suppress(Exception):
            await ws.close()


async def _normal_call(stream: str, question: np.ndarray | None) -> None:
    from harness.callers import CallerTurn, CallOptions, run_call

    turns = [CallerTurn(audio=question)] if question is not None else []
    result = await run_call(
        stream, turns,
        CallOptions(greeting_wait_secs=3.0, wait_secs=8.0, quiet_secs=0.6, pause_secs=0.3,
                    params={"bot": "soak"}),
    )
    if result.errors:
        raise RuntimeError("; ".join(result.errors[:2]))
    if result.greeting is None or not result.greeting.replied:
        raise RuntimeError("no greeting")


async def _caller_loop(stream: str, question: np.ndarray | None, tally: Tally, offset: int,
                       stop_at: float) -> None:
    n = offset
    while time.monotonic() < stop_at:
        kind = KINDS[n % len(KINDS)]
        n += 1
        tally.started[kind] = tally.started.get(kind, 0) + 1
        try:
            async with asyncio.timeout(60):
                if kind == "normal":
                    await _normal_call(stream, question)
                else:
                    await _raw_call(stream, kind)
            tally.add(kind, True)
        except Exception as e:  # counted, reported; the soak goes on
            tally.add(kind, False, f"{type(e).__name__}: {e}")


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _question() -> np.ndarray | None:
    try:
        from stepcall.audio.speech import synthesize

        return synthesize(QUESTION, RATE)
    except Exception as e:  # no speech engine: greeting-only normal calls
        print(f"(no caller speech: {e}; normal calls are greeting-only)")
        return None


async def _healthz(port: int) -> dict[str, Any]:
    import httpx

    async with httpx.AsyncClient(timeout=5) as http:
        r = await http.get(f"http://127.0.0.1:{port}/healthz")
        return r.json()


def _median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else 0.0


def evaluate(samples: list[Sample], warmup_secs: float, max_rss: float, max_fds: int) -> dict:
    """Baseline (first third after warm-up) vs end (last third): growth and verdict."""
    steady = [s for s in samples if s.t >= warmup_secs] or samples
    third = max(1, len(steady) // 3)
    first, last = steady[:third], steady[-third:]
    rss_growth = _median([s.rss_mib for s in last]) - _median([s.rss_mib for s in first])
    fd_growth = _median([s.fds for s in last]) - _median([s.fds for s in first])
    slope = 0.0
    if len(steady) >= 3:
        t = np.array([s.t for s in steady]) / 60.0
        slope = float(np.polyfit(t, [s.rss_mib for s in steady], 1)[0])
    return {
        "rss_baseline_mib": round(_median([s.rss_mib for s in first]), 1),
        "rss_end_mib": round(_median([s.rss_mib for s in last]), 1),
        "rss_growth_mib": round(rss_growth, 1),
        "rss_slope_mib_per_min": round(slope, 2),
        "fd_baseline": _median([s.fds for s in first]),
        "fd_end": _median([s.fds for s in last]),
        "fd_growth": fd_growth,
        "rss_ok": rss_growth <= max_rss,
        "fd_ok": fd_growth <= max_fds,
    }


async def soak(args: argparse.Namespace, server: subprocess.Popen, port: int,
               log_path: str) -> tuple[int, dict]:
    """Drive the calls against the running server; returns (exit status, JSON report)."""
    if True:  # (kept flat: the caller owns the server process)
        for _ in range(200):
            with contextlib.suppress(Exception):
                await _healthz(port)
                break
            if server.poll() is not None:
                raise RuntimeError(f"the server exited ({server.returncode}); see {log_path}")
            await asyncio.sleep(0.1)
        stream = f"ws://127.0.0.1:{port}/twilio/stream"
        question = _question()
        seconds = args.seconds if args.seconds else args.minutes * 60.0
        t0 = time.monotonic()
        stop_at = t0 + seconds
        tally = Tally()
        callers = [
            asyncio.create_task(_caller_loop(stream, question, tally, i, stop_at))
            for i in range(args.concurrency)
        ]
        samples: list[Sample] = []
        arenas = args.malloc_arena_max or "glibc default"
        print(f"soak: {seconds:.0f} s, {args.concurrency} concurrent calls, server pid "
              f"{server.pid}, MALLOC_ARENA_MAX={arenas}, sampling every {args.sample_secs:g} s")
        print(f"{'t_s':>7} {'rss_mib':>8} {'fds':>5} {'calls':>6}")
        while time.monotonic() < stop_at:
            rss, fds = sample_process(server.pid)
            s = Sample(round(time.monotonic() - t0, 1), round(rss, 1), fds, tally.done)
            samples.append(s)
            print(f"{s.t:7.1f} {s.rss_mib:8.1f} {s.fds:5d} {s.calls_done:6d}", flush=True)
            await asyncio.sleep(min(args.sample_secs, max(0.0, stop_at - time.monotonic())))
        await asyncio.gather(*callers)
        await asyncio.sleep(2.0)  # let the last calls' pipelines wind down
        rss, fds = sample_process(server.pid)
        samples.append(Sample(round(time.monotonic() - t0, 1), round(rss, 1), fds, tally.done))
        health = await _healthz(port)
        verdict = evaluate(samples, args.warmup_secs, args.max_rss_growth_mib, args.max_fd_growth)
        verdict["active_calls_at_end"] = health["active_calls"]
        passed = (verdict["rss_ok"] and verdict["fd_ok"] and health["active_calls"] == 0
                  and tally.done > 0)
        elapsed = time.monotonic() - t0
        durations = {k: tally.started.get(k, 0) for k in sorted(tally.started)}
        print()
        print(f"calls: {tally.done} in {elapsed:.0f} s ({60 * tally.done / elapsed:.1f}/min); "
              f"started {durations}; ok {tally.ok}; failed {tally.failed}")
        for error in tally.errors[:5]:
            print(f"  error: {error}")
        print(f"RSS: baseline {verdict['rss_baseline_mib']} MiB -> end {verdict['rss_end_mib']} "
              f"MiB, growth {verdict['rss_growth_mib']} MiB (bound {args.max_rss_growth_mib} MiB)"
              f", slope {verdict['rss_slope_mib_per_min']} MiB/min")
        print(f"FDs: baseline {verdict['fd_baseline']} -> end {verdict['fd_end']}, growth "
              f"{verdict['fd_growth']} (bound {args.max_fd_growth}); active calls at end "
              f"{health['active_calls']}")
        print("PASS" if passed else "FAIL")
        report = {
            "seconds": round(elapsed, 1), "concurrency": args.concurrency,
            "malloc_arena_max": args.malloc_arena_max,
            "calls": tally.done, "ok": tally.ok, "failed": tally.failed,
            "errors": tally.errors, "samples": [asdict(s) for s in samples],
            "verdict": verdict, "passed": passed,
            "bounds": {"rss_growth_mib": args.max_rss_growth_mib, "fd_growth": args.max_fd_growth},
        }
        return (0 if passed else 1), report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--seconds", type=float, help="run length in seconds (wins over minutes)")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--sample-secs", type=float, default=10.0)
    parser.add_argument("--warmup-secs", type=float, default=60.0)
    parser.add_argument("--max-rss-growth-mib", type=float, default=64.0)
    parser.add_argument("--max-fd-growth", type=int, default=16)
    parser.add_argument("--ci", action="store_true", help="short run: 60 s, 5 s samples")
    parser.add_argument("--malloc-arena-max", type=int, default=2,
                        help="MALLOC_ARENA_MAX of the server process (0: glibc default)")
    parser.add_argument("--json", help="write samples and verdict here")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)  # child: serve on PORT
    parser.add_argument("--db", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        asyncio.run(_serve(args.serve, args.db))
        return 0
    if args.ci:
        args.seconds = args.seconds or 60.0
        args.sample_secs = 5.0
        args.warmup_secs = 15.0
    port = _free_port()
    tmp = tempfile.mkdtemp(prefix="stepcall-soak-")
    log_path = str(Path(tmp) / "server.log")
    with open(log_path, "w") as log:
        env = dict(os.environ)
        if args.malloc_arena_max > 0:
            env["MALLOC_ARENA_MAX"] = str(args.malloc_arena_max)
        else:
            env.pop("MALLOC_ARENA_MAX", None)
        server = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(port), "--db", f"sqlite:///{tmp}/calls.db"],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env,
        )
        try:
            status, report = asyncio.run(soak(args, server, port, log_path))
        finally:
            server.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.wait(10)
            if server.poll() is None:
                server.kill()
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return status


if __name__ == "__main__":
    sys.exit(main())
