"""A queue between a stream's reader and its writer, bounded by the rows it holds.

Bounding by rows, not by batches, keeps memory flat however dense the vendor's windows are: a
window of 4 000 calls takes the room of forty windows of 100.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sized
from typing import Generic, TypeVar

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
