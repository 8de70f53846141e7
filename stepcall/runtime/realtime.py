"""Tuning a real-time audio process: garbage-collector pauses, GIL hand-offs, asyncio waits.

Every call's audio passes through one event loop, so anything that stops that loop for tens of
milliseconds is a gap every caller hears. Three process-wide settings, applied at server
start-up (``bots/server.py``; the model service freezes its heap too):

**The start-up heap is frozen** (:func:`freeze_startup_heap`). CPython's full (generation 2)
collection walks every tracked object. A bot server holds ~190,000 of them once Pipecat,
FastAPI and the turn models are imported, all alive until the process ends, and a full
collection over them took ~120 ms in a 20-call load test: every call's audio stopped for that
long (an underrun per call). Freezing moves the objects that exist after start-up into the
permanent generation, which collections skip; what calls allocate later is collected as before
(a full collection after the freeze took ~0.1 ms at idle).

**The GIL switch interval is 1 ms** (:func:`shorten_gil_switch_interval`).

**asyncio.wait_for is Python 3.12's** (:func:`wait_for`, :func:`install_wait_for`), for the
bot server on Python 3.11. Pipecat replaces ``asyncio.wait_for`` with ``wait_for2`` on Python < 3.12 (the 3.11 builtin can
lose a cancellation). ``wait_for2`` wraps every awaited coroutine in a new task, with a future,
a timer and two callbacks, and Pipecat waits that way several times per 20 ms audio frame (the
output transport's queue and each audio write, the idle monitor, ...): at 50 calls, thousands
of short-lived tasks a second on the event loop that every call's audio goes through.

Python 3.12 rebuilt ``wait_for`` on ``asyncio.timeout()`` (python/cpython#98518), which waits in
the caller's own task and has none of those races; ``asyncio.timeout()`` exists in 3.11 too, with
the cancellation bookkeeping (``Task.uncancel``) it relies on. :func:`wait_for` is that 3.12
function; :func:`install_wait_for` puts it in place of Pipecat's replacement (a no-op
on 3.12+, where it is the builtin already).
"""

from __future__ import annotations

import asyncio
import gc
import sys
from typing import Any

from loguru import logger

_frozen = False


def freeze_startup_heap() -> int:
    """Collect once, then freeze every surviving object; returns how many are frozen.

    Only the first call in a process freezes (the start-up heap): a process that starts
    several servers (tests, an embedding app) would otherwise keep freezing the objects of
    earlier ones, which then never leave memory even once they are garbage.
    """
    global _frozen
    if not _frozen:
        _frozen = True
        gc.collect()
        gc.freeze()
        logger.debug(f"garbage collector: {gc.get_freeze_count()} start-up objects frozen")
    return gc.get_freeze_count()


#: The longest a thread holds the GIL while another waits for it (Python's default is 5 ms).
GIL_SWITCH_SECS = 0.001


def shorten_gil_switch_interval() -> None:
    """Let the Smart Turn pool take the GIL within 1 ms of asking (bot server start-up).

    A busy event loop gives the GIL up only every switch interval, at blocking I/O or inside C
    code that releases it (ONNX Runtime's ``run``; NumPy on large arrays). Each Python step of
    an inference in the pool waited for that, so with 50 calls on 2 cores a turn's verdict
    queued behind the loop: 50-call voice-to-voice p50 966-1348 ms with Silero on NumPy (which
    holds the GIL) against 608-1291 ms on ONNX Runtime, and 549-720 ms on NumPy with a 1 ms
    interval (benchmarks/RESULTS.md). Never lengthens an interval already shorter.
    """
    if sys.getswitchinterval() > GIL_SWITCH_SECS:
        sys.setswitchinterval(GIL_SWITCH_SECS)


async def wait_for(fut: Any, timeout: float | None) -> Any:  # noqa: ASYNC109 (the API)
    """Wait for ``fut`` (a coroutine or future) for at most ``timeout`` seconds (3.12 semantics):
    ``TimeoutError`` when it expires, ``fut`` cancelled then; no timeout when ``timeout`` is None.
    """
    if timeout is not None and timeout <= 0:
        fut = asyncio.ensure_future(fut)
        if fut.done():
            return fut.result()
        await _cancel_and_wait(fut)
        try:
            return fut.result()
        except asyncio.CancelledError as exc:
            raise TimeoutError from exc
    async with asyncio.timeout(timeout):
        return await fut


async def _cancel_and_wait(fut: asyncio.Future) -> None:
    """Cancel ``fut`` and wait until it is done (its own cancellation may take a while)."""
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()

    def release(_: Any) -> None:
        if not waiter.done():
            waiter.set_result(None)

    fut.add_done_callback(release)
    try:
        fut.cancel()
        await waiter
    finally:
        fut.remove_done_callback(release)


def install_wait_for() -> bool:
    """Use :func:`wait_for` as ``asyncio.wait_for`` in this process (Python < 3.12 only);
    True when it replaced something."""
    if sys.version_info >= (3, 12) or asyncio.wait_for is wait_for:
        return False
    import pipecat  # noqa: F401  (its import installs wait_for2, which this replaces)

    asyncio.wait_for = wait_for
    return True
