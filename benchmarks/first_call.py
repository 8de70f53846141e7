"""Greeting and first-turn latency of calls 1, 2 and 10 of one bot, per backend (issue #30).

For each backend, starts ``stepcall model`` + ``stepcall serve`` on free loopback ports with
``flows/front_desk.yaml`` as the only (so the default) bot, then places ``--calls`` calls one after
another with the harness caller over the Twilio media-stream protocol. Each call: listen for the
greeting, then one caller line. Per call it measures

* greeting latency: stream start -> first audible bot audio (whatever greeting the flow has);
* first-turn latency: end of the caller's speech -> first audible bot audio.

Calls after the first should not pay for the bot's persona + tools prefill (the backends share
that prefix across calls), so the call1/call10 ratio shows what the shared prefix saves.

    .venv/bin/python benchmarks/first_call.py [--backend cpu|reference|vllm|all] [--calls 10]
        [--out results.json]

``reference`` and ``vllm`` serve the tiny test checkpoint (``--tiny-checkpoint``): their numbers
show the per-call overheads, not a real model's speed. ``cpu`` runs when its models resolve,
``vllm`` when vllm is installed. Logs of each stack go to a temporary folder (printed on failure).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.callers import CallerTurn, CallOptions, run_call  # noqa: E402

LINE = "Hello, what time do you open tomorrow?"
FLOW = ROOT / "flows" / "front_desk.yaml"
BACKENDS = ("cpu", "reference", "vllm")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def available(backend: str) -> str | None:
    """None when ``backend`` can run here, else why not."""
    if backend == "cpu":
        try:
            from model_service.backends.cpu.model_files import resolve_cpu_models

            resolve_cpu_models()
        except Exception as exc:  # noqa: BLE001 - any failure means "not here"
            return f"cpu models do not resolve ({exc})"
    if backend == "vllm" and importlib.util.find_spec("vllm") is None:
        return "vllm is not installed"
    return None


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited ({proc.returncode}); log {log}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"timed out waiting for {url}; log {log}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _calls(url: str, n: int, wait_secs: float) -> list[dict]:
    opts = CallOptions(greeting_wait_secs=wait_secs, wait_secs=wait_secs, hangup_delay_secs=0.2)
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        result = await run_call(url, [CallerTurn(text=LINE)], opts)
        g = result.greeting
        turn = result.turns[0] if result.turns else None
        out.append(
            {
                "call": i + 1,
                "greeting_ms": g.latency_ms if g is not None else None,
                "first_turn_ms": turn.latency_ms if turn is not None else None,
                "wall_s": round(time.perf_counter() - t0, 2),
                "errors": list(result.errors),
            }
        )
        print(
            f"  call {i + 1}: greeting {_fmt(out[-1]['greeting_ms'])} ms, "
            f"first turn {_fmt(out[-1]['first_turn_ms'])} ms",
            flush=True,
        )
    return out


def run_backend(backend: str, calls: int, wait_secs: float, workdir: Path) -> dict:
    """Start the stack for ``backend``, place ``calls`` calls, stop it; the per-call numbers."""
    logs = workdir / backend
    flows = logs / "flows"
    flows.mkdir(parents=True)
    shutil.copy(FLOW, flows / FLOW.name)
    model_port, web_port = free_port(), free_port()
    env = {
        **os.environ,
        "STEPCALL_MODEL_PORT": str(model_port),
        "STEPCALL_PORT": str(web_port),
        "STEPCALL_MODEL_URL": f"ws://127.0.0.1:{model_port}/v1/session",
        "STEPCALL_FLOWS_DIR": str(flows),
        "STEPCALL_DATABASE_URL": f"sqlite:///{logs}/calls.db",
        "PYTHONUNBUFFERED": "1",
        "HF_HUB_OFFLINE": "1",
    }
    for name in ("TWILIO_AUTH_TOKEN", "STEPCALL_STREAM_SECRET", "STEPCALL_MODEL_TOKEN"):
        env.pop(name, None)  # an unauthenticated loopback stack
    args = ["model", "--backend", backend, "--device", "cpu"]
    if backend != "cpu":
        args += ["--tiny-checkpoint", str(workdir / "tiny-checkpoint")]
    cmd = [sys.executable, "-m", "bots.cli"]
    model_log, web_log = logs / "model.log", logs / "web.log"
    t0 = time.perf_counter()
    with model_log.open("w") as mh, web_log.open("w") as wh:
        model = subprocess.Popen(
            [*cmd, *args], cwd=ROOT, env=env, stdout=mh, stderr=subprocess.STDOUT
        )
        web = None
        try:
            _wait_http(f"http://127.0.0.1:{model_port}/readyz", model, model_log, 600)
            web = subprocess.Popen(
                [*cmd, "serve"], cwd=ROOT, env=env, stdout=wh, stderr=subprocess.STDOUT
            )
            _wait_http(f"http://127.0.0.1:{web_port}/healthz", web, web_log, 180)
            start_s = time.perf_counter() - t0
            lines_s = _wait_spoken_lines(f"http://127.0.0.1:{web_port}/readyz", 120)
            url = f"ws://127.0.0.1:{web_port}/twilio/stream"
            rows = asyncio.run(_calls(url, calls, wait_secs))
        finally:
            if web is not None:
                _stop(web)
            _stop(model)
    return {
        "backend": backend,
        "start_s": round(start_s, 1),
        "lines_ready_s": round(lines_s, 1),
        "calls": rows,
        "logs": str(logs),
    }


def _wait_spoken_lines(url: str, timeout: float) -> float:
    """Seconds until the bot server's ``/readyz`` says its verbatim greetings are rendered: a
    server is ready for its first call then (``make demo`` waits for the same)."""
    import urllib.error
    import urllib.request

    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        try:
            with urllib.request.urlopen(url, timeout=5):
                break
        except urllib.error.HTTPError as e:  # 503: still rendering
            if e.code != 503:
                raise
        time.sleep(0.2)
    return time.perf_counter() - t0


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summary(res: dict) -> dict:
    """Calls 1, 2 and 10 (or the last), p50/p95 over all calls, ratio call1/last, per metric."""
    rows = res["calls"]
    out: dict = {}
    for metric in ("greeting_ms", "first_turn_ms"):
        vals = [r[metric] for r in rows]

        def at(i: int, vals=vals) -> float | None:
            return vals[i - 1] if len(vals) >= i else None

        last = vals[min(10, len(vals)) - 1] if vals else None
        seen = [v for v in vals if v is not None]
        first = at(1)
        out[metric] = {
            "call1": first,
            "call2": at(2),
            "call10": at(10),
            "p50": pct(seen, 0.5),
            "p95": pct(seen, 0.95),
            "ratio_call1_last": (first / last) if first and last else None,
        }
    return out


def table(results: list[dict]) -> str:
    names = [r["backend"] for r in results]
    lines = [
        "| metric | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    sums = [summary(r) for r in results]
    for metric, label in (("greeting_ms", "greeting"), ("first_turn_ms", "first turn")):
        for key, name in (
            ("call1", "call 1"),
            ("call2", "call 2"),
            ("call10", "call 10"),
            ("p50", "p50"),
            ("p95", "p95"),
        ):
            cells = [
                _fmt(s[metric][key]) + (" ms" if s[metric][key] is not None else "") for s in sums
            ]
            lines.append(f"| {label} {name} | " + " | ".join(cells) + " |")
        ratios = [s[metric]["ratio_call1_last"] for s in sums]
        cells = ["-" if r is None else f"{r:.2f}x" for r in ratios]
        lines.append(f"| {label} call1/call10 | " + " | ".join(cells) + " |")
    cells = [f"{r.get('lines_ready_s', 0):.1f} s" for r in results]
    lines.append("| greetings rendered after serve is up | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", choices=[*BACKENDS, "all"], default="all")
    p.add_argument("--calls", type=int, default=10)
    p.add_argument("--wait-secs", type=float, default=60.0, help="max wait for each bot reply")
    p.add_argument("--out", type=Path, help="write the per-call numbers and summary as JSON")
    a = p.parse_args(argv)
    if a.calls < 1:
        p.error("--calls must be >= 1")
    # SIGTERM unwinds like Ctrl-C, so the started model service and bot server are stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    wanted = list(BACKENDS) if a.backend == "all" else [a.backend]
    results, skipped = [], {}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="first-call-") as tmp:
        for backend in wanted:
            why = available(backend)
            if why:
                skipped[backend] = why
                print(f"{backend}: skipped: {why}", flush=True)
                continue
            print(f"{backend}: starting stepcall model + serve, {a.calls} calls", flush=True)
            res = run_backend(backend, a.calls, a.wait_secs, Path(tmp))
            res.pop("logs")
            res["summary"] = summary(res)
            results.append(res)
    wall = time.perf_counter() - t0
    if results:
        print()
        print(table(results))
    print(f"\nwall time {wall:.0f} s")
    if a.out:
        a.out.write_text(
            json.dumps({"results": results, "skipped": skipped, "wall_s": round(wall, 1)}, indent=2)
            + "\n"
        )
    missing = [r for r in results for c in r["calls"] if c["first_turn_ms"] is None]
    return 1 if missing or not results else 0


if __name__ == "__main__":
    sys.exit(main())
