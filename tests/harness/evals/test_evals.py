"""``stepcall eval``: the example flows' evals pass on the tiny checkpoints (the CI run), a
failing expectation fails the run, and bad eval files are reported with file:line.

Everything is real: the CLI in a subprocess, the model service (reference backend on tiny
checkpoints, or the canned stand-in speaking flite speech), the bot server, the caller
simulator over Twilio Media Streams, Whisper tiny.en on the bot's audio. Only Twilio's REST API
is a loopback stand-in (``harness/evals/twilio_standin.py``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from harness.evals import spec
from harness.evals.spec import EvalSpecError, load_evals, parse_eval
from pipeline.flows.format.schema import Either, ListOf, Obj

ROOT = Path(__file__).resolve().parents[3]


def _eval(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "STEPCALL_EVAL_CACHE": os.environ.get("STEPCALL_EVAL_CACHE")
           or str(Path.home() / ".cache" / "stepcall" / "evals")}
    return subprocess.run(
        [sys.executable, "-m", "bots.cli", "eval", *args], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=600,
    )


def test_example_flow_evals_pass_and_write_junit(tmp_path) -> None:
    junit = tmp_path / "evals.xml"
    proc = _eval(["evals/", "--junit", str(junit)], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "0 failed" in proc.stdout
    root = ET.parse(junit).getroot()
    cases = root.findall(".//testcase")
    suites = {s.get("name") for s in root.findall("testsuite")}
    assert suites == {"front_desk", "pizza_order"}
    assert len(cases) == sum(len(ev.scenarios) for ev in load_evals(ROOT / "evals")) >= 4
    assert root.get("failures") == "0" and root.get("errors") == "0"
    assert not root.findall(".//failure") and not root.findall(".//error")
    out = "\n".join(c.findtext("system-out") or "" for c in cases)
    # the observations behind the passes are in the report: latencies, tools, transfer
    assert "ok  call: transferred to +12345678901" in out
    assert "ok  turn 1: tool transfer_call({'number': '+12345678901'})" in out  # after the greeting
    assert "ok  call: outcome caller_hung_up" in out


FAILING = """\
flow: {flow}
model: {{canned: "We are open from nine to six, Monday to Friday.", text: false}}
caller: {{pause_secs: 0.3, quiet_secs: 0.8, greeting_wait_secs: 6, wait_secs: 8}}
scenarios:
  - name: the asr hears the opening hours
    turns:
      - say: What time do you open?
        expect:
          within_ms: 5000
          transcript: {{contains: [open from, monday to friday], matches: "(nine|9) to (six|6)"}}
  - name: expects words the bot never says
    turns:
      - say: What time do you open?
        expect:
          transcript: {{contains: [pepperoni pizza]}}
    expect:
      outcome: transferred
"""


def test_a_failing_expectation_fails_the_run(tmp_path) -> None:
    """Bot speech without text: only Whisper can check it. One scenario passes on what the ASR
    really heard; the other expects words never said and an outcome that did not happen."""
    evals = tmp_path / "evals"
    evals.mkdir()
    (evals / "canned.yaml").write_text(FAILING.format(flow=ROOT / "flows" / "front_desk.yaml"))
    junit = tmp_path / "out.xml"
    proc = _eval([str(evals), "--junit", str(junit)], tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr[-3000:]
    assert "1 passed, 1 failed" in proc.stdout
    assert "FAIL turn 1: transcript contains 'pepperoni pizza': got asr:" in proc.stdout
    assert "FAIL call: outcome transferred: got outcome caller_hung_up" in proc.stdout
    root = ET.parse(junit).getroot()
    assert root.get("tests") == "2" and root.get("failures") == "1"
    cases = {c.get("name"): c for c in root.iter("testcase")}
    assert cases["the asr hears the opening hours"].find("failure") is None
    heard = cases["the asr hears the opening hours"].findtext("system-out")
    assert "asr:" in heard and "monday to friday" in heard.lower()
    assert cases["expects words the bot never says"].find("failure") is not None


def test_eval_files_are_validated_with_file_and_line(tmp_path) -> None:
    text = """\
flow: missing.yaml
scenarios:
  - name: one
    turns:
      - say: hi
        dtmf: "1"
      - silence: -1
    expect:
      outcome: exploded
      wat: 1
"""
    with pytest.raises(EvalSpecError) as err:
        parse_eval(text, tmp_path / "bad.yaml")
    msgs = [str(i) for i in err.value.issues]
    f = str(tmp_path / "bad.yaml")
    assert any(m.startswith(f"{f}:1:7: flow: no flow file") for m in msgs), msgs
    assert any(m.startswith(f"{f}:5:9: scenarios[0].turns[0]: a turn needs exactly one") for m in msgs)
    assert any(m.startswith(f"{f}:7:18: scenarios[0].turns[1].silence: must be at least 0") for m in msgs)
    assert any("9:16: scenarios[0].expect.outcome: 'exploded' is not one of" in m for m in msgs)
    assert any("10:7: scenarios[0].expect: unknown key 'wat'" in m for m in msgs)


def _keys(t: object) -> set[str]:
    """Every key name declared under a schema type."""
    if isinstance(t, Either):
        return _keys(t.short) | _keys(t.long)
    if isinstance(t, ListOf):
        return _keys(t.item)
    if isinstance(t, Obj):
        return {p.name for p in t.props}.union(*(_keys(p.type) for p in t.props))
    return set()


def test_the_module_docstring_names_every_declared_key() -> None:
    keys = _keys(spec.EVAL)
    assert {"flow", "scenarios", "dtmf", "no_reply", "not_contains", "after_tool"} <= keys
    missing = sorted(k for k in keys if not re.search(rf"\b{k}\b", spec.__doc__ or ""))
    assert not missing, f"harness/evals/spec.py's docstring does not name {missing}"


def test_the_cli_reports_invalid_files_with_exit_2(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("flow: [1\n")
    proc = _eval([str(bad)], tmp_path)
    assert proc.returncode == 2
    assert f"{bad}:" in proc.stderr and "YAML syntax error" in proc.stderr
