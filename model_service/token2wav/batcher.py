"""Async front end that batches concurrent sessions' token2wav work off the event loop.

Sessions call ``await batcher.push(state, codes)`` / ``await batcher.flush(state)`` from their own
tasks. The batcher waits up to ``max_wait_ms`` after the first request for others to arrive, then
runs them all in ONE worker-thread step: requests are split into rounds in which each stream
appears at most once (preserving every stream's order), each round's pushes go through
``Token2Wav.push_many`` (one batched flow pass) and its flushes through ``flush_many``. A single
worker thread serialises steps, so a ``StreamState`` is never touched by two threads at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from .engine import StreamState, Token2Wav

log = logging.getLogger(__name__)


@dataclass
class _Request:
    state: StreamState
    codes: list[int] | None  # None = flush
    future: asyncio.Future = field(repr=False)


class Token2WavBatcher:
    """Collects push/flush requests from concurrent sessions into batched worker steps."""

    def __init__(self, t2w: Token2Wav, max_wait_ms: float = 5.0) -> None:
        self.t2w = t2w
        self.max_wait = max_wait_ms / 1000.0
        self._queue: asyncio.Queue[_Request] | None = None
        self._task: asyncio.Task | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="token2wav")
        self.batch_sizes: list[int] = []  # sessions per push_many call (for metrics/tests)

    def _ensure(self) -> asyncio.Queue[_Request]:
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="token2wav-batcher"
            )
        return self._queue

    async def push(self, state: StreamState, codes: Iterable[int]) -> list[np.ndarray]:
        fut = asyncio.get_running_loop().create_future()
        self._ensure().put_nowait(_Request(state, list(codes), fut))
        return await fut

    async def flush(self, state: StreamState) -> np.ndarray:
        fut = asyncio.get_running_loop().create_future()
        self._ensure().put_nowait(_Request(state, None, fut))
        return await fut

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._pool.shutdown(wait=True)

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.max_wait
            while True:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), timeout))
                except TimeoutError:
                    break
            try:
                results = await loop.run_in_executor(self._pool, self._step, batch)
            except Exception as exc:  # noqa: BLE001 - delivered to every waiter
                log.exception("token2wav batch step failed")
                for req in batch:
                    if not req.future.done():
                        req.future.set_exception(exc)
                continue
            for req, res in zip(batch, results, strict=True):
                if req.future.done():
                    continue
                if isinstance(res, Exception):
                    req.future.set_exception(res)
                else:
                    req.future.set_result(res)

    def _step(self, batch: list[_Request]) -> list[object]:
        """Worker thread: run ``batch`` in per-stream-ordered rounds."""
        results: list[object] = [None] * len(batch)
        remaining = list(range(len(batch)))
        while remaining:
            seen: set[int] = set()
            round_idx: list[int] = []
            later: list[int] = []
            for i in remaining:
                sid = id(batch[i].state)
                if sid in seen:
                    later.append(i)  # this stream's next request waits for the next round
                elif batch[i].state.closed:
                    results[i] = RuntimeError(
                        f"stream {batch[i].state.stream_id} is already flushed"
                    )
                    seen.add(sid)
                else:
                    seen.add(sid)
                    round_idx.append(i)
            pushes = [i for i in round_idx if batch[i].codes is not None]
            flushes = [i for i in round_idx if batch[i].codes is None]
            if pushes:
                try:
                    out = self.t2w.push_many(
                        [(batch[i].state, batch[i].codes or []) for i in pushes]
                    )
                    self.batch_sizes.append(len(pushes))
                    for i, r in zip(pushes, out, strict=True):
                        results[i] = r
                except Exception as exc:  # noqa: BLE001
                    for i in pushes:
                        results[i] = exc
            if flushes:
                try:
                    out_f = self.t2w.flush_many([batch[i].state for i in flushes])
                    for i, r in zip(flushes, out_f, strict=True):
                        results[i] = r
                except Exception as exc:  # noqa: BLE001
                    for i in flushes:
                        results[i] = exc
            remaining = later
        return results
