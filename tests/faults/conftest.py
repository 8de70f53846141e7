"""Fault-injection helpers: a PostgreSQL cluster we can stop and start, and a model-service
relay that stalls.

The faults are real: a stopped database server, a delayed relay. Only the model is a stand-in
(``harness/canned_model_service.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from tests.support.pg_cluster import PgCluster, running_cluster


@pytest.fixture
def pg_cluster() -> Iterator[PgCluster]:
    """A running throw-away PostgreSQL cluster (skips when PostgreSQL is not installed)."""
    with running_cluster("stepcall-pg-fault-") as cluster:
        yield cluster


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
