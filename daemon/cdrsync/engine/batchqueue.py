"""A queue between a stream's reader and its writer, bounded by the rows it holds, and the
pipeline that runs the two together.

Bounding by rows, not by batches, keeps memory flat however dense the vendor's windows are: a
window of 4 000 calls takes the room of forty windows of 100. With ``hold`` the bound also
covers the rows the writer has taken and not yet committed (until ``done``), and the reader can
wait for room before it reads a window (``wait_room``): then the rows in memory stay within the
bound whatever the window size, not the bound plus a window being written plus one being read.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Coroutine, Sized
from typing import Any, Generic, TypeVar

from cdrsync.errors import CdrsyncError

T = TypeVar("T", bound=Sized)


class RowQueue(Generic[T]):
    """FIFO of batches holding at most ``max_rows`` rows (one batch always fits, however big).

    With ``hold``, rows the consumer took count against ``max_rows`` until it calls ``done``."""

    def __init__(self, max_rows: int, *, hold: bool = False) -> None:
        self._max_rows = max_rows
        self._hold = hold
        self._items: deque[T | None] = deque()
        self._rows = 0
        self._held = 0
        self._waiting = 0
        self._changed = asyncio.Condition()

    @property
    def rows(self) -> int:
        """Rows waiting now."""
        return self._rows

    @property
    def held(self) -> int:
        """Rows the consumer took and has not reported ``done`` (always 0 without ``hold``)."""
        return self._held

    @property
    def waiting(self) -> int:
        """Producers held back now for room (in ``put`` or ``wait_room``): the bound at work."""
        return self._waiting

    async def _wait_fits(self, size: int) -> None:
        """Wait, holding the condition, until ``size`` more rows fit."""
        if self._fits(size):
            return
        self._waiting += 1
        try:
            await self._changed.wait_for(lambda: self._fits(size))
        finally:
            self._waiting -= 1

    def _fits(self, size: int) -> bool:
        used = self._rows + self._held
        return not size or not used or used + size <= self._max_rows

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
            # An empty item (the end marker, a window record) takes no room and never waits;
            # any item fits when nothing else is queued or held.
            await self._wait_fits(size)
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

    async def wait_room(self, rows: int) -> None:
        """Wait until ``rows`` more would fit (at once if nothing is queued or held): a reader
        calls it before it reads a window of about ``rows`` rows into memory."""
        async with self._changed:
            await self._wait_fits(rows)

    async def done(self) -> None:
        """The consumer has finished with every item it took (committed them): their rows no
        longer count against ``max_rows``."""
        async with self._changed:
            self._held = 0
            self._changed.notify_all()

    def _take(self) -> T | None:
        item = self._items.popleft()
        size = len(item) if item is not None else 0
        self._rows -= size
        if self._hold:
            self._held += size
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
