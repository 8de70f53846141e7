"""Fault-injection helpers: a PostgreSQL cluster we can stop and start, and a model-service
relay that stalls.

The faults are real: a stopped database server, a delayed relay. Only the model is a stand-in
(``pipeline/canned_model_service.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PgCluster:
    """A private PostgreSQL cluster that a test may stop and start again (same port)."""

    root: str
    data: str
    port: int
    pg_ctl: str
    prefix: list[str]

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            [*self.prefix, self.pg_ctl, "-D", self.data, *args],
            check=True, capture_output=True, timeout=90,
        )

    def start(self) -> None:
        self._ctl(
            "-l", os.path.join(self.root, "pg.log"), "-w", "-t", "60", "-o",
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off", "start",
        )

    def stop(self) -> None:
        self._ctl("-m", "immediate", "-w", "stop")


@pytest.fixture
def pg_cluster() -> Iterator[PgCluster]:
    """A running throw-away PostgreSQL cluster (skips when PostgreSQL is not installed)."""
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
    root = tempfile.mkdtemp(prefix="stepcall-pg-fault-")
    if user is not None:
        os.chown(root, user.pw_uid, user.pw_gid)
    cluster = PgCluster(root, os.path.join(root, "data"), free_port(), pg_ctl, prefix)
    try:
        subprocess.run(
            [*prefix, initdb, "-D", cluster.data, "-A", "trust", "-U", "postgres", "--no-sync"],
            check=True, capture_output=True, timeout=120,
        )
        cluster.start()
    except (subprocess.SubprocessError, OSError) as e:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"could not start a PostgreSQL cluster: {e}")
    try:
        yield cluster
    finally:
        with contextlib.suppress(Exception):
            cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class ModelProxy:
    """A WebSocket relay between the bot and the model service that can stall or cut.

    ``stall_secs`` > 0 delays the next server → client text message containing ``stall_on``
    (once) by that long: the model service hangs for a moment mid-call.
    """

    upstream: str
    stall_secs: float = 0.0
    stall_on: str = "response.started"
    stalls: int = 0
    connections: int = 0

    async def _relay(self, client: ServerConnection) -> None:
        self.connections += 1
        async with connect(self.upstream, compression=None, max_size=None) as server:

            async def up() -> None:
                async for msg in client:
                    await server.send(msg)

            async def down() -> None:
                async for msg in server:
                    if self.stall_secs > 0 and isinstance(msg, str) and self.stall_on in msg:
                        stall, self.stall_secs = self.stall_secs, 0.0
                        self.stalls += 1
                        await asyncio.sleep(stall)
                    await client.send(msg)

            tasks = [asyncio.create_task(up()), asyncio.create_task(down())]
            with contextlib.suppress(ConnectionClosed):
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _handle(self, client: ServerConnection) -> None:
        with contextlib.suppress(ConnectionClosed, OSError):
            await self._relay(client)

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[str]:
        async with serve(self._handle, "127.0.0.1", 0, compression=None, max_size=None) as srv:
            port = next(iter(srv.sockets)).getsockname()[1]
            yield f"ws://127.0.0.1:{port}/v1/session"
            srv.close()



@pytest.fixture
def model_proxy():
    """``model_proxy(upstream_url) -> ModelProxy`` (serve it with ``async with p.serving()``)."""
    return ModelProxy
