"""An unchanged re-read writes nothing: no row version, and no WAL per row either."""

from __future__ import annotations

import datetime as dt

import asyncpg

from conftest import build_call

ROWS = 2000
NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)


async def test_an_unchanged_batch_generates_no_wal_per_row(dsn, store):
    """Writing the same 2 000 calls again changes no row and logs no row lock: the WAL it
    generates stays below what one lock record per row would take."""
    await store.ensure_stream("main/list", vendor="acefone", account="main", kind="window")
    calls = [build_call(f"k{n:05}") for n in range(ROWS)]
    first = await store.write_batch("main/list", calls, now=NOW)
    assert first.inserted == ROWS
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CHECKPOINT")  # every page's next change would log a full image
        lsn = await conn.fetchval("SELECT pg_current_wal_lsn()")
        again = await store.write_batch("main/list", calls, now=NOW + dt.timedelta(minutes=5))
        wal = await conn.fetchval("SELECT pg_current_wal_lsn() - $1::pg_lsn", lsn)
        touched = await conn.fetchval(
            "SELECT count(*) FROM cdrsync.calls WHERE updated_at > $1 OR xmax <> 0", NOW
        )
    finally:
        await conn.close()
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, ROWS)
    assert touched == 0
    # The batch's own bookkeeping (sync_state, commit) is a few pages at most; a lock per row
    # would be over 50 bytes each, and a full page image per page of calls after the checkpoint.
    assert wal < 16 * ROWS, wal
