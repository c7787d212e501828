"""The benchmark's ceiling: the store's own COPY + upsert of pre-normalized rows, nothing else;
and, under it, a plain COPY of the same rows into ``calls``.

The rows are the simulator's payloads run through ``cdrsync.vendors.acefone.normalize`` before
the clock starts, grouped as the daemon writes them at best: one window of call start time
each (on the grid anchored at the backfill's first midnight), consecutive windows coalesced
into one transaction while it stays within the writer's row target, as the writer does with the
windows waiting in its queue. Each batch is one transaction, as in
``Store.write_batch``: ``CREATE_TEMP_SQL``, COPY into ``TEMP_TABLE``, ``UPSERT_CALLS_SQL``,
commit.
"""

from __future__ import annotations

import datetime as dt
import time
import zoneinfo
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson

from _child import sim_config
from cdrsync.model import CALL_COLUMNS
from cdrsync.simulator.acefone import AcefoneSimulator
from cdrsync.store.store import (
    CREATE_TEMP_SQL,
    TEMP_TABLE,
    UPSERT_CALLS_SQL,
    server_settings,
    widen_send_buffer,
)
from cdrsync.vendors.acefone import normalize

Row = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Batches:
    """Pre-normalized rows, one list per daemon window (empty windows left out)."""

    batches: list[list[Row]]
    seconds: float  # how long rendering and normalizing took (not part of the ceiling)

    @property
    def rows(self) -> int:
        """How many rows all batches hold."""
        return sum(len(b) for b in self.batches)

    def sizes(self) -> tuple[int, float, int]:
        """Smallest, mean and largest batch."""
        sizes = [len(b) for b in self.batches]
        return min(sizes), sum(sizes) / len(sizes), max(sizes)


def prepare(
    *, records: int, days: int, seed: int, t0: float, account: str, window_s: int, zone: str
) -> Batches:
    """Render the simulator's records in-process (same seed and t0 as the served one), normalize
    them and cut them into window batches."""
    began = time.perf_counter()
    sim = AcefoneSimulator(sim_config(records, days, seed), t0=t0)
    tz = zoneinfo.ZoneInfo(zone)
    fetched_at = dt.datetime.now(dt.UTC)
    anchor = t0 - days * 86400  # the backfill's first midnight: the window grid's origin
    by_window: dict[int, list[Row]] = {}
    for _, text in sim.iter_truth_json(t0 + 3600):
        record = normalize(orjson.loads(text), account=account, zone=tz, fetched_at=fetched_at)
        assert record.started_at is not None, "the simulator always sends a start"
        index = int((record.started_at.timestamp() - anchor) // window_s)
        by_window.setdefault(index, []).append(record.row())
    return Batches(coalesce([by_window[k] for k in sorted(by_window)]), time.perf_counter() - began)


# The writer's default (sync.WindowStream): it merges queued windows into one transaction
# while the transaction stays within WRITE_ROWS rows.
WRITE_ROWS = 5000


def coalesce(windows: list[list[Row]]) -> list[list[Row]]:
    """Windows merged into transactions the way the writer merges them when it can."""
    batches: list[list[Row]] = []
    for rows in windows:
        if batches and len(batches[-1]) + len(rows) <= WRITE_ROWS:
            batches[-1].extend(rows)
        else:
            batches.append(list(rows))
    return batches


async def write(dsn: str, schema: str, batches: Batches) -> float:
    """Write every batch as the store does, one transaction each; the seconds it took."""
    conn = await asyncpg.connect(dsn, server_settings=server_settings(schema))
    await widen_send_buffer(conn)  # as the store's pool does
    try:
        began = time.perf_counter()
        for batch in batches.batches:
            async with conn.transaction():
                await conn.execute(CREATE_TEMP_SQL)
                await conn.copy_records_to_table(TEMP_TABLE, records=batch, columns=CALL_COLUMNS)
                await conn.fetchrow(UPSERT_CALLS_SQL, dt.datetime.now(dt.UTC))
        return time.perf_counter() - began
    finally:
        await conn.close()


async def write_plain(dsn: str, schema: str, batches: Batches) -> float:
    """The floor under the ceiling: the same rows and transactions COPied straight into
    ``calls`` (an empty table, so no conflict to resolve); the seconds it took."""
    conn = await asyncpg.connect(dsn, server_settings=server_settings(schema))
    await widen_send_buffer(conn)  # as the store's pool does
    try:
        began = time.perf_counter()
        for batch in batches.batches:
            async with conn.transaction():
                await conn.copy_records_to_table("calls", records=batch, columns=CALL_COLUMNS)
        return time.perf_counter() - began
    finally:
        await conn.close()
