"""stepcall.runtime.realtime: Python 3.12's asyncio.wait_for semantics, without a task per wait."""

from __future__ import annotations

import asyncio
import sys

import pytest

from stepcall.runtime import realtime as wf


async def test_result_and_no_extra_task() -> None:
    outer = asyncio.current_task()

    async def inner() -> object:
        return asyncio.current_task()

    assert await wf.wait_for(inner(), 1.0) is outer  # awaited in the caller's own task
    assert await wf.wait_for(inner(), None) is outer


async def test_timeout_raises_and_cancels_the_awaited_work() -> None:
    cancelled = asyncio.Event()

    async def slow() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with pytest.raises(TimeoutError):
        await wf.wait_for(slow(), 0.05)
    assert cancelled.is_set()
    fut = asyncio.get_running_loop().create_future()
    with pytest.raises(TimeoutError):
        await wf.wait_for(fut, 0.01)
    assert fut.cancelled()


async def test_zero_timeout_returns_a_done_result_or_times_out() -> None:
    done = asyncio.get_running_loop().create_future()
    done.set_result(7)
    assert await wf.wait_for(done, 0) == 7
    pending = asyncio.get_running_loop().create_future()
    with pytest.raises(TimeoutError):
        await wf.wait_for(pending, 0)
    assert pending.cancelled()


async def test_cancelling_the_waiter_cancels_the_work_and_is_not_a_timeout() -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def slow() -> None:
        started.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    task = asyncio.create_task(wf.wait_for(slow(), 5.0))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cancelled.is_set()


async def test_an_inner_exception_passes_through() -> None:
    async def boom() -> None:
        raise ValueError("inner")

    with pytest.raises(ValueError, match="inner"):
        await wf.wait_for(boom(), 1.0)


def test_install_replaces_pipecats_wait_for2_on_3_11(monkeypatch) -> None:
    if sys.version_info >= (3, 12):
        assert wf.install_wait_for() is False
        return
    import wait_for2

    monkeypatch.setattr(asyncio, "wait_for", wait_for2.wait_for)  # as Pipecat's import left it
    assert wf.install_wait_for() is True and asyncio.wait_for is wf.wait_for
    assert wf.install_wait_for() is False  # once
