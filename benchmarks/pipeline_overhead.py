"""Pipeline overhead of one call: end of the caller's speech -> first bot audio out of the transport.

The call pipeline is the production one (``bots.call.build_call``: echo guard, Silero VAD, the
minimum-duration start strategy, Smart Turn v3, StepAudio2Service, output transport, ...). The
model service is a stand-in that answers instantly (``harness.canned_model_service``: protocol v1
over a real loopback WebSocket, canned PCM), run in a child process so its CPU is not counted.
The caller is a loopback phone playing flite speech in real time.

Per turn: ``overhead = first audio write - end of speech - VAD stop_secs``, where the end of
speech is the end of the last 10 ms frame above 300 RMS. It splits into: VAD's end of speech (its
stop event minus stop_secs) against that acoustic end; the wait for Smart Turn's verdict after
VAD's stop (~0 when the early inference during the pause answered); and the rest of the bot
process (aggregators, WebSocket hops to the stand-in, output transport). Turns Smart Turn judged
INCOMPLETE (robotic flite prosody; they wait for its silence fallback) are counted and left out
of the latency numbers.

CPU: this process's CPU time over the calls' wall time, less what the simulated phone itself
spent, timed in place (``LoopbackPhone.own_cpu_secs``: making the caller's frames, keeping the
bot's). The phone delivers what the Twilio input does (20 ms ``CallerAudioFrame``s batched by
``pipeline.call_audio.batcher``: up to 200 ms of a provably quiet line held while no turn is
open, ``--no-quiet-hold`` for none; ~80-100 ms of the caller's loud speech held in a turn while
the bot is idle, ``--no-speech-hold`` for none; else pairs while the VAD is quiet or the speech
steady). Its 50 Hz wake-ups stand for that input's socket reads and stay in the bot's share;
while a hold fills it is not woken for the frames, as the Twilio input leaves its socket unread
then (``bots.call.read_pause``: the whole hold while the bot is idle, up to the VAD's
``start_lead_secs`` while it answers), and takes them at once when the pause ends
(``--read-pause-idle-only``: only while the bot is idle, the rule before; ``--no-read-pause``:
woken for every frame). The bot's audio is written in 100 ms chunks as on the Twilio call
(``--out-10ms-chunks 4``: Pipecat's default 40 ms). The line is digital silence between the
caller's words unless ``--noise-dbfs`` adds white noise. The call runs as in the bot server: on
uvloop (what uvicorn picks) with ``stepcall.runtime.realtime`` installed (``--stdlib-loop`` for
asyncio's own loop). The event loop's CPU is also split by what the call was doing
(``phase_cpu``: the loop's clock read every 0.1 s by a thread of its own, whose CPU is left
out, so the measurement does not wake the loop; quiet, the caller speaking, the turn's end, the
bot speaking). Smart Turn runs on the stand-in's turn model as on the model service
(``--turn-model-at bot``: on the bot's pool); the stand-in's CPU for it is printed apart.

    .venv/bin/python benchmarks/pipeline_overhead.py [--turns 12] [--json out.json]
        [--noise-dbfs -65] [--reply-secs 3] [--no-quiet-hold] [--no-read-pause]
        [--read-pause-idle-only] [--no-speech-hold]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing as mp
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RATE = 8000
UTTERANCE = "What is the weather like in Paris today?"
PERIOD_SECS = 4.5  # one caller turn every PERIOD_SECS
REPLY_SECS = 0.4
#: The utterance's length in flite (2.3 s) with margin: a turn comes after the last answer.
UTTERANCE_SECS_MAX = 2.5


def _serve_canned(
    port_queue: Any, reply_secs: float, turn_model: bool, done: Any, stats_queue: Any
) -> None:
    """Child process: the instant model-service stand-in, with the model service's turn model
    (``model_service.turn_checks``, Smart Turn on this child's CPU) unless ``turn_model`` is
    False. Once ``done`` is set it puts its turn checks and their inferences' CPU seconds on
    ``stats_queue``."""
    from harness.canned_model_service import CannedModelService
    from model_service.turn_checks import TurnModel

    t = np.arange(int(reply_secs * RATE)) / RATE
    pcm = (3000 * np.sin(2 * np.pi * 300 * t)).astype(np.int16).tobytes()
    model = TurnModel(1) if turn_model else None
    if model is not None:
        model.warm_up()

    async def main() -> None:
        async with CannedModelService(pcm, turn_model=model).serving() as url:
            port_queue.put(url)
            await asyncio.to_thread(done.wait)
            stats_queue.put(
                (model.checks, model.inference_cpu_secs) if model is not None else (0, 0.0)
            )
            await asyncio.Event().wait()

    asyncio.run(main())


def thread_cpu() -> dict[str, float]:
    """CPU seconds of this process so far by thread kind (Linux /proc; {} elsewhere): the event
    loop (main thread), the Smart Turn pool, every other thread."""
    import os

    from stepcall.audio.inference import inference_pool

    tick = os.sysconf("SC_CLK_TCK")
    out = {"event_loop": 0.0, "smart_turn": 0.0, "other": 0.0}
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return {}
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended meanwhile
        secs = (int(fields[11]) + int(fields[12])) / tick  # utime + stime
        kind = ("event_loop" if int(tid) == os.getpid()
                else "smart_turn" if int(tid) in inference_pool().native_ids else "other")
        out[kind] += secs
    return out


def voiced_end(pcm: np.ndarray, threshold: float = 300.0) -> float:
    """Seconds from the start of ``pcm`` to the end of its last 10 ms frame above ``threshold`` RMS."""
    n = pcm.size // 80
    frames = pcm[: n * 80].astype(np.float32).reshape(n, 80)
    loud = np.flatnonzero(np.sqrt((frames**2).mean(axis=1)) > threshold)
    return (int(loud[-1]) + 1) * 80 / RATE


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


async def run_call(
    url: str,
    turns: int,
    *,
    period: float = PERIOD_SECS,
    noise_dbfs: float | None = None,
    quiet_hold: bool = True,
    read_pause: str = "call",
    out_10ms_chunks: int = 10,
    speech_hold: bool = True,
    turn_model_at: str = "service",
    sample_in_loop: bool = False,
) -> dict[str, Any]:
    """One call of ``turns`` caller turns, one every ``period`` seconds. ``read_pause``: "call"
    (``bots.call.read_pause``), "idle" (only while the bot is idle), "off"."""
    from pipecat.frames.frames import MetricsFrame, VADUserStoppedSpeakingFrame
    from pipecat.metrics.metrics import TurnMetricsData
    from pipecat.observers.base_observer import BaseObserver, FramePushed
    from pipecat.workers.runner import WorkerRunner

    from bots.call import CallInfo, build_call, call_worker
    from bots.profile import BotProfile
    from harness.loopback_phone import LoopbackPhone, Say
    from stepcall.audio.speech import synthesize
    from stepcall.settings import Settings

    speech = synthesize(UTTERANCE, RATE)
    end_in_utt = voiced_end(speech)
    offsets = [1.0 + k * period for k in range(turns)]
    phone = LoopbackPhone(
        [Say(speech, off) for off in offsets],
        noise_dbfs=noise_dbfs,
        out_10ms_chunks=out_10ms_chunks,
    )
    prof = BotProfile(name="bench", vad_stop_secs=0.2, smart_turn=True)
    settings = Settings(model_url=url, turn_model_at=turn_model_at)
    pipeline, parts = build_call(phone, prof, settings, CallInfo("bench", "bench"))
    vad = parts.vad
    assert vad is not None
    # as the Twilio call does (bots.call)
    service, call_pause = parts.service, parts.read_pause
    assert call_pause is not None
    busy_pauses = 0

    def pause_limit() -> float:
        """The call's rule (or the one before: the bot idle only), counting the pauses it
        allows while the bot answers (asked only for a hold with room for a pause, which the
        VAD's start lead always leaves)."""
        nonlocal busy_pauses
        if read_pause == "idle":
            return math.inf if service.bot_idle else 0.0
        secs = call_pause()
        busy_pauses += secs < math.inf
        return secs

    phone.mic.coalesce_while(
        lambda: vad.steady,
        quiet=parts.quiet_hold if quiet_hold else None,
        pause_reading=pause_limit if read_pause != "off" else None,
        speech=parts.speech_hold if speech_hold else None,
    )

    class TurnModel(BaseObserver):
        """Smart Turn verdicts and inference times, in order."""

        wants_audio = False  # the measurement's observer: audio pushes are not queued to it

        def __init__(self) -> None:
            super().__init__()
            self.seen: set[int] = set()
            self.results: list[tuple[float, bool, float]] = []
            self.vad_stops: list[float] = []

        async def on_push_frame(self, data: FramePushed) -> None:
            f = data.frame
            if isinstance(f, VADUserStoppedSpeakingFrame) and f.id not in self.seen:
                self.seen.add(f.id)
                if f.broadcast_sibling_id not in self.seen:
                    self.seen.add(f.broadcast_sibling_id or -1)
                    self.vad_stops.append(time.monotonic())
            if isinstance(data.frame, MetricsFrame) and data.frame.id not in self.seen:
                self.seen.add(data.frame.id)
                for m in data.frame.data:
                    if isinstance(m, TurnMetricsData):
                        self.results.append(
                            (time.monotonic(), m.is_complete, float(m.e2e_processing_time_ms))
                        )

    turn_model = TurnModel()
    worker = call_worker(pipeline, parts, "bench", observers=[turn_model])
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    task = asyncio.create_task(runner.run())
    await asyncio.sleep(0.5)  # let it start (not measured)
    cpu0, wall0, threads0 = time.process_time(), time.monotonic(), thread_cpu()
    phone0 = phone.own_cpu_secs
    if sample_in_loop:
        samples: list[tuple[float, float, float, float]] = []
        in_loop = asyncio.create_task(sample_loop_cpu(samples, phone))
    else:
        sampler = LoopCpuSampler(phone)
        sampler.start()
    await asyncio.sleep(measured_secs(turns, period))
    if sample_in_loop:
        in_loop.cancel()
        sampler_cpu = 0.0
    else:
        samples, sampler_cpu = sampler.finish()
    cpu = time.process_time() - cpu0 - sampler_cpu
    wall = time.monotonic() - wall0
    phone_cpu = phone.own_cpu_secs - phone0
    threads = {k: 100.0 * (v - threads0.get(k, 0.0)) / wall for k, v in thread_cpu().items()}
    if threads:
        threads["other"] = max(0.0, threads["other"] - 100.0 * sampler_cpu / wall)
    await worker.cancel()
    await asyncio.wait_for(task, 10.0)
    turn_analyzer = smart_turn_analyzer(parts)
    batcher = phone.mic.batcher

    writes = [t for t, _ in phone.speaker.chunks]
    says = [
        (phone.mic.started_at + off, phone.mic.started_at + off + speech.size / RATE)
        for off in offsets
    ]
    heard = [(t, t + x.size / RATE) for t, x in phone.speaker.chunks]
    overhead, turn_ms, incomplete = [], [], 0
    vad_lag, turn_wait, after_turn = [], [], []
    for off in offsets:
        speech_end = phone.mic.started_at + off + end_in_utt
        after = [t for t in writes if t > speech_end]
        verdicts = [r for r in turn_model.results if r[0] > speech_end]
        stops = [t for t in turn_model.vad_stops if t > speech_end]
        if not after or not verdicts or not stops:
            continue
        verdict_at, complete, e2e_ms = verdicts[0]
        if not complete:
            incomplete += 1
            continue
        overhead.append((after[0] - speech_end - prof.vad_stop_secs) * 1000.0)
        turn_ms.append(e2e_ms)
        # VAD's own end of speech (its stop event minus stop_secs) against the acoustic end
        vad_lag.append((stops[0] - prof.vad_stop_secs - speech_end) * 1000.0)
        turn_wait.append((verdict_at - stops[0]) * 1000.0)  # Smart Turn on the critical path
        after_turn.append((after[0] - verdict_at) * 1000.0)  # aggregators, service, transport
    return {
        "turns": turns,
        "measured_turns": len(overhead),
        "smart_turn_incomplete": incomplete,
        "overhead_ms_p50": pct(overhead, 50),
        "overhead_ms_p95": pct(overhead, 95),
        "vad_end_lag_ms_p50": pct(vad_lag, 50),
        "vad_end_lag_ms_p95": pct(vad_lag, 95),
        "smart_turn_wait_ms_p50": pct(turn_wait, 50),
        "smart_turn_wait_ms_p95": pct(turn_wait, 95),
        "after_turn_end_ms_p50": pct(after_turn, 50),
        "after_turn_end_ms_p95": pct(after_turn, 95),
        "smart_turn_inference_ms_p50": pct(turn_ms, 50),
        "smart_turn_inference_ms_p95": pct(turn_ms, 95),
        "cpu_percent_of_core": 100.0 * cpu / wall,
        "phone_cpu_percent_of_core": 100.0 * phone_cpu / wall,
        "caller_frames_pushed": phone.mic.frames_pushed,
        "caller_frames_coalesced": phone.mic.frames_coalesced,
        "caller_frames_quiet_held": batcher.quiet_frames if batcher is not None else 0,
        "caller_frames_speech_held": batcher.speech_frames if batcher is not None else 0,
        "period_secs": period,
        "noise_dbfs": noise_dbfs,
        "quiet_hold": quiet_hold,
        "speech_hold": speech_hold,
        "read_pause": read_pause,
        "out_10ms_chunks": out_10ms_chunks,
        "read_pauses": phone.mic.read_pauses,
        "read_pauses_while_bot_busy": busy_pauses,
        "read_paused_secs": phone.mic.read_paused_secs,
        "echo_checks": parts.echo_guard.checks,
        "cpu_wall_secs": wall,
        "thread_cpu_percent_of_core": threads,
        "overhead_ms": overhead,
        "smart_turn_early_hits": turn_analyzer.early_hits,
        "smart_turn_late_runs": turn_analyzer.late_runs,
        "smart_turn_early_runs": turn_analyzer.early_runs,
        "smart_turn_judged_by_service": turn_analyzer.judged,
        "smart_turn_run_in_bot": turn_analyzer.local_runs,
        "turn_model_at": turn_model_at,
        "phase_sampler": "event loop" if sample_in_loop else "own thread",
        "phase_sampler_cpu_percent_of_core": 100.0 * sampler_cpu / wall,
        "event_loop_by_phase": phase_cpu(samples, says, heard),
    }


#: How often the phase breakdown reads the event loop's CPU clock (a wake-up of ~10 us each).
PHASE_SAMPLE_SECS = 0.1


def thread_sleeps(native_id: int) -> float:
    """How many times the thread ``native_id`` of this process has gone to sleep so far (its
    voluntary context switches, Linux /proc; NaN elsewhere): for an event loop, its wake-ups,
    which on a VM cost far more than the work they bring (``benchmarks/input_wakeups.py``)."""
    try:
        with open(f"/proc/self/task/{native_id}/status") as f:
            for line in f:
                if line.startswith("voluntary_ctxt_switches:"):
                    return float(line.split()[1])
    except OSError:
        pass
    return math.nan


class LoopCpuSampler(threading.Thread):
    """Reads the event loop thread's CPU clock every ``PHASE_SAMPLE_SECS`` from a thread of its
    own, so the measurement does not wake the loop (on this VM a wake-up after an idle gap costs
    ~40-80 us: ten a second were ~0.1 % of a core in the bot's figure). Create it on the loop's
    thread; :meth:`finish` returns the samples and this thread's own CPU seconds, which are
    left out of the bot's figure."""

    def __init__(self, phone: Any) -> None:
        super().__init__(name="phase-sampler", daemon=True)
        self._clock = time.pthread_getcpuclockid(threading.get_ident())
        self._loop_tid = threading.get_native_id()
        self._phone = phone
        self._done = threading.Event()
        self.samples: list[tuple[float, float, float, float]] = []
        self.own_cpu_secs = 0.0

    def run(self) -> None:
        while True:
            self.samples.append(
                (
                    time.monotonic(),
                    time.clock_gettime(self._clock),
                    self._phone.own_cpu_secs,
                    thread_sleeps(self._loop_tid),
                )
            )
            if self._done.wait(PHASE_SAMPLE_SECS):
                break
        self.own_cpu_secs = time.thread_time()

    def finish(self) -> tuple[list[tuple[float, float, float, float]], float]:
        """Stop sampling: (the samples, the sampler thread's CPU seconds)."""
        self._done.set()
        self.join()
        return self.samples, self.own_cpu_secs


async def sample_loop_cpu(samples: list[tuple[float, float, float, float]], phone: Any) -> None:
    """Every ``PHASE_SAMPLE_SECS``: (monotonic, this thread's CPU, the phone's own CPU, its
    sleeps so far), read on the event loop itself (``--sample-in-loop``: the way before
    :class:`LoopCpuSampler`)."""
    tid = threading.get_native_id()
    while True:
        samples.append((time.monotonic(), time.thread_time(), phone.own_cpu_secs, thread_sleeps(tid)))
        await asyncio.sleep(PHASE_SAMPLE_SECS)


def phase_cpu(
    samples: list[tuple[float, ...]],
    says: list[tuple[float, float]],
    bot_audio: list[tuple[float, float]],
) -> dict[str, dict[str, float]]:
    """The event loop's CPU (less the phone's own work) by what the call was doing.

    ``samples``: (monotonic, the loop's CPU, the phone's own CPU[, the loop's sleeps so far]).
    ``says``: (start, end) of each caller utterance; ``bot_audio``: (start, end) of each chunk
    the caller heard. Each sampling interval counts for the phase at its midpoint: the caller
    speaking, the turn's end (from the end of an utterance to the bot's first audio after it),
    the bot speaking, or quiet (neither). Returns per phase its share of the call's wall time,
    its CPU in % of a core while in it, its part of the call's average (% of a core), and, when
    the samples count the loop's sleeps, its wake-ups a second while in it (the phone's
    included: they stand for the input's socket reads).
    """
    ends = sorted(end for _, end in says)
    starts = sorted(s for s, _ in bot_audio)

    def phase(t: float) -> str:
        if any(s <= t < e for s, e in says):
            return "caller speaking"
        if any(s <= t < e for s, e in bot_audio):
            return "bot speaking"
        before = [e for e in ends if e <= t]
        if before:
            answered = [s for s in starts if s >= before[-1]]
            if not answered or t < answered[0]:
                return "turn end"
        return "quiet"

    wall: dict[str, float] = {}
    cpu: dict[str, float] = {}
    sleeps: dict[str, float] = {}
    for a, b in zip(samples, samples[1:], strict=False):
        k = phase((a[0] + b[0]) / 2)
        wall[k] = wall.get(k, 0.0) + (b[0] - a[0])
        cpu[k] = cpu.get(k, 0.0) + max(0.0, (b[1] - a[1]) - (b[2] - a[2]))
        if len(a) > 3:
            sleeps[k] = sleeps.get(k, 0.0) + (b[3] - a[3])
    total = sum(wall.values()) or 1.0
    out: dict[str, dict[str, float]] = {}
    for k in sorted(wall, key=lambda k: -cpu[k]):
        out[k] = {
            "wall_share": wall[k] / total,
            "cpu_percent_of_core": 100.0 * cpu[k] / wall[k] if wall[k] else 0.0,
            "part_of_call_percent": 100.0 * cpu[k] / total,
        }
        if k in sleeps and math.isfinite(sleeps[k]) and wall[k]:
            out[k]["wakeups_per_sec"] = sleeps[k] / wall[k]
    return out


def smart_turn_analyzer(parts: Any) -> Any:
    """The call's Smart Turn analyzer (its early/late inference counts)."""
    assert parts.aggregators is not None
    strategies = parts.aggregators.user()._params.user_turn_strategies
    return strategies.stop[0]._turn_analyzer


def measured_secs(turns: int, period: float = PERIOD_SECS) -> float:
    """The call's CPU window: from 0.5 s after its start to the end of its last period."""
    return 1.0 + (turns - 1) * period + period - 0.5


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--turns", type=int, default=12)
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    ap.add_argument("--stdlib-loop", action="store_true", help="asyncio's loop, not uvloop")
    ap.add_argument(
        "--vad-runtime", choices=["numpy", "onnxruntime"], default="numpy",
        help="how Silero's network runs (stepcall.audio.inference.configure_vad_runtime)",
    )
    ap.add_argument(
        "--reply-secs", type=float, default=REPLY_SECS,
        help="length of the stand-in's answer (the caller's next turn waits for it to end)",
    )
    ap.add_argument(
        "--noise-dbfs", type=float, default=None,
        help="white line noise on the caller's audio, dBFS RMS (default: digital silence)",
    )
    ap.add_argument(
        "--out-10ms-chunks", type=int, default=None,
        help="the bot's audio written in chunks of this many 10 ms (default: as the Twilio call, "
        "bots.call.PHONE_AUDIO_OUT_10MS_CHUNKS; Pipecat's default is 4)",
    )
    ap.add_argument(
        "--no-read-pause", action="store_true",
        help="the phone input is woken for every frame also during quiet holds (for A/B runs)",
    )
    ap.add_argument(
        "--read-pause-idle-only", action="store_true",
        help="read pauses only while the bot is idle, none while it answers (the rule before "
        "bots.call.read_pause; for A/B runs)",
    )
    ap.add_argument(
        "--no-speech-hold", action="store_true",
        help="the phone input never holds the caller's speech back in a turn (for A/B runs)",
    )
    ap.add_argument(
        "--no-quiet-hold", action="store_true",
        help="the phone input never holds quiet audio back (pairs only; for A/B runs)",
    )
    ap.add_argument(
        "--sample-in-loop", action="store_true",
        help="read the loop's CPU for the phase split on the loop itself (10 wake-ups a second "
        "counted as the bot's; the way before the sampler thread, for A/B runs)",
    )
    ap.add_argument(
        "--turn-model-at", choices=["service", "bot"], default="service",
        help="where Smart Turn runs: the stand-in's turn model (turn.check, as the model "
        "service does; default) or the bot's own pool (STEPCALL_TURN_MODEL_AT=bot)",
    )
    args = ap.parse_args(argv)
    if args.turns < 1:
        ap.error("--turns must be >= 1")
    if args.reply_secs <= 0:
        ap.error("--reply-secs must be > 0")
    if args.out_10ms_chunks is not None and args.out_10ms_chunks < 1:
        ap.error("--out-10ms-chunks must be >= 1")
    # a caller turn every PERIOD_SECS, or later so each waits out a longer answer (plus 1 s)
    period = max(PERIOD_SECS, UTTERANCE_SECS_MAX + 0.5 + args.reply_secs + 1.0)

    from loguru import logger

    from bots.call import PHONE_AUDIO_OUT_10MS_CHUNKS

    out_chunks = args.out_10ms_chunks or PHONE_AUDIO_OUT_10MS_CHUNKS
    logger.remove()
    logger.add(sys.stderr, level="WARNING")

    ctx = mp.get_context("spawn")
    q, stats_q, done = ctx.Queue(), ctx.Queue(), ctx.Event()
    server = ctx.Process(
        target=_serve_canned,
        args=(q, args.reply_secs, args.turn_model_at == "service", done, stats_q),
        daemon=True,
    )
    server.start()
    try:
        url = q.get(timeout=30)
        from stepcall.runtime.realtime import install_wait_for

        install_wait_for()  # as create_app does in the bot server
        from stepcall.audio.inference import configure_vad_runtime

        configure_vad_runtime(args.vad_runtime)
        run = asyncio.run
        if not args.stdlib_loop:
            import uvloop

            run = uvloop.run
        res = run(
            run_call(
                url,
                args.turns,
                period=period,
                noise_dbfs=args.noise_dbfs,
                quiet_hold=not args.no_quiet_hold,
                read_pause=(
                    "off" if args.no_read_pause
                    else "idle" if args.read_pause_idle_only else "call"
                ),
                out_10ms_chunks=out_chunks,
                speech_hold=not args.no_speech_hold,
                turn_model_at=args.turn_model_at,
                sample_in_loop=args.sample_in_loop,
            )
        )
        done.set()
        checks, check_cpu = stats_q.get(timeout=10)
        res["service_turn_checks"] = checks
        res["service_turn_model_cpu_percent_of_core"] = 100.0 * check_cpu / res["cpu_wall_secs"]
        res["service_turn_model_cpu_ms_per_check"] = 1000.0 * check_cpu / checks if checks else 0
        from benchmarks.load_test import calibration_us

        res["calibration_silero_window_us"] = round(calibration_us(), 1)
        res["event_loop"] = "asyncio" if args.stdlib_loop else "uvloop"
        res["vad_runtime"] = args.vad_runtime
    finally:
        server.terminate()
        server.join(5)

    print(f"machine: Silero window {res['calibration_silero_window_us']:.0f} us (calibration)")
    print(
        f"pipeline overhead (end of speech -> first audio out, minus VAD stop 0.2 s), "
        f"{res['measured_turns']}/{res['turns']} turns "
        f"({res['smart_turn_incomplete']} judged incomplete by Smart Turn, left out):"
    )
    rows = [
        ("total", "overhead_ms"),
        ("  VAD end of speech after the acoustic end", "vad_end_lag_ms"),
        ("  Smart Turn wait after VAD's stop", "smart_turn_wait_ms"),
        ("  turn end -> first audio out", "after_turn_end_ms"),
        ("Smart Turn inference (off the path when early)", "smart_turn_inference_ms"),
    ]
    for label, key in rows:
        print(f"  {label:48s} p50 {res[key + '_p50']:7.1f} ms  p95 {res[key + '_p95']:7.1f} ms")
    print(
        f"  Smart Turn verdicts from the early inference: {res['smart_turn_early_hits']}, "
        f"from an inference after VAD's stop: {res['smart_turn_late_runs']}; "
        f"early inferences started: {res['smart_turn_early_runs']}"
    )
    print(
        f"  Smart Turn inferences judged by the model service's turn model: "
        f"{res['smart_turn_judged_by_service']}, run in the bot: {res['smart_turn_run_in_bot']} "
        f"(turn model at: {res['turn_model_at']}; the inference times above are the bot's wait, "
        f"round trip included)"
    )
    bot_cpu = res["cpu_percent_of_core"] - res["phone_cpu_percent_of_core"]
    res["bot_cpu_percent_of_core"] = bot_cpu
    print(
        f"CPU per call ({res['event_loop']}, Silero on {res['vad_runtime']}): "
        f"{res['cpu_percent_of_core']:.2f}% of a core over {res['cpu_wall_secs']:.0f} s, of which "
        f"the simulated phone's own work {res['phone_cpu_percent_of_core']:.2f}%: "
        f"bot pipeline {bot_cpu:.2f}%"
    )
    if res["service_turn_checks"]:
        print(
            f"  not in that figure: the stand-in's turn model, {res['service_turn_checks']} "
            f"checks at {res['service_turn_model_cpu_ms_per_check']:.1f} ms of CPU each, "
            f"{res['service_turn_model_cpu_percent_of_core']:.2f}% of a core on the model "
            f"service's host"
        )
    threads = res["thread_cpu_percent_of_core"]
    if threads:  # /proc counts in clock ticks (10 ms): read these to ~0.1 %
        loop_bot = threads["event_loop"] - res["phone_cpu_percent_of_core"]
        print(
            f"  by thread: event loop {threads['event_loop']:.2f}% (the bot's share "
            f"{loop_bot:.2f}% after the phone), Smart Turn pool {threads['smart_turn']:.2f}%, "
            f"other threads {threads['other']:.2f}%"
        )
    print(
        "  the event loop's CPU (less the phone's own work) by what the call was doing "
        f"(read by the sampler on its {res['phase_sampler']}, "
        f"{res['phase_sampler_cpu_percent_of_core']:.2f}% of a core left out):"
    )
    for name, ph in res["event_loop_by_phase"].items():
        wakeups = ph.get("wakeups_per_sec")
        print(
            f"    {name:16s} {100 * ph['wall_share']:4.0f}% of the call, "
            f"{ph['cpu_percent_of_core']:5.2f}% of a core while in it: "
            f"{ph['part_of_call_percent']:.2f}% of the call's average"
            + (f"; {wakeups:.0f} wake-ups a second" if wakeups is not None else "")
        )
    pushed, saved = res["caller_frames_pushed"], res["caller_frames_coalesced"]
    noise = "digital silence" if args.noise_dbfs is None else f"{args.noise_dbfs:g} dBFS noise"
    print(
        f"  caller audio pushes: {pushed} ({saved} fewer than 20 ms frames; "
        f"{res['caller_frames_quiet_held']} frames held as quiet, quiet hold "
        f"{'on' if res['quiet_hold'] else 'off'}; {res['caller_frames_speech_held']} as speech, "
        f"speech hold {'on' if res['speech_hold'] else 'off'}); line: {noise}; "
        f"a turn every {period:.1f} s, "
        f"answers {args.reply_secs:g} s in {10 * out_chunks} ms chunks; "
        f"echo correlations: {res['echo_checks']}"
    )
    rule = {"call": "", "idle": " (only while the bot is idle)", "off": " (off)"}
    print(
        f"  read pauses (the input left unread while a hold filled): {res['read_pauses']}, "
        f"{res['read_pauses_while_bot_busy']} of them while the bot answered, "
        f"{res['read_paused_secs']:.1f} s in all" + rule[res["read_pause"]]
    )
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
