"""The dashboard: auth, list with filters, a call's page (transcript, tool calls, audio, latency
bars), percentile plot, and a real render in headless Chromium (screenshot + DOM)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from bots.metrics import BotMetrics, add_metrics_route
from bots.records.dashboard import add_dashboard_routes
from bots.records.models import CallRecord, ToolCallRecord, TurnRecord, utcnow
from bots.records.plots import bucket_latencies, percentile
from bots.records.recording import StereoRecorder
from bots.records.store import LatencyPoint
from stepcall.settings import Settings

TOKEN = "dash-secret-123"
BOT_LINE = "Your large margherita will arrive in thirty minutes."


@pytest.fixture
def seeded(store, tmp_path):
    """Three calls; CA-pizza has turns, a tool call and a recording."""
    t0 = utcnow() - timedelta(minutes=30)
    store.start_call(
        CallRecord(
            "CA-pizza",
            "pizza",
            t0,
            from_number="+15551234567",
            to_number="+15550000001",
            flow="flows/pizza_order.yaml",
        )
    )
    store.save_turn(
        TurnRecord("CA-pizza", 1, "bot", t0, t0 + timedelta(seconds=2), text="Hi, Mario's pizza!")
    )
    store.save_turn(
        TurnRecord(
            "CA-pizza",
            2,
            "user",
            t0 + timedelta(seconds=3),
            t0 + timedelta(seconds=5),
            audio_ms=1900.0,
        )
    )
    store.save_tool_call(
        ToolCallRecord(
            "CA-pizza",
            "t1",
            "place_order",
            {"size": "large"},
            t0 + timedelta(seconds=5.2),
            result={"eta_min": 30},
            ended_at=t0 + timedelta(seconds=5.3),
        )
    )
    store.save_turn(
        TurnRecord(
            "CA-pizza",
            3,
            "bot",
            t0 + timedelta(seconds=5.6),
            t0 + timedelta(seconds=9),
            text=BOT_LINE,
            latency_ms=640.0,
        )
    )
    store.end_call("CA-pizza", "completed", t0 + timedelta(seconds=10))
    rec = StereoRecorder(8000)
    rec.add(0, b"\x00\x01" * 800, 8000, 0.1)
    wav = rec.write_wav(tmp_path / "CA-pizza.wav")
    store.set_recording("CA-pizza", str(wav), utcnow() + timedelta(days=30))
    store.start_call(
        CallRecord("CA-desk", "front_desk", t0 + timedelta(minutes=1), from_number="+15559999999")
    )
    store.end_call("CA-desk", "transferred")
    store.start_call(CallRecord("CA-live", "front_desk", utcnow()))
    return store


@pytest.fixture
def client(seeded):
    app = FastAPI()
    add_dashboard_routes(app, Settings(), seeded, token=TOKEN)
    return TestClient(app)


def test_dashboard_requires_the_token(client, seeded):
    r = client.get("/dashboard", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/dashboard/login")
    assert client.get("/dashboard?token=wrong", follow_redirects=False).status_code == 303
    assert client.get("/dashboard/api/calls/CA-pizza").status_code == 401
    r = client.post(
        "/dashboard/login", data={"token": "nope", "next": "/dashboard"}, follow_redirects=False
    )
    assert "error=1" in r.headers["location"]
    r = client.post(
        "/dashboard/login",
        data={"token": TOKEN, "next": "/dashboard/calls/CA-pizza"},
        follow_redirects=False,
    )
    assert r.status_code == 303 and r.headers["location"] == "/dashboard/calls/CA-pizza"
    assert client.get("/dashboard/calls/CA-pizza").status_code == 200  # cookie now set
    assert TOKEN not in client.cookies.get("stepcall_dashboard", "")
    bearer = TestClient(client.app)
    assert bearer.get("/dashboard", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_dashboard_is_off_without_a_token(seeded):
    app = FastAPI()
    add_dashboard_routes(app, Settings(), seeded)  # Settings has no dashboard_token yet
    r = TestClient(app).get("/dashboard")
    assert r.status_code == 503 and "STEPCALL_DASHBOARD_TOKEN" in r.text


def test_call_list_and_filters(client):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    page = client.get("/dashboard", headers=auth).text
    for cid in ("CA-pizza", "CA-desk", "CA-live"):
        assert cid in page
    assert "p50 640 ms" in page and '<svg class="chart"' in page
    only = client.get("/dashboard?bot=pizza", headers=auth).text
    assert "CA-pizza" in only and "CA-desk" not in only
    xfer = client.get("/dashboard?outcome=transferred", headers=auth).text
    assert "CA-desk" in xfer and "CA-pizza" not in xfer
    live = client.get("/dashboard?outcome=in_progress", headers=auth).text
    assert "CA-live" in live and "CA-desk" not in live
    by_number = client.get("/dashboard?number=1234567", headers=auth).text
    assert "CA-pizza" in by_number and "CA-desk" not in by_number
    assert client.get("/dashboard?outcome=nonsense", headers=auth).status_code == 400
    assert client.get("/dashboard?period=1y", headers=auth).status_code == 400


def test_call_page_and_recording(client):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    page = client.get("/dashboard/calls/CA-pizza", headers=auth).text
    assert BOT_LINE in page and "Hi, Mario&#x27;s pizza!" in page
    assert "(speech, 1.9 s of audio)" in page
    assert "place_order" in page and "eta_min" in page
    assert "640 ms" in page and '<svg class="bars"' in page
    assert "<audio controls" in page
    wav = client.get("/dashboard/calls/CA-pizza/recording.wav", headers=auth)
    assert wav.status_code == 200 and wav.content[:4] == b"RIFF"
    assert client.get("/dashboard/calls/CA-desk/recording.wav", headers=auth).status_code == 404
    assert client.get("/dashboard/calls/nope", headers=auth).status_code == 404
    data = client.get("/dashboard/api/calls/CA-pizza", headers=auth).json()
    assert data["outcome"] == "completed" and data["turns"][2]["latency_ms"] == 640.0


def test_percentiles_and_buckets():
    assert percentile([1, 2, 3, 4], 50) == 2 and percentile([5], 99) == 5
    with pytest.raises(ValueError):
        percentile([], 50)
    t = utcnow().replace(minute=0, second=0, microsecond=0)
    pts = [
        LatencyPoint(t + timedelta(minutes=m), "b", ms)
        for m, ms in [(1, 100.0), (2, 300.0), (61, 900.0)]
    ]
    buckets = bucket_latencies(pts, timedelta(hours=1))
    assert [b.count for b in buckets] == [2, 1]
    assert buckets[0].p[50] == 100.0 and buckets[0].p[99] == 300.0


def test_metrics_route():
    app = FastAPI()
    metrics = BotMetrics()
    add_metrics_route(app, metrics)
    metrics.calls_active.inc()
    metrics.voice_to_voice.observe(0.45)
    r = TestClient(app).get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert "stepcall_calls_active 1.0" in r.text
    assert 'stepcall_voice_to_voice_seconds_bucket{le="0.5"} 1.0' in r.text
    assert "_created" not in r.text  # stepcall.runtime.metrics turns these samples off


# -- headless Chromium ----------------------------------------------------------------------

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,900",
]


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


@pytest.fixture
def live_server(seeded):
    """The dashboard served by uvicorn on a free loopback port."""
    app = FastAPI()
    add_dashboard_routes(app, Settings(), seeded, token=TOKEN)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def _run_chromium(binary: str, *args: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="stepcall-chromium-") as profile:
        return subprocess.run(
            [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True,
            timeout=90,
        )


def test_call_page_renders_in_headless_chromium(live_server, tmp_path):
    binary = _chromium()
    if binary is None:
        pytest.skip("chromium not installed (CI: apt-get update && apt-get install -y chromium)")
    url = f"{live_server}/dashboard/calls/CA-pizza?token={TOKEN}"
    dom = _run_chromium(binary, "--dump-dom", url)
    html = dom.stdout.decode("utf-8", "replace")
    assert BOT_LINE in html, dom.stderr.decode()[-2000:]
    assert "place_order" in html and "<audio" in html and "Latency per bot turn" in html

    png = tmp_path / "call.png"
    shot = _run_chromium(binary, f"--screenshot={png}", url)
    assert png.is_file() and png.stat().st_size > 5000, shot.stderr.decode()[-2000:]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = pytest.importorskip("PIL.Image", reason="Pillow not installed: PNG pixels unchecked")
    with image.open(png) as im:
        rgb = im.convert("RGB")
        assert rgb.size == (1280, 900)
        colors = rgb.getcolors(maxcolors=1 << 20) or []
        assert len(colors) > 50, "screenshot is (nearly) one colour: blank page"
        white = sum(n for n, c in colors if c == (255, 255, 255))
        assert white < 0.97 * 1280 * 900, "screenshot is almost all white"
        r, g, b = rgb.getpixel((600, 15))  # the header bar (#16324f)
        assert abs(r - 0x16) < 12 and abs(g - 0x32) < 12 and abs(b - 0x4F) < 12
    Path("/tmp/stepcall-dashboard-call.png").write_bytes(png.read_bytes())


def test_call_list_renders_in_headless_chromium(live_server):
    binary = _chromium()
    if binary is None:
        pytest.skip("chromium not installed (CI: apt-get update && apt-get install -y chromium)")
    dom = _run_chromium(binary, "--dump-dom", f"{live_server}/dashboard?token={TOKEN}")
    html = dom.stdout.decode("utf-8", "replace")
    assert "CA-pizza" in html and "CA-desk" in html and "voice-to-voice latency percentiles" in html
