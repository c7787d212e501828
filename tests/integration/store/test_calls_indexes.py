"""The indexes of calls serve the documented queries (docs/queries.md) they are there for."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import asyncpg

from cdrsync.store.queries import QUERIES
from conftest import build_call

GUIDE = Path(__file__).parents[3] / "docs" / "queries.md"
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


def documented(heading: str) -> str:
    """The SQL block under the guide's heading that starts with ``heading``."""
    text = GUIDE.read_text(encoding="utf-8")
    section = text.split(f"### {heading}", 1)[1]
    return re.findall(r"```sql\n(.*?)```", section, flags=re.S)[0].strip().rstrip(";")


async def test_the_last_days_queries_read_the_start_time_index_on_a_long_history(dsn, store):
    """With a year of calls stored oldest first, 'the last 7 days' reads the BRIN index on
    started_at instead of scanning the whole table."""
    await store.ensure_stream("main/list", vendor="acefone", account="main", kind="window")
    days, per_day = 365, 60
    for day in range(days, 0, -30):  # oldest first, as windows are read
        calls = [
            build_call(
                f"k{d}-{n}",
                started_at=NOW - dt.timedelta(days=d, minutes=n * 7),
                local_date=(NOW - dt.timedelta(days=d)).date(),
            )
            for d in range(day, max(day - 30, 0), -1)
            for n in range(per_day)
        ]
        await store.write_batch("main/list", calls, now=NOW)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("ANALYZE cdrsync.calls")
        plan = await conn.fetchval(f"EXPLAIN (FORMAT JSON) {documented('8.')}")
    finally:
        await conn.close()
    assert "calls_started_at_brin" in plan, plan


async def test_a_windows_stored_hashes_are_read_from_their_index(dsn, store):
    """The stored-hash lookup of one window reads the partial index of list copies, not the
    whole table (the BRIN index reads every page VACUUM has not summarized yet)."""
    await store.ensure_stream("main/list", vendor="acefone", account="main", kind="window")
    calls = [build_call(f"k{n}", started_at=NOW - dt.timedelta(minutes=n)) for n in range(0, 3000)]
    await store.write_batch("main/list", calls, now=NOW)
    start, end = NOW - dt.timedelta(hours=2), NOW - dt.timedelta(hours=1)
    conn = await asyncpg.connect(dsn, server_settings={"search_path": "cdrsync"})
    try:
        await conn.execute("ANALYZE calls")
        plan = await conn.fetchval(
            f"EXPLAIN (FORMAT JSON) {QUERIES['list_hashes']}", "acefone", "main", start, end, None
        )
    finally:
        await conn.close()
    assert "calls_list_started_at_idx" in plan, plan
    assert await store.list_hashes("acefone", "main", start, end) == {
        c.content_hash for c in calls if c.started_at and start <= c.started_at < end
    }
