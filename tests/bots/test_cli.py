"""The `stepcall` CLI: every subcommand has --help; `flows validate` names file:line problems."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bots.cli", *args], cwd=ROOT, capture_output=True, text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    "args, expect",
    [
        ((), "serve"),
        (("serve",), "--flows"),
        (("model",), "--backend"),
        (("call",), "--say"),
        (("dial",), "--flow"),
        (("flows", "validate"), "path"),
    ],
)
def test_help(args, expect):
    proc = run_cli(*args, "--help")
    assert proc.returncode == 0, proc.stderr
    assert expect in proc.stdout


def test_flows_validate_ok_on_examples():
    proc = run_cli("flows", "validate", "flows")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK" in proc.stdout and "front_desk.yaml" in proc.stdout


def test_flows_validate_rejects_malformed_yaml_with_file_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("bot:\n  name: demo\npersona: hi\nnodes:\n  a: [unclosed\n")
    proc = run_cli("flows", "validate", str(bad))
    assert proc.returncode == 1
    assert f"{bad}:5:" in proc.stderr or f"{bad}:6:" in proc.stderr, proc.stderr


def test_flows_validate_rejects_unknown_node_with_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "bot:\n  name: demo\npersona: You help.\ninitial_node: start\nnodes:\n"
        "  start:\n    instructions: Greet.\n    transitions:\n      - to: nowhere\n"
        "        when: always\n"
    )
    proc = run_cli("flows", "validate", str(bad))
    assert proc.returncode == 1
    assert f"{bad}:9:" in proc.stderr and "nowhere" in proc.stderr, proc.stderr
