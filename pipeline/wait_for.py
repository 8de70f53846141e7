"""``asyncio.wait_for`` as Python 3.12 implements it, for the bot server on Python 3.11.

Pipecat replaces ``asyncio.wait_for`` with ``wait_for2`` on Python < 3.12 (the 3.11 builtin can
lose a cancellation). ``wait_for2`` wraps every awaited coroutine in a new task, with a future,
a timer and two callbacks, and Pipecat waits that way several times per 20 ms audio frame (the
output transport's queue and each audio write, the idle monitor, ...): at 50 calls, thousands
of short-lived tasks a second on the event loop that every call's audio goes through.

Python 3.12 rebuilt ``wait_for`` on ``asyncio.timeout()`` (python/cpython#98518), which waits in
the caller's own task and has none of those races; ``asyncio.timeout()`` exists in 3.11 too, with
the cancellation bookkeeping (``Task.uncancel``) it relies on. :func:`wait_for` is that 3.12
function; :func:`install` puts it in place of Pipecat's replacement (a no-op on 3.12+, where it
is the builtin already).
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any


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


def install() -> bool:
    """Use :func:`wait_for` as ``asyncio.wait_for`` in this process (Python < 3.12 only);
    True when it replaced something."""
    if sys.version_info >= (3, 12) or asyncio.wait_for is wait_for:
        return False
    import pipecat  # noqa: F401  (its import installs wait_for2, which this replaces)

    asyncio.wait_for = wait_for
    return True
