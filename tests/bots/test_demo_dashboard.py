"""`make demo` turns the dashboard on: scripts/demo_env.sh (sourced by scripts/demo.sh) makes a
random dashboard token and keeps call records on, and the URL `stepcall dashboard-url` prints
(as the demo does) opens the dashboard of a real `stepcall serve` started with that env."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from bots.cli import dashboard_url
from stepcall.settings import Settings
from tests.e2e.conftest import _start, _stop, _wait_http, free_port

ROOT = Path(__file__).resolve().parents[2]
BIN = str(Path(sys.executable).parent)


def _demo_env(**given: str) -> dict[str, str]:
    """The env demo.sh runs its servers with: scripts/demo_env.sh sourced over ``given``."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("STEPCALL_DASHBOARD_TOKEN", "STEPCALL_DATABASE_URL")}
    env.update(given)
    out = subprocess.run(
        ["bash", "-c", f'set -euo pipefail; BIN="{BIN}"; source scripts/demo_env.sh; '
         'echo "TOKEN=$STEPCALL_DASHBOARD_TOKEN"; echo "DB=${STEPCALL_DATABASE_URL:-}"'],
        cwd=ROOT, env=env, capture_output=True, text=True, check=True,
    ).stdout
    values = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    env["STEPCALL_DASHBOARD_TOKEN"] = values["TOKEN"]
    if values["DB"]:
        env["STEPCALL_DATABASE_URL"] = values["DB"]
    return env


def test_demo_env_makes_a_random_token_and_keeps_records_on() -> None:
    a, b = _demo_env(), _demo_env()
    assert len(a["STEPCALL_DASHBOARD_TOKEN"]) >= 20
    assert a["STEPCALL_DASHBOARD_TOKEN"] != b["STEPCALL_DASHBOARD_TOKEN"]
    assert _demo_env(STEPCALL_DASHBOARD_TOKEN="mine")["STEPCALL_DASHBOARD_TOKEN"] == "mine"
    assert _demo_env(STEPCALL_DATABASE_URL="none")["STEPCALL_DATABASE_URL"].startswith("sqlite:")
    assert "demo_env.sh" in (ROOT / "scripts" / "demo.sh").read_text()
    assert "dashboard-url" in (ROOT / "scripts" / "demo.sh").read_text()


def test_dashboard_url_refuses_when_the_dashboard_is_off() -> None:
    with pytest.raises(ValueError, match="DASHBOARD_TOKEN"):
        dashboard_url(Settings(database_url="sqlite:///x.db"))
    with pytest.raises(ValueError, match="records are off"):
        dashboard_url(Settings(dashboard_token="t", database_url=None))


@pytest.mark.slow
def test_printed_dashboard_url_opens_the_dashboard(tmp_path) -> None:
    port = free_port()
    env = _demo_env(STEPCALL_PORT=str(port), STEPCALL_FLOWS_DIR=str(ROOT / "flows"),
                    STEPCALL_DATABASE_URL=f"sqlite:///{tmp_path}/calls.db")
    env["STEPCALL_MODEL_URL"] = f"ws://127.0.0.1:{free_port()}/v1/session"  # not needed here
    env["PYTHONPATH"] = str(ROOT)
    printed = subprocess.run([sys.executable, "-m", "bots.cli", "dashboard-url"], env=env,
                             capture_output=True, text=True, check=True).stdout.strip()
    token = env["STEPCALL_DASHBOARD_TOKEN"]
    assert printed == f"http://127.0.0.1:{port}/dashboard?token={token}"
    web = _start(["serve"], env, tmp_path / "web.log")
    try:
        _wait_http(f"http://127.0.0.1:{port}/healthz", web, timeout=120)
        ok = httpx.get(printed, follow_redirects=True, timeout=10)
        assert ok.status_code == 200 and "<html" in ok.text.lower(), ok.text[:300]
        wrong = httpx.get(printed.replace(token, "wrong"), follow_redirects=False, timeout=10)
        assert wrong.status_code in (302, 303, 401, 403), wrong.status_code
    finally:
        _stop(web)
