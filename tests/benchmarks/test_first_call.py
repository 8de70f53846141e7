"""``benchmarks/first_call.py`` on the tiny reference checkpoint (2 calls), so it cannot rot.

Runs the script as a user does (a subprocess from the repo root): it starts the real
``stepcall model`` + ``stepcall serve``, places the calls over the Twilio media stream and writes
the per-call numbers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from benchmarks import first_call

REPO = Path(__file__).resolve().parents[2]


def test_two_reference_calls_report_greeting_and_first_turn(tmp_path):
    out = tmp_path / "first_call.json"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "benchmarks/first_call.py", "--backend", "reference", "--calls", "2",
         "--wait-secs", "30", "--out", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(out.read_text())
    (res,) = data["results"]
    assert res["backend"] == "reference"
    calls = res["calls"]
    assert [c["call"] for c in calls] == [1, 2]
    for c in calls:
        assert c["greeting_ms"] is not None and 0 < c["greeting_ms"] < 30_000
        assert c["first_turn_ms"] is not None and 0 < c["first_turn_ms"] < 30_000
    s = res["summary"]["first_turn_ms"]
    assert s["call1"] == calls[0]["first_turn_ms"] and s["call2"] == calls[1]["first_turn_ms"]
    assert "| first turn call 1 |" in proc.stdout and "| greeting call 2 |" in proc.stdout


def test_summary_picks_calls_1_2_10_and_percentiles():
    rows = [{"greeting_ms": float(i), "first_turn_ms": 100.0 - i} for i in range(1, 13)]
    s = first_call.summary({"calls": rows})
    g, t = s["greeting_ms"], s["first_turn_ms"]
    assert (g["call1"], g["call2"], g["call10"]) == (1.0, 2.0, 10.0)
    assert g["p50"] == 6.5 and t["ratio_call1_last"] == 99.0 / 90.0
    assert first_call.summary({"calls": rows[:2]})["greeting_ms"]["call10"] is None
