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
