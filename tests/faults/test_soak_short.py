"""The soak benchmark in its short CI mode: continuous normal, garbage and dropped calls against
a bot server child process; its RSS and open file descriptors must stay within the stated bounds
and no call may be left active (``benchmarks/soak_test.py --ci``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_soak_ci_mode_passes_its_bounds(tmp_path):
    report = tmp_path / "soak.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "soak_test.py"), "--ci", "--json", str(report)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "PASS" in run.stdout
    data = json.loads(report.read_text())
    assert data["calls"] >= 10 and data["verdict"]["active_calls_at_end"] == 0
    assert data["ok"].get("normal", 0) >= 3 and data["ok"].get("drop", 0) >= 1
    assert data["ok"].get("garbage", 0) >= 1
    assert len(data["samples"]) >= 8
