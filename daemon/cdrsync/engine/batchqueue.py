"""A queue between a stream's reader and its writer, bounded by the rows it holds, and the
pipeline that runs the two together.

Bounding by rows, not by batches, keeps memory flat however dense the vendor's windows are: a
window of 4 000 calls takes the room of forty windows of 100.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Coroutine, Sized
from typing import Any, Generic, TypeVar

from cdrsync.errors import CdrsyncError

T = TypeVar("T", bound=Sized)


class RowQueue(Generic[T]):
    """FIFO of batches holding at most ``max_rows`` rows (one batch always fits, however big)."""

    def __init__(self, max_rows: int) -> None:
        self._max_rows = max_rows
        self._items: deque[T | None] = deque()
        self._rows = 0
        self._changed = asyncio.Condition()

    @property
    def rows(self) -> int:
        """Rows waiting now."""
        return self._rows

    def empty(self) -> bool:
        """Whether nothing waits."""
        return not self._items

    def head_rows(self) -> int | None:
        """Rows of the oldest item (0 for the end marker), None when empty."""
        if not self._items:
            return None
        head = self._items[0]
        return len(head) if head is not None else 0

    async def put(self, item: T | None) -> None:
        """Add ``item`` (None ends the stream) once there is room for its rows."""
        size = len(item) if item is not None else 0
        async with self._changed:
            # An empty item (the end marker, a window record) takes no room and never waits.
            await self._changed.wait_for(
                lambda: not size or not self._items or self._rows + size <= self._max_rows
            )
            self._items.append(item)
            self._rows += size
            self._changed.notify_all()

    async def get(self) -> T | None:
        """The oldest item, waiting for one."""
        async with self._changed:
            await self._changed.wait_for(lambda: bool(self._items))
            item = self._take()
            self._changed.notify_all()
            return item

    def _take(self) -> T | None:
        item = self._items.popleft()
        self._rows -= len(item) if item is not None else 0
        return item


async def run_pipeline(
    read: Coroutine[Any, Any, None],
    write: Coroutine[Any, Any, CdrsyncError | None],
    *,
    stop: asyncio.Event,
    name: str,
    on_stop: Callable[[], None],
) -> CdrsyncError | None:
    """Run a stream's reader (which ends the queue, even when cancelled) and its writer (which
    returns its first error and stops) together; the writer's error, else the reader's.

    On ``stop`` the reader is cancelled (no new request) and the writer commits what was read.
    Once the writer has failed the reader is cancelled at once: nothing it would still fetch
    could be stored this cycle, and vendors ration requests (Ozonetel: 2 bulk requests a
    minute); a reader left running would also block for good on the full queue. Any other
    exception, from either side, is a bug and is raised."""
    reader = asyncio.create_task(read, name=f"{name}:read")
    writer = asyncio.create_task(write, name=f"{name}:write")
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({reader, writer, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if not reader.done():
            if not writer.done():
                on_stop()
            reader.cancel()
        # Waited for, not awaited: the reader cancelled just above is no error.
        await asyncio.wait({reader})
        read_error: CdrsyncError | None = None
        if not reader.cancelled():
            try:
                reader.result()
            except CdrsyncError as exc:
                read_error = exc
        write_error = await writer
        return write_error or read_error
    finally:
        stopper.cancel()
        for task in (reader, writer):
            if not task.done():
                task.cancel()
