"""``stepcall load``: N concurrent simulated phone calls against one bot server, measured.

Each call is the caller simulator (``harness.callers.run_call``: Twilio Media Streams, 20 ms frames
in real time, synthesised speech) running the same script; calls start evenly over ``ramp``
seconds. Reported from real measurements:

- voice-to-voice latency per caller turn (end of the caller's speech -> first audible bot
  media), p50/p95/p99, and over time (PNG plot);
- audio underruns: gaps in the bot's stream while a response plays, replayed through a playout
  buffer of ``jitter_ms`` (``harness/callers/stream_gaps.py``);
- failed calls: protocol errors, unanswered turns, calls that could not connect or timed out;
- CPU and memory of the bot server process (``--server-pid``, read from ``/proc``), as a whole
  and per concurrent call, and the CPU of its main thread alone: the event loop every call's
  audio goes through, which must keep real time (Smart Turn runs on other threads);
- the load generator's own health: its CPU and the worst lateness of a caller frame.

Bounded: at most :data:`MAX_CALLS` calls, a time limit per call, loopback hosts only.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from harness.callers import CallerTurn, CallOptions, CallResult, run_call
from harness.callers.stream_gaps import DEFAULT_JITTER_MS, find_underruns

MAX_CALLS = 200
#: Playout buffers the report also replays every stream through, for comparison.
COMPARE_BUFFERS_MS = (20.0, 60.0, 120.0, 250.0)
#: An underrun this far into a response counts as its start (the first chunks were late).
RESPONSE_START_MS = 300.0
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
DEFAULT_TURNS = (
    "Hello, what time do you open tomorrow?",
    "Thanks. And are you open on Saturday?",
)


def check_loopback(url: str) -> None:
    """ValueError unless ``url`` is a ws:// URL on a loopback host."""
    parsed = urlparse(url)
    if parsed.scheme not in ("ws", "wss"):
        raise ValueError(f"load test URL must be ws:// or wss://, got {url!r}")
    if parsed.hostname not in LOOPBACK_HOSTS:
        raise ValueError(
            f"the load test only calls loopback servers ({', '.join(LOOPBACK_HOSTS)}), "
            f"not {parsed.hostname!r}"
        )


@dataclass
class LoadOptions:
    """What the load test does."""

    calls: int = 10
    ramp_secs: float = 5.0
    turns: tuple[str, ...] = DEFAULT_TURNS
    params: dict[str, str] = field(default_factory=dict)  # start.customParameters
    jitter_ms: float = DEFAULT_JITTER_MS
    call_timeout_secs: float = 120.0
    server_pid: int | None = None
    sample_secs: float = 0.5
    caller: dict[str, Any] = field(default_factory=dict)  # extra CallOptions fields
    stream_secret: str | None = None  # issue per-call stream tokens with this key

    def __post_init__(self) -> None:
        if not 1 <= self.calls <= MAX_CALLS:
            raise ValueError(f"--calls must be between 1 and {MAX_CALLS}, got {self.calls}")
        if self.ramp_secs < 0:
            raise ValueError(f"--ramp must be >= 0, got {self.ramp_secs}")
        if not self.turns:
            raise ValueError("the load test needs at least one caller turn")


@dataclass
class ProcSample:
    """One reading of the server process."""

    t: float  # seconds since the load test started
    cpu_secs: float  # utime + stime so far
    rss_mb: float
    active_calls: int
    loop_cpu_secs: float = 0.0  # the same for the main thread (the event loop) alone


def _stat_cpu_secs(path: str) -> float:
    with open(path) as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def read_proc(pid: int) -> tuple[float, float, float]:
    """(CPU seconds used so far, RSS in MiB, CPU seconds of the main thread) of process
    ``pid``, from /proc."""
    cpu = _stat_cpu_secs(f"/proc/{pid}/stat")
    try:
        loop_cpu = _stat_cpu_secs(f"/proc/{pid}/task/{pid}/stat")
    except OSError:
        loop_cpu = 0.0
    rss_mb = 0.0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss_mb = int(line.split()[1]) / 1024.0
                break
    return cpu, rss_mb, loop_cpu


@dataclass
class LoadReport:
    """Everything measured in one load test."""

    url: str
    calls: int
    ramp_secs: float
    jitter_ms: float
    wall_secs: float = 0.0
    results: list[CallResult | None] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # one line per failed call
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (t secs, latency ms)
    underruns: int = 0
    underrun_gap_ms: float = 0.0
    worst_gap_ms: float = 0.0
    #: Underruns in the first RESPONSE_START_MS of a response (a slow first chunk, not a mid-stream stall).
    underruns_at_start: int = 0
    #: Every underrun: call (1-based), when, how long, how far into its response, and the call's
    #: last few logged events before it (what the stream was doing).
    underrun_events: list[dict[str, Any]] = field(default_factory=list)
    bot_audio_secs: float = 0.0
    samples: list[ProcSample] = field(default_factory=list)
    peak_active: int = 0
    loadgen_cpu_secs: float = 0.0
    max_caller_lag_ms: float = 0.0
    #: Underruns the same streams would give with other playout buffers (ms -> count).
    underruns_by_buffer: dict[float, int] = field(default_factory=dict)

    @property
    def failed_calls(self) -> int:
        return len(self.failures)

    def percentile(self, q: float) -> float | None:
        vals = [lat for _, lat in self.latencies]
        return float(np.percentile(vals, q)) if vals else None

    def server_stats(self) -> dict[str, float] | None:
        """Server CPU (% of one core) and RSS while all calls were up, and per call."""
        full = [s for s in self.samples if s.active_calls >= self.peak_active]
        if len(full) < 2 or not self.samples:
            return None
        span = full[-1].t - full[0].t
        cpu_pct = 100.0 * (full[-1].cpu_secs - full[0].cpu_secs) / span if span > 0 else 0.0
        loop_pct = (
            100.0 * (full[-1].loop_cpu_secs - full[0].loop_cpu_secs) / span if span > 0 else 0.0
        )
        base_rss = self.samples[0].rss_mb
        peak_rss = max(s.rss_mb for s in self.samples)
        n = max(self.peak_active, 1)
        return {
            "cpu_pct": cpu_pct, "cpu_pct_per_call": cpu_pct / n, "window_secs": span,
            "loop_cpu_pct": loop_pct, "loop_cpu_pct_per_call": loop_pct / n,
            "rss_start_mb": base_rss, "rss_peak_mb": peak_rss,
            "rss_per_call_mb": (peak_rss - base_rss) / n,
        }

    def to_dict(self) -> dict[str, Any]:
        lat = {f"p{q}": _round(self.percentile(q)) for q in (50, 95, 99)}
        return {
            "url": self.url, "calls": self.calls, "ramp_secs": self.ramp_secs,
            "wall_secs": round(self.wall_secs, 1), "failed_calls": self.failed_calls,
            "failures": self.failures, "turns_measured": len(self.latencies),
            "latency_ms": lat, "latency_max_ms": _round(max((v for _, v in self.latencies),
                                                            default=None) if self.latencies
                                                        else None),
            "underruns": self.underruns, "underrun_gap_ms": round(self.underrun_gap_ms, 1),
            "worst_gap_ms": round(self.worst_gap_ms, 1),
            "underruns_at_response_start": self.underruns_at_start,
            "underrun_events": self.underrun_events,
            "jitter_buffer_ms": self.jitter_ms,
            "bot_audio_secs": round(self.bot_audio_secs, 1), "peak_active_calls": self.peak_active,
            "server": self.server_stats(), "loadgen_cpu_secs": round(self.loadgen_cpu_secs, 1),
            "max_caller_lag_ms": round(self.max_caller_lag_ms, 1),
            "underruns_by_buffer_ms": {f"{k:g}": v for k, v in self.underruns_by_buffer.items()},
        }


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


class _Progress:
    """A one-line progress bar on stderr (redrawn in place on a terminal)."""

    def __init__(self, total: int, stream: Any = None, enabled: bool = True) -> None:
        self.total = total
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last = 0.0

    def draw(self, done: int, active: int, failed: int, p50: float | None,
             force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < (0.2 if self.tty else 5.0):
            return
        self._last = now
        width = 30
        filled = int(width * done / self.total)
        bar = "#" * filled + "-" * (width - filled)
        lat = "-" if p50 is None else f"{p50:.0f}"
        line = (f"[{bar}] {done}/{self.total} calls done, {active} active, {failed} failed, "
                f"v2v p50 {lat} ms")
        if self.tty:
            self.stream.write("\r" + line + ("\n" if force else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


async def run_load(url: str, options: LoadOptions, *, progress: bool = True,
                   progress_stream: Any = None) -> LoadReport:
    """Run the load test against the media-stream URL ``url`` (see the module docstring)."""
    check_loopback(url)
    from stepcall.audio.speech import synthesize

    pcms = [await asyncio.to_thread(synthesize, text, 8000) for text in options.turns]
    report = LoadReport(url=url, calls=options.calls, ramp_secs=options.ramp_secs,
                        jitter_ms=options.jitter_ms)
    report.results = [None] * options.calls
    loop = asyncio.get_running_loop()
    t_start = loop.time()
    wall_start = time.time()
    cpu_start = time.process_time()
    active = 0
    done = 0
    bar = _Progress(options.calls, progress_stream, progress)

    async def one_call(i: int) -> None:
        nonlocal active, done
        await asyncio.sleep(options.ramp_secs * i / options.calls)
        turns = [CallerTurn(text=text, audio=pcm) for text, pcm in
                 zip(options.turns, pcms, strict=True)]
        params = dict(options.params)
        identity = None
        if options.stream_secret:
            from bots.twilio.stream_auth import AUTH_PARAM, StreamAuth
            from harness.callers.twilio_messages import StreamIdentity

            identity = StreamIdentity()
            token = StreamAuth(options.stream_secret).issue(identity.call_sid,
                                                           params.get("bot", ""))
            params[AUTH_PARAM] = token or ""
        copt = CallOptions(params=params, identity=identity, **options.caller)
        active += 1
        report.peak_active = max(report.peak_active, active)
        try:
            result = await asyncio.wait_for(run_call(url, turns, copt),
                                            options.call_timeout_secs)
            report.results[i] = result
            call_t0 = (t_start if result.started_unix is None
                       else t_start + (result.started_unix - wall_start))
            for t in result.turns:
                if t.latency_ms is not None and t.speech_end_ms is not None:
                    report.latencies.append(
                        (call_t0 - t_start + t.speech_end_ms / 1000.0, t.latency_ms))
            if not result.ok:
                why = "; ".join(result.errors) or f"unanswered turns {result.unanswered_turns}"
                report.failures.append(f"call {i + 1}: {why}")
        except TimeoutError:
            report.failures.append(f"call {i + 1}: timed out after {options.call_timeout_secs} s")
        except Exception as e:
            report.failures.append(f"call {i + 1}: {type(e).__name__}: {e}")
        finally:
            active -= 1
            done += 1
            bar.draw(done, active, report.failed_calls, report.percentile(50))

    async def sampler() -> None:
        if options.server_pid is None:
            return
        while True:
            try:
                cpu, rss, loop_cpu = read_proc(options.server_pid)
            except OSError:
                return
            report.samples.append(ProcSample(loop.time() - t_start, cpu, rss, active, loop_cpu))
            bar.draw(done, active, report.failed_calls, report.percentile(50))
            await asyncio.sleep(options.sample_secs)

    sampling = asyncio.create_task(sampler())
    await asyncio.gather(*(one_call(i) for i in range(options.calls)))
    sampling.cancel()
    await asyncio.gather(sampling, return_exceptions=True)
    bar.draw(done, active, report.failed_calls, report.percentile(50), force=True)
    report.wall_secs = loop.time() - t_start
    report.loadgen_cpu_secs = time.process_time() - cpu_start
    # the peak plateau for the server stats: samples taken while every call was up
    report.peak_active = max((s.active_calls for s in report.samples), default=report.peak_active)
    tally_streams(report, options.jitter_ms)
    report.latencies.sort()
    return report


def tally_streams(report: LoadReport, jitter_ms: float) -> None:
    """Replay every call's bot stream for underruns (``jitter_ms`` and the comparison buffers)."""
    for index, result in enumerate(report.results):
        if result is None:
            continue
        gaps = find_underruns(result, jitter_ms)
        for u in gaps.underruns:
            before = [e for e in result.events if float(e.get("t_ms", 0.0)) <= u.at_ms]
            report.underrun_events.append({
                "call": index + 1, "at_ms": round(u.at_ms, 1), "gap_ms": round(u.gap_ms, 1),
                "into_response_ms": round(u.into_ms, 1),
                "events_before": [f"{e.get('t_ms', 0.0):.0f} {e.get('dir', '')} "
                                  f"{e.get('event', '')}" for e in before[-4:]],
            })
        report.underruns += gaps.count
        report.underrun_gap_ms += gaps.gap_ms_total
        report.worst_gap_ms = max(report.worst_gap_ms, gaps.worst_gap_ms)
        report.underruns_at_start += gaps.count_within(RESPONSE_START_MS)
        report.bot_audio_secs += gaps.audio_ms / 1000.0
        report.max_caller_lag_ms = max(report.max_caller_lag_ms, result.max_send_lag_ms)
        for buffer_ms in COMPARE_BUFFERS_MS:
            other = gaps if buffer_ms == jitter_ms else find_underruns(result, buffer_ms)
            report.underruns_by_buffer[buffer_ms] = (
                report.underruns_by_buffer.get(buffer_ms, 0) + other.count
            )


def format_report(report: LoadReport) -> str:
    """The human-readable summary."""
    d = report.to_dict()
    lat = d["latency_ms"]
    lines = [
        f"load test: {report.calls} calls over a {report.ramp_secs:g} s ramp against {report.url}",
        f"wall time {d['wall_secs']} s; peak concurrent calls {d['peak_active_calls']}",
        f"failed calls: {d['failed_calls']}",
        f"voice-to-voice latency ({d['turns_measured']} turns): p50 {lat['p50']} ms, "
        f"p95 {lat['p95']} ms, p99 {lat['p99']} ms, max {d['latency_max_ms']} ms",
        f"underruns: {d['underruns']} (total gap {d['underrun_gap_ms']} ms, worst "
        f"{d['worst_gap_ms']} ms) in {d['bot_audio_secs']} s of bot audio, "
        f"{d['jitter_buffer_ms']:g} ms playout buffer",
        "underruns with other playout buffers: " + ", ".join(
            f"{k} ms: {v}" for k, v in d["underruns_by_buffer_ms"].items()),
        f"underruns in a response's first {RESPONSE_START_MS:g} ms: "
        f"{d['underruns_at_response_start']}, later: "
        f"{d['underruns'] - d['underruns_at_response_start']}",
    ]
    server = d["server"]
    if server:
        lines.append(
            f"server CPU {server['cpu_pct']:.0f}% of a core with {d['peak_active_calls']} calls "
            f"({server['cpu_pct_per_call']:.1f}% per call, over {server['window_secs']:.0f} s); "
            f"RSS {server['rss_start_mb']:.0f} -> {server['rss_peak_mb']:.0f} MiB "
            f"({server['rss_per_call_mb']:.1f} MiB per call)")
        lines.append(
            f"server event loop (main thread): {server['loop_cpu_pct']:.0f}% of a core "
            f"({server['loop_cpu_pct_per_call']:.2f}% per call)")
    lines.append(f"load generator: {d['loadgen_cpu_secs']} s CPU, worst caller frame lag "
                 f"{d['max_caller_lag_ms']} ms")
    for f in report.failures[:20]:
        lines.append(f"FAILED {f}")
    return "\n".join(lines)


def write_plot(report: LoadReport, path: str | Path) -> Path:
    """PNG: latency of every turn over time, concurrent calls and server CPU beneath."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 5.5), sharex=True,
                                   gridspec_kw={"height_ratios": [3, 1.4]})
    if report.latencies:
        t, lat = zip(*report.latencies, strict=True)
        ax1.scatter(t, lat, s=10, alpha=0.7, label="turn latency")
        for q, style in ((50, "-"), (95, "--"), (99, ":")):
            v = report.percentile(q)
            if v is not None:
                ax1.axhline(v, linestyle=style, color="gray", linewidth=1,
                            label=f"p{q} {v:.0f} ms")
        ax1.legend(loc="upper left", fontsize=8)
    ax1.set_ylabel("voice-to-voice ms")
    ax1.set_title(f"stepcall load: {report.calls} calls, ramp {report.ramp_secs:g} s, "
                  f"{report.failed_calls} failed, {report.underruns} underruns", fontsize=10)
    ax1.grid(alpha=0.3)
    if report.samples:
        ts = [s.t for s in report.samples]
        ax2.step(ts, [s.active_calls for s in report.samples], where="post", label="active calls")
        ax2.set_ylabel("calls")
        cpu = [0.0] + [
            100.0 * (b.cpu_secs - a.cpu_secs) / max(b.t - a.t, 1e-6)
            for a, b in zip(report.samples, report.samples[1:], strict=False)
        ]
        ax3 = ax2.twinx()
        ax3.plot(ts, cpu, color="tab:red", linewidth=1, label="server CPU %")
        ax3.set_ylabel("server CPU %", color="tab:red")
        ax2.legend(loc="upper left", fontsize=8)
    ax2.set_xlabel("seconds since start")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------


def _param(text: str) -> tuple[str, str]:
    import argparse

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--param needs key=value, got {text!r}")
    return key, value


def build_parser() -> Any:
    import argparse

    p = argparse.ArgumentParser(
        prog="stepcall load",
        description="Place N concurrent simulated Twilio calls against a bot server on loopback "
        "and report voice-to-voice latency p50/p95/p99, audio underruns, failed calls and the "
        "server's CPU/memory per call.",
    )
    p.add_argument("url", help="media-stream WebSocket, e.g. ws://127.0.0.1:8080/twilio/stream")
    p.add_argument("--calls", type=int, default=10, help=f"concurrent calls (1..{MAX_CALLS})")
    p.add_argument("--ramp", type=float, default=5.0, metavar="SECS",
                   help="start the calls evenly over this many seconds (default 5)")
    p.add_argument("--say", action="append", metavar="TEXT",
                   help="a caller turn (repeatable; default: two short questions)")
    p.add_argument("--param", type=_param, action="append", default=[], metavar="KEY=VALUE",
                   help="start.customParameters entry, e.g. bot=front-desk")
    p.add_argument("--server-pid", type=int, help="bot server process to sample CPU/RSS of")
    p.add_argument("--jitter-ms", type=float, default=DEFAULT_JITTER_MS,
                   help=f"caller playout buffer for underrun detection (default "
                   f"{DEFAULT_JITTER_MS:g})")
    p.add_argument("--timeout", type=float, default=120.0, metavar="SECS",
                   help="time limit per call (default 120)")
    p.add_argument("--stream-secret", help="issue per-call stream tokens with this key "
                   "(the server's STEPCALL_STREAM_SECRET)")
    p.add_argument("--plot", metavar="PNG", help="write the latency-over-time plot here")
    p.add_argument("--json", metavar="FILE", help="write the report as JSON here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: 0 when no call failed and no underrun occurred."""
    import json

    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        options = LoadOptions(
            calls=args.calls, ramp_secs=args.ramp, turns=tuple(args.say or DEFAULT_TURNS),
            params=dict(args.param), jitter_ms=args.jitter_ms, call_timeout_secs=args.timeout,
            server_pid=args.server_pid, stream_secret=args.stream_secret,
        )
        check_loopback(args.url)
    except ValueError as e:
        print(f"stepcall load: {e}", file=sys.stderr)
        return 2
    report = asyncio.run(run_load(args.url, options, progress=not args.quiet))
    print(format_report(report))
    if args.plot:
        print(f"plot: {write_plot(report, args.plot)}")
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return 0 if report.failed_calls == 0 and report.underruns == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
