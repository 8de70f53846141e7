"""``stepcall load``: concurrent simulated calls against a real bot server, measured.

The bot server (``bots.server.create_app``) and the instant model-service stand-in
(``harness.canned_model_service``, speaking flite speech) run in this process on loopback; the
load generator places real Twilio Media Streams calls. The underrun detector is also checked on
hand-made arrival timelines, where the right answer is known.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from harness.callers import CallResult
from harness.callers.stream_gaps import find_underruns
from harness.loadtest import LoadOptions, check_loopback, format_report, run_load, write_plot


@pytest.fixture(scope="module")
def reply_pcm() -> bytes:
    from stepcall.audio.speech import SpeechUnavailableError, synthesize

    try:
        return synthesize("We are open from nine to six.", 8000).tobytes()
    except SpeechUnavailableError as e:
        pytest.skip(str(e))


async def test_five_concurrent_calls_are_measured(reply_pcm, tmp_path) -> None:
    from bots.profile import BotProfile
    from bots.registry import BotRegistry
    from bots.server import create_app
    from harness.canned_model_service import CannedModelService
    from model_service.server import serving
    from stepcall.settings import Settings

    canned = CannedModelService(reply_pcm, "We are open from nine to six.")
    async with canned.serving() as model_url:
        settings = Settings(model_url=model_url)
        profile = BotProfile(name="load", smart_turn=False)
        app = create_app(settings, BotRegistry.single(profile))
        async with serving(app) as url:
            stream = url.replace("/v1/session", "/twilio/stream")
            options = LoadOptions(
                calls=5, ramp_secs=1.0, turns=("Hello, what time do you open tomorrow?",),
                params={"bot": "load"}, server_pid=os.getpid(), sample_secs=0.2,
                caller={"greeting_wait_secs": 0.5, "pause_secs": 0.3, "quiet_secs": 0.8},
            )
            report = await run_load(stream, options, progress=False)
    assert report.failed_calls == 0, report.failures
    assert canned.sessions == 5 and canned.responses >= 5
    assert report.peak_active >= 2  # the calls overlapped
    # one latency per answered turn, taken from the calls themselves
    per_call = [r.turns[0].latency_ms for r in report.results]
    assert sorted(lat for _, lat in report.latencies) == sorted(per_call)
    assert all(0 < lat < 5000 for lat in per_call)
    p50, p95, p99 = (report.percentile(q) for q in (50, 95, 99))
    assert p50 == pytest.approx(float(np.percentile(per_call, 50)))
    assert p50 <= p95 <= p99 <= max(per_call)
    # the bot audio the underrun detector replayed is what the calls received
    received = sum(sum(n for _, n, _ in r.bot_media) for r in report.results) / 8000
    assert report.bot_audio_secs == pytest.approx(received, rel=1e-6)
    assert received >= 5 * (len(reply_pcm) / 2 / 8000) * 0.9
    server = report.server_stats()
    assert server is not None and server["cpu_pct"] > 0 and server["rss_peak_mb"] > 50
    # the server here is this process: its main thread runs the calls' event loop
    assert 0 < server["loop_cpu_pct"] <= server["cpu_pct"] + 1.0
    text = format_report(report)
    assert "failed calls: 0" in text and "p95" in text and "event loop (main thread)" in text
    png = write_plot(report, tmp_path / "load.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_only_loopback_servers_are_load_tested() -> None:
    check_loopback("ws://127.0.0.1:8080/twilio/stream")
    check_loopback("ws://localhost:8080/twilio/stream")
    with pytest.raises(ValueError, match="loopback"):
        check_loopback("wss://bots.example.com/twilio/stream")
    with pytest.raises(ValueError, match="between 1 and"):
        LoadOptions(calls=0)


def _call(media: list[tuple[float, int]], marks: tuple[float, ...] = ()) -> CallResult:
    r = CallResult(url="ws://x", stream_sid="MZ", call_sid="CA", account_sid="AC")
    r.bot_media = [(t, n, True) for t, n in media]
    r.events = [{"t_ms": t, "dir": "in", "event": "mark", "name": "m"} for t in marks]
    return r


def test_underruns_are_gaps_beyond_the_playout_buffer() -> None:
    steady = [(1000.0 + 40 * k, 320) for k in range(50)]  # 40 ms chunks, exactly real time
    assert find_underruns(_call(steady), 60).count == 0
    assert find_underruns(_call(steady), 0).count == 0
    # the stream stalls for 200 ms after chunk 10: the 60 ms buffer covers 60 of them
    stalled = [(t + (200.0 if k > 10 else 0.0), n) for k, (t, n) in enumerate(steady)]
    report = find_underruns(_call(stalled), 60)
    assert report.count == 1 and report.underruns[0].gap_ms == pytest.approx(140.0)
    assert report.underruns[0].into_ms == pytest.approx(11 * 40.0)  # after chunks 0..10
    assert report.count_within(300) == 0 and report.count_within(500) == 1
    assert find_underruns(_call(stalled), 250).count == 0
    # a stream 5 % slower than real time drains a 60 ms buffer after about 1.2 s
    slow = [(1000.0 + 42 * k, 320) for k in range(50)]
    assert find_underruns(_call(slow), 60).count > 0
    # a pause between two responses (a mark ends the first) is not a gap
    two = [(1000.0 + 40 * k, 320) for k in range(10)] + [(3000.0 + 40 * k, 320) for k in range(10)]
    assert find_underruns(_call(two, marks=(1400.0,)), 60).count == 0
    assert find_underruns(_call(two), 60).count == 1
    assert find_underruns(_call(two, marks=(1400.0,)), 60).responses == 2


def test_the_report_lists_each_underrun_with_where_it_fell() -> None:
    from harness.loadtest import LoadReport, tally_streams

    steady = [(1000.0 + 40 * k, 320) for k in range(50)]
    stalled = [(t + (200.0 if k > 10 else 0.0), n) for k, (t, n) in enumerate(steady)]
    late_start = [(t + (200.0 if k > 1 else 0.0), n) for k, (t, n) in enumerate(steady)]
    report = LoadReport(url="ws://x", calls=3, ramp_secs=0.0, jitter_ms=60.0)
    report.results = [_call(steady, marks=(900.0,)), None, _call(stalled), _call(late_start)]
    tally_streams(report, 60.0)
    assert report.underruns == 2 and report.underruns_at_start == 1
    first, second = report.underrun_events
    assert (first["call"], first["into_response_ms"], first["gap_ms"]) == (3, 440.0, 140.0)
    assert (second["call"], second["into_response_ms"]) == (4, 80.0)
    assert report.to_dict()["underrun_events"] == report.underrun_events
    assert "first 300 ms: 1, later: 1" in format_report(report)
    clean = LoadReport(url="ws://x", calls=1, ramp_secs=0.0, jitter_ms=60.0)
    clean.results = [_call(steady, marks=(900.0,))]
    tally_streams(clean, 60.0)
    assert clean.underrun_events == [] and clean.underruns == 0


def test_a_cut_falls_where_it_was_received_among_the_media() -> None:
    """A ``clear`` read in the same loop tick as the last media (same timestamp) ends the
    response after that media; interrupted audio arriving after the clear joins the next
    response, and the silence between them counts as a gap."""
    first = [(1000.0 + 40 * k, 320) for k in range(10)]  # last one at 1360
    second = [(2400.0 + 40 * k, 320) for k in range(10)]
    r = _call(first + second)
    r.events = [{"t_ms": 1360.0, "dir": "in", "event": "clear", "after_media": 10}]
    report = find_underruns(r, 60)
    assert report.count == 0 and report.responses == 2  # by time alone: an 1 s "gap"
    r.events[0]["after_media"] = 9  # the 10th chunk came after the clear: stale audio
    stale = find_underruns(r, 60)
    assert stale.count == 1 and stale.underruns[0].gap_ms == pytest.approx(940.0)
