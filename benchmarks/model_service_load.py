"""Load test of the model service: N concurrent simulated calls, time to first audio, real time.

Each simulated call is one ``pipeline.step_audio2.client.ModelServiceClient`` session at 8 kHz (as a
phone call): per turn it sends synthetic speech-like audio (paced in real time in 20 ms frames,
or in one burst), commits, asks for a response and measures

* first audio: time from ``response.create`` to the first bot audio chunk;
* real time: whether every audio chunk arrived before the audio already received would have
  finished playing (playback starts at the first chunk). A late chunk is an underrun: the caller
  would hear a gap.

It repeats M turns per call and prints, per N, p50/p95 first audio and the real-time verdict.
By default it starts an in-process model service on the tiny shaped CPU checkpoint (reference
backend; ``--backend vllm`` the real engine, ``both`` one after the other on the same checkpoint
with a side-by-side table of tokens/s and first-audio p50/p95); pass ``--url`` to load a running service (``--token`` if it needs one).

    python benchmarks/model_service_load.py                        # tiny, in-process, N=1,4,8
    python benchmarks/model_service_load.py --backend both --sessions 1,4,8,16   # vs vLLM
    python benchmarks/model_service_load.py --url ws://gpu:8090/v1/session --token T \\
        --sessions 1,8,16,32 --turns 5 --pace realtime
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.step_audio2.client import (  # noqa: E402
    AudioChunk,
    Closed,
    ErrorEvent,
    ModelServiceClient,
    ResponseDone,
    Sampling,
    SessionStart,
)

RATE = 8000
FRAME_MS = 20


def speech_like_8k(seconds: float, seed: int) -> bytes:
    """Synthetic voiced 'syllables' (harmonics of 100-220 Hz, syllable envelope) as PCM16 8 kHz."""
    rng = np.random.default_rng(seed)
    out: list[np.ndarray] = []
    total = int(seconds * RATE)
    while sum(len(x) for x in out) < total:
        n = int(RATE * rng.uniform(0.12, 0.25))
        t = np.arange(n) / RATE
        f0 = rng.uniform(100, 220)
        sig = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 12) if f0 * k < RATE / 2)
        out.append(0.25 * sig * np.sin(np.pi * np.arange(n) / n) ** 2)
        out.append(np.zeros(int(RATE * rng.uniform(0.03, 0.1))))
    pcm = np.concatenate(out)[:total]
    pcm += 0.003 * rng.standard_normal(total)
    return (np.clip(pcm, -1, 1) * 32767).astype("<i2").tobytes()


@dataclass
class TurnResult:
    """One measured turn."""

    first_audio_ms: float | None
    audio_ms: float
    realtime: bool
    underruns: int
    worst_lateness_ms: float
    status: str
    tokens: int = 0  # completion tokens (text + audio codes)


@dataclass
class PlaybackClock:
    """Tracks whether audio chunks arrive ahead of their playback time."""

    start: float | None = None
    played_until_s: float = 0.0  # seconds of audio received so far
    underruns: int = 0
    worst_lateness_ms: float = 0.0
    chunks: list[tuple[float, float]] = field(default_factory=list)

    def arrive(self, now: float, seconds: float, slack_ms: float = 0.0) -> None:
        """A chunk of ``seconds`` audio arrived at ``now`` (``slack_ms``: tolerated lateness)."""
        if self.start is None:
            self.start = now
        else:
            due = self.start + self.played_until_s  # when the earlier audio runs out
            lateness = (now - due) * 1000.0
            if lateness > slack_ms:
                self.underruns += 1
                self.worst_lateness_ms = max(self.worst_lateness_ms, lateness)
                self.start += now - due  # the gap shifts the rest of the playback
        self.played_until_s += seconds
        self.chunks.append((now, seconds))


async def run_call(
    url: str,
    token: str | None,
    call_no: int,
    turns: int,
    audio_secs: float,
    pace: str,
    results: list[TurnResult],
    slack_ms: float = 0.0,
) -> None:
    client = ModelServiceClient(url, token=token, open_timeout=60.0)
    await client.connect(
        SessionStart(
            call_id=f"load-{call_no}",
            system_prompt="You are the front desk of a small hotel. Answer briefly.",
            input_sample_rate=RATE,
            output_sample_rate=RATE,
            sampling=Sampling(temperature=0.0, repetition_penalty=1.0),
        )
    )
    events: asyncio.Queue = asyncio.Queue()

    async def read() -> None:
        async for ev in client.events():
            await events.put(ev)

    reader = asyncio.create_task(read())
    try:
        for turn in range(turns):
            audio = speech_like_8k(audio_secs, seed=call_no * 1000 + turn)
            if pace == "realtime":
                step = RATE * FRAME_MS // 1000 * 2
                t_start = time.perf_counter()
                for k, i in enumerate(range(0, len(audio), step)):
                    await client.send_audio(audio[i : i + step])
                    delay = t_start + (k + 1) * FRAME_MS / 1000 - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
            else:
                await client.send_audio(audio)
            await client.commit()
            t0 = time.perf_counter()
            await client.create_response()
            results.append(await measure_turn(events, t0, slack_ms))
    finally:
        await client.close()
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await reader


async def measure_turn(events: asyncio.Queue, t0: float, slack_ms: float = 0.0) -> TurnResult:
    clock = PlaybackClock()
    first: float | None = None
    while True:
        ev = await asyncio.wait_for(events.get(), 300.0)
        now = time.perf_counter()
        if isinstance(ev, AudioChunk):
            if first is None:
                first = now
            clock.arrive(now, len(ev.pcm) / 2 / ev.sample_rate, slack_ms)
        elif isinstance(ev, ResponseDone):
            return TurnResult(
                first_audio_ms=None if first is None else (first - t0) * 1000.0,
                audio_ms=clock.played_until_s * 1000.0,
                realtime=clock.underruns == 0 and first is not None,
                underruns=clock.underruns,
                worst_lateness_ms=clock.worst_lateness_ms,
                status=ev.status,
                tokens=int((ev.usage or {}).get("completion_tokens") or 0),
            )
        elif isinstance(ev, ErrorEvent) and ev.fatal:
            raise RuntimeError(f"model service error: {ev.code}: {ev.message}")
        elif isinstance(ev, Closed):
            raise RuntimeError(f"model service closed the session: {ev.reason}")


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


async def run_level(url: str, token: str | None, n: int, args: argparse.Namespace) -> dict:
    results: list[TurnResult] = []
    t = time.perf_counter()
    await asyncio.gather(
        *(
            run_call(url, token, i, args.turns, args.audio_secs, args.pace, results, args.slack_ms)
            for i in range(n)
        )
    )
    wall = time.perf_counter() - t
    firsts = [r.first_audio_ms for r in results if r.first_audio_ms is not None]
    rt = sum(r.realtime for r in results)
    return {
        "n": n,
        "turns": len(results),
        "p50": pct(firsts, 50),
        "p95": pct(firsts, 95),
        "realtime": rt,
        "underruns": sum(r.underruns for r in results),
        "worst_late": max((r.worst_lateness_ms for r in results), default=0.0),
        "audio_s": statistics.fmean(r.audio_ms for r in results) / 1000 if results else 0.0,
        "bad_status": sum(r.status != "completed" for r in results),
        "wall": wall,
        "tok_s": sum(r.tokens for r in results) / wall if wall > 0 else 0.0,
    }


def build_checkpoint(tmp: Path) -> Path:
    """The tiny shaped checkpoint (a scripted spoken reply), head_dim 32 so vLLM runs it too."""
    from harness.checkpoints.tiny_checkpoint import build_tiny_checkpoint, default_script
    from harness.checkpoints.tiny_tokenizer import build_tiny_tokenizer
    from model_service.stepaudio2.tokenizer import StepAudio2Tokenizer

    build_tiny_tokenizer(tmp / "tok")
    tok = StepAudio2Tokenizer.from_pretrained(tmp / "tok")
    script = default_script(tok, text="Hello! Thank you for calling, how can I help you today?")
    return build_tiny_checkpoint(tmp / "ckpt", script=script)


def load(backend: str, ckpt: Path, max_sessions: int):
    if backend == "reference":
        from model_service.backends.reference import load_reference_backend

        return load_reference_backend(ckpt)
    from model_service.backends.vllm import EngineOptions, load_vllm_backend

    return load_vllm_backend(
        ckpt, "auto", "float32", options=EngineOptions(max_num_seqs=max(8, max_sessions))
    )


@contextlib.asynccontextmanager
async def in_process_service(backend_name: str, ckpt: Path, max_sessions: int) -> AsyncIterator[str]:
    """A model service on ``ckpt`` with the named backend (reference or vllm), in-process."""
    from model_service.server import create_app, serving

    backend = await asyncio.to_thread(load, backend_name, ckpt, max_sessions)
    app = create_app(backend, token=None, max_sessions=max_sessions)
    try:
        async with serving(app) as url:
            yield url
    finally:
        await backend.close()


async def measure(url: str, args: argparse.Namespace, levels: list[int]) -> list[dict]:
    if args.warmup:
        await run_level(url, args.token, 1, argparse.Namespace(**{**vars(args), "turns": 1}))
    return [await run_level(url, args.token, n, args) for n in levels]


def print_rows(where: str, rows: list[dict], args: argparse.Namespace) -> None:
    print(
        f"model service load: {where}; {args.turns} turns/call, {args.audio_secs:g} s user "
        f"audio at 8 kHz, pace {args.pace}, slack {args.slack_ms:g} ms"
    )
    print(
        f"{'N':>3} {'turns':>5} {'first audio p50':>16} {'p95':>9} {'tok/s':>7} {'real-time':>10} "
        f"{'underruns':>9} {'worst gap':>9} {'reply s':>7} {'verdict':>8}"
    )
    for r in rows:
        verdict = "OK" if r["realtime"] == r["turns"] and not r["bad_status"] else "NOT RT"
        print(
            f"{r['n']:>3} {r['turns']:>5} {r['p50']:>13.0f} ms {r['p95']:>6.0f} ms "
            f"{r['tok_s']:>7.0f} {r['realtime']:>5}/{r['turns']:<4} {r['underruns']:>9} "
            f"{r['worst_late']:>6.1f} ms {r['audio_s']:>7.2f} {verdict:>8}"
        )


async def amain(args: argparse.Namespace) -> int:
    levels = [int(x) for x in args.sessions.split(",") if x.strip()]
    if args.url:
        print_rows(args.url, await measure(args.url, args, levels), args)
        return 0
    backends = ["reference", "vllm"] if args.backend == "both" else [args.backend]
    table: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = build_checkpoint(Path(tmp))
        for name in backends:
            async with in_process_service(name, ckpt, max(levels)) as url:
                table[name] = await measure(url, args, levels)
            print_rows(f"in-process {name} backend, tiny shaped checkpoint", table[name], args)
            print()
    if len(table) == 2:
        ref, vl = table["reference"], table["vllm"]
        print("side by side (vllm / reference):")
        print(f"{'N':>3} {'tok/s ref':>9} {'tok/s vllm':>10} {'ratio':>6} "
              f"{'p50 ref':>8} {'p50 vllm':>8} {'p95 ref':>8} {'p95 vllm':>8}")  # fmt: skip
        for r, v in zip(ref, vl, strict=True):
            ratio = v["tok_s"] / r["tok_s"] if r["tok_s"] else float("nan")
            print(
                f"{r['n']:>3} {r['tok_s']:>9.0f} {v['tok_s']:>10.0f} {ratio:>5.2f}x "
                f"{r['p50']:>5.0f} ms {v['p50']:>5.0f} ms {r['p95']:>5.0f} ms {v['p95']:>5.0f} ms"
            )
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", help="model service session URL (default: start one in-process)")
    ap.add_argument("--token", default=None, help="model service token")
    ap.add_argument(
        "--backend",
        choices=("reference", "vllm", "both"),
        default="reference",
        help="in-process backend(s) on the same tiny checkpoint (both: side-by-side table)",
    )
    ap.add_argument("--sessions", default="1,4,8", help="comma-separated concurrency levels")
    ap.add_argument("--turns", type=int, default=3, help="turns per simulated call")
    ap.add_argument("--audio-secs", type=float, default=2.0, help="user audio per turn")
    ap.add_argument("--pace", choices=("realtime", "burst"), default="realtime")
    ap.add_argument("--slack-ms", type=float, default=0.0, help="tolerated chunk lateness")
    ap.add_argument("--no-warmup", dest="warmup", action="store_false")
    ap.add_argument("--verbose", action="store_true", help="keep the service's INFO/DEBUG logs")
    args = ap.parse_args(argv)
    if not args.verbose:
        from loguru import logger

        logger.remove()
        logger.add(sys.stderr, level="WARNING")
    return asyncio.run(amain(args))


if __name__ == "__main__":
    raise SystemExit(main())
