"""The stored list hashes a cycle skips by are read once for all its windows, unless the span
holds too many (issue 10); a window outside the cycle's span still gets its own."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import pytest

from cdrsync.engine.stored import STORED_MARGIN, StoredHashes
from cdrsync.model import CallRecord, Window
from cdrsync.store.store import Store
from support import HashQueries

T0 = dt.datetime(2024, 5, 1, 10, 0, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)


def hours(start: float, end: float) -> Window:
    return Window(T0 + start * HOUR, T0 + end * HOUR)


@pytest.mark.parametrize(
    ("cycle", "most", "read", "cycle_queries", "read_queries"),
    [
        # Two windows: one query for both, none per window.
        ([hours(0, 1), hours(1, 2)], 1000, [hours(0, 1), hours(1, 2)], 1, 0),
        # A split window's parts use the cycle's set.
        ([hours(0, 1), hours(1, 2)], 1000, [hours(1, 1.5), hours(1.5, 2)], 1, 0),
        # More stored copies in the span than allowed: window by window.
        ([hours(0, 1), hours(1, 2)], 5, [hours(0, 1), hours(1, 2)], 1, 2),
        # One window: its own query, as before.
        ([hours(0, 1)], 1000, [hours(0, 1)], 0, 1),
        # A window outside the cycle's span (the audit's re-read): its own query.
        ([hours(0, 1), hours(1, 2)], 1000, [hours(-6, -5)], 1, 1),
    ],
)
async def test_a_cycle_reads_its_stored_hashes_once_and_each_window_sees_its_copies(
    make_call: Callable[..., CallRecord],
    store: Store,
    cycle: list[Window],
    most: int,
    read: list[Window],
    cycle_queries: int,
    read_queries: int,
) -> None:
    """Each window read is told at least the hashes of its stored list copies, with the
    queries the cycle's span allows."""
    await store.ensure_stream("s", vendor="acefone", account="main", kind="window")
    calls = [make_call(f"k{n}", started_at=T0 + n * HOUR / 4) for n in range(-28, 16)]
    await store.write_batch("s", calls, now=T0)
    stored = StoredHashes(store, "acefone", "main", most=most)
    counted = store._pool = HashQueries(store._pool)

    await stored.read_cycle(cycle)
    assert counted.asked == cycle_queries
    for window in read:
        start, end = window.start - STORED_MARGIN, window.end + STORED_MARGIN
        own = {c.content_hash for c in calls if c.started_at and start <= c.started_at < end}
        assert own and own <= await stored.of(window)
    assert counted.asked == cycle_queries + read_queries


async def test_a_capped_read_says_there_were_more(
    make_call: Callable[..., CallRecord], store: Store
) -> None:
    """list_hashes_upto answers every hash up to its limit, and None past it."""
    await store.ensure_stream("s", vendor="acefone", account="main", kind="window")
    calls = [make_call(f"k{n}", started_at=T0 + n * dt.timedelta(minutes=1)) for n in range(5)]
    await store.write_batch("s", calls, now=T0)
    end = T0 + HOUR
    assert await store.list_hashes_upto("acefone", "main", T0, end, 5) == frozenset(
        c.content_hash for c in calls
    )
    assert await store.list_hashes_upto("acefone", "main", T0, end, 4) is None
