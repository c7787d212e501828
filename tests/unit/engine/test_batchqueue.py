"""The reader-writer queue bounded by rows."""

from __future__ import annotations

import asyncio

import pytest

from cdrsync.engine.batchqueue import RowQueue


@pytest.mark.timeout(10)
async def test_put_waits_for_room_by_rows_not_by_items():
    """A batch that would exceed the row budget waits until the writer takes rows out; a
    single batch larger than the budget still fits into an empty queue."""
    queue: RowQueue[list[int]] = RowQueue(max_rows=10)
    await queue.put(list(range(6)))
    blocked = asyncio.create_task(queue.put(list(range(6))))
    await asyncio.sleep(0.01)
    assert not blocked.done()
    assert queue.rows == 6
    assert len(await queue.get() or []) == 6
    await asyncio.wait_for(blocked, 1)
    assert queue.rows == 6
    assert len(await queue.get() or []) == 6
    await queue.put(list(range(25)))  # bigger than the budget, but alone
    await queue.put(None)
    assert len(await queue.get() or []) == 25
    assert await queue.get() is None
    assert queue.empty()


async def _settle() -> None:
    """Let every runnable task run until it blocks (no wall-clock wait)."""
    for _ in range(10):
        await asyncio.sleep(0)


@pytest.mark.timeout(10)
async def test_held_rows_count_until_the_writer_is_done():
    """With ``hold``, a batch the writer took still takes room until it reports ``done``."""
    queue: RowQueue[list[int]] = RowQueue(max_rows=10, hold=True)
    await queue.put(list(range(6)))
    assert len(await queue.get() or []) == 6
    assert (queue.rows, queue.held) == (0, 6)
    blocked = asyncio.create_task(queue.put(list(range(6))))
    await _settle()
    assert not blocked.done()
    await queue.done()
    await asyncio.wait_for(blocked, 5)
    assert (queue.rows, queue.held) == (6, 0)


@pytest.mark.timeout(10)
async def test_wait_room_waits_for_queued_and_held_rows():
    """A reader waits for room before reading a window; with nothing queued or held, a window
    larger than the bound goes ahead at once."""
    queue: RowQueue[list[int]] = RowQueue(max_rows=10, hold=True)
    await queue.wait_room(25)  # nothing queued or held
    await queue.put(list(range(4)))
    await queue.get()
    await queue.put(list(range(4)))
    waiting = asyncio.create_task(queue.wait_room(4))
    await _settle()
    assert not waiting.done()
    assert queue.waiting == 1
    await queue.done()
    await asyncio.wait_for(waiting, 5)
    assert queue.waiting == 0


@pytest.mark.parametrize(("window", "max_rows"), [(1, 10), (3, 10), (4, 10), (6, 10), (9, 20)])
@pytest.mark.timeout(20)
async def test_rows_in_memory_stay_within_the_bound_whatever_the_window_size(window, max_rows):
    """Rows being read, queued and written together never exceed the bound, for small and
    large windows alike (the backfill's memory does not grow with the vendor's density)."""
    queue: RowQueue[list[int]] = RowQueue(max_rows=max_rows, hold=True)
    alive = peak = 0

    async def read() -> None:
        nonlocal alive, peak
        for _ in range(30):
            await queue.wait_room(window)
            alive += window  # the window's rows are now in memory
            peak = max(peak, alive)
            await _settle()
            await queue.put(list(range(window)))
        await queue.put(None)

    async def write() -> None:
        nonlocal alive
        while (batch := await queue.get()) is not None:
            rows = len(batch)
            while (head := queue.head_rows()) and rows + head <= max_rows // 2:
                rows += len(await queue.get() or [])
            await _settle()  # the commit
            alive -= rows
            await queue.done()

    await asyncio.gather(read(), write())
    assert alive == 0
    assert peak <= max_rows
