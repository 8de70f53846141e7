"""The shipped flows' facts (hours, names) asked of the real CPU backend: ``stepcall eval
evals/cpu/`` (Whisper tiny.en -> Qwen2.5-1.5B via llama.cpp -> Piper, one backend loaded once
for every scenario) passes. Skipped only when the CPU models are not installed (in CI they are).
"""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from harness.evals.spec import load_evals
from model_service.backends.cpu import model_files as cpu_models

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[3]


def test_cpu_backend_answers_the_flows_facts(tmp_path) -> None:
    try:
        cpu_models.resolve_cpu_models()  # also assembles the Qwen GGUF once
    except cpu_models.MissingModelError as e:
        pytest.skip(f"cpu backend models not installed: {e}")
    evals = load_evals(ROOT / "evals" / "cpu")
    assert {ev.flow.name for ev in evals} >= {"front_desk.yaml", "hotline.yaml"}
    assert all(sc.model.kind == "cpu" for ev in evals for sc in ev.scenarios)
    junit = tmp_path / "cpu-evals.xml"
    proc = subprocess.run(
        [sys.executable, "-m", "bots.cli", "eval", "evals/cpu/", "--junit", str(junit)],
        cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=480,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    root = ET.parse(junit).getroot()
    cases = root.findall(".//testcase")
    assert len(cases) == sum(len(ev.scenarios) for ev in evals)
    assert root.get("failures") == "0" and root.get("errors") == "0"
    out = "\n".join(c.findtext("system-out") or "" for c in cases)
    assert "transcript contains 'mia'" in out and "transcript contains 'sam'" in out
