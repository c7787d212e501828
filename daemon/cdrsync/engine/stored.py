"""The stored list copies a window stream's re-read skips: their hashes, read once per cycle.

A source that can skip records identical to their stored list copies (Acefone, ``SkipsStored``)
is told their content hashes before it reads a window. A live cycle reads two windows in the
half hour after an IST hour starts (the lookback reaches into the last hour): one query for both
instead of one per window, a round trip per cycle saved at a thousand accounts (issue 10). The
skip stays right with the larger set: a hash identifies a record's exact bytes (its id
included), and the set holds only this account's list copies, whose upsert would write nothing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import TYPE_CHECKING

from cdrsync.model import Window

if TYPE_CHECKING:
    from cdrsync.store.store import Store

# A window's stored copies are looked up this far around it: a call's start time read in the
# account's zone may fall an hour off the window's own bounds around a DST change.
STORED_MARGIN = dt.timedelta(hours=1)

CYCLE_HASHES_MOST = 4000
"""A cycle's span holding more stored list copies than this (a backfill's many windows) is read
window by window instead: the set in memory and the first query stay small."""


class StoredHashes:
    """One account's stored list hashes for the windows of the cycle being read."""

    def __init__(
        self, store: Store, vendor: str, account: str, *, most: int = CYCLE_HASHES_MOST
    ) -> None:
        self._store = store
        self._vendor = vendor
        self._account = account
        self._most = most
        self._span: Window | None = None
        self._hashes: frozenset[bytes] = frozenset()

    async def read_cycle(self, windows: Sequence[Window]) -> None:
        """Read the hashes of every window of a cycle at once, unless there are too many."""
        self.clear()
        if len(windows) < 2:
            return  # one window: its own query is as cheap, and reads no more than it needs
        span = Window(
            min(w.start for w in windows) - STORED_MARGIN,
            max(w.end for w in windows) + STORED_MARGIN,
        )
        found = await self._store.list_hashes_upto(
            self._vendor, self._account, span.start, span.end, self._most
        )
        if found is not None:
            self._span, self._hashes = span, found

    def clear(self) -> None:
        """Forget the cycle's set (the cycle is read)."""
        self._span, self._hashes = None, frozenset()

    async def of(self, window: Window) -> frozenset[bytes]:
        """The hashes to skip while reading ``window`` (or a part of it): the cycle's set when
        it covers the window, else the window's own."""
        start, end = window.start - STORED_MARGIN, window.end + STORED_MARGIN
        if self._span is not None and self._span.start <= start and end <= self._span.end:
            return self._hashes
        return await self._store.list_hashes(self._vendor, self._account, start, end)
