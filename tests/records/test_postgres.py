"""The call-record store against a real PostgreSQL server: a private cluster started for the
test (initdb + pg_ctl in a temp folder, as the ``postgres`` user when we are root).

Skipped, with the reason, when PostgreSQL is not installed (Debian: ``apt-get install -y
postgresql``) or the cluster cannot be started.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from datetime import timedelta

import pytest

from bots.records.models import CallRecord, ToolCallRecord, TurnRecord, utcnow
from bots.records.store import CallFilter, CallStore
from pipeline.call_record_observer import CallRecordObserver


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    """URL of a throw-away PostgreSQL cluster (trust auth on 127.0.0.1)."""
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL is not installed (apt-get install -y postgresql)")
    prefix: list[str] = []
    user = None
    if os.geteuid() == 0:  # initdb refuses to run as root
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run PostgreSQL as")
        prefix = ["runuser", "-u", "postgres", "--"]
    root = tempfile.mkdtemp(prefix="stepcall-pg-")
    if user is not None:
        os.chown(root, user.pw_uid, user.pw_gid)
    data, port = os.path.join(root, "data"), _free_port()
    log = os.path.join(root, "pg.log")
    try:
        subprocess.run(
            [*prefix, initdb, "-D", data, "-A", "trust", "-U", "postgres", "--no-sync"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        subprocess.run(
            [
                *prefix,
                pg_ctl,
                "-D",
                data,
                "-l",
                log,
                "-w",
                "-t",
                "60",
                "-o",
                f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off",
                "start",
            ],
            check=True,
            capture_output=True,
            timeout=90,
        )
    except (subprocess.SubprocessError, OSError) as e:
        detail = getattr(e, "stderr", b"") or b""
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"could not start a PostgreSQL cluster: {e} {detail.decode()[-500:]}")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*prefix, pg_ctl, "-D", data, "-m", "immediate", "stop"],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(root, ignore_errors=True)


def test_postgres_store_round_trip(pg_url):
    store = CallStore.open(pg_url)
    try:
        assert store.dialect == "postgresql"
        again = CallStore.open(pg_url)  # a second server: migrations already applied
        again.close()
        t0 = utcnow() - timedelta(minutes=5)
        store.start_call(CallRecord("PG1", "pizza", t0, from_number="+1555", to_number="+1666"))
        store.save_turn(
            TurnRecord("PG1", 1, "user", t0, ended_at=t0 + timedelta(seconds=2), audio_ms=1800.0)
        )
        store.save_turn(
            TurnRecord(
                "PG1",
                2,
                "bot",
                t0 + timedelta(seconds=3),
                text="Hi ü",
                latency_ms=512.5,
                interrupted=True,
            )
        )
        store.save_tool_call(
            ToolCallRecord(
                "PG1", "t1", "order", {"size": "L"}, t0, result={"ok": True}, ended_at=t0
            )
        )
        store.end_call("PG1", "transferred")
        call = store.get_call("PG1")
        assert call.outcome == "transferred" and call.started_at == t0
        assert [(t.role, t.text, t.interrupted) for t in call.turns] == [
            ("user", None, False),
            ("bot", "Hi ü", True),
        ]
        assert call.tool_calls[0].arguments == {"size": "L"}
        assert call.tool_calls[0].result == {"ok": True}
        assert [c.call_id for c in store.list_calls(CallFilter(number="666"))] == ["PG1"]
        assert [p.latency_ms for p in store.latency_points()] == [512.5]
    finally:
        store.close()


async def test_postgres_observer_writes_through_the_background_writer(pg_url):
    from pipecat.frames.frames import (
        BotStartedSpeakingFrame,
        BotStoppedSpeakingFrame,
        TTSTextFrame,
        UserStartedSpeakingFrame,
        UserStoppedSpeakingFrame,
    )
    from pipecat.processors.filters.identity_filter import IdentityFilter
    from pipecat.tests.utils import SleepFrame, run_test

    store = CallStore.open(pg_url)
    try:
        obs = CallRecordObserver(store, "PG-obs", bot="front_desk")
        frames = [
            UserStartedSpeakingFrame(),
            SleepFrame(sleep=0.05),
            UserStoppedSpeakingFrame(),
            TTSTextFrame("Hello there.", text_type="sentence"),
            BotStartedSpeakingFrame(),
            BotStoppedSpeakingFrame(),
        ]
        await run_test(IdentityFilter(), frames_to_send=frames, observers=[obs])
        assert store.writer.flush()
        call = store.get_call("PG-obs")
        assert call.outcome == "completed"
        assert [t.text for t in call.turns] == [None, "Hello there."]
        assert call.turns[1].latency_ms is not None
    finally:
        store.close()
