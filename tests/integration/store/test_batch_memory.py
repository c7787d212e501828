"""A writer's full batch is upserted in memory: the store's sessions have room for it."""

from __future__ import annotations

import datetime as dt
import zoneinfo

import asyncpg
import orjson

from cdrsync.model import CALL_COLUMNS
from cdrsync.simulator.acefone import AcefoneSimConfig, AcefoneSimulator
from cdrsync.store.queries import CREATE_TEMP_SQL, TEMP_TABLE, UPSERT_CALLS_SQL, server_settings
from cdrsync.vendors.acefone import normalize

BATCH = 5000  # the writer's transaction target (engine.window: write_rows)


def _disk_nodes(plan: object) -> list[str]:
    """Plan nodes that spilled to disk (a sort or hash that did not fit in work_mem)."""
    if isinstance(plan, dict):
        found = [plan["Node Type"]] if "Disk" in str(plan.get("Sort Space Type", "")) else []
        if plan.get("Hash Batches", 1) > 1:
            found.append(plan["Node Type"])
        for value in plan.values():
            found += _disk_nodes(value)
        return found
    if isinstance(plan, list):
        return [node for item in plan for node in _disk_nodes(item)]
    return []


async def test_a_full_batch_of_vendor_sized_records_is_sorted_in_memory(dsn):
    """5 000 Acefone calls (records of about 2 KB) are sorted for the upsert without spilling
    to disk on a store session (with PostgreSQL's default work_mem they spill)."""
    sim = AcefoneSimulator(
        AcefoneSimConfig(seed=3, backlog=BATCH, backlog_days=1.0, live_per_minute=0.0,
                         late_fraction=0.0, change_fraction=0.0, malformed_fraction=0.0)
    )  # fmt: skip
    fetched = dt.datetime.now(dt.UTC)
    zone = zoneinfo.ZoneInfo("Asia/Kolkata")
    calls = [
        normalize(orjson.loads(text), account="main", zone=zone, fetched_at=fetched)
        for _, text in sim.iter_truth_json(sim.now() + 3600)  # every call ended
    ]
    assert len(calls) == BATCH
    conn = await asyncpg.connect(dsn, server_settings=server_settings("cdrsync"))
    transaction = conn.transaction()
    await transaction.start()
    try:
        await conn.execute(CREATE_TEMP_SQL)
        await conn.copy_records_to_table(TEMP_TABLE, records=calls, columns=CALL_COLUMNS)
        now = dt.datetime.now(dt.UTC)
        explained = await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {UPSERT_CALLS_SQL}", now)
    finally:
        await transaction.rollback()  # explained, not committed
        await conn.close()
    plan = orjson.loads(explained)
    assert "Sort" in str(plan)  # the upsert still sorts by key (the deadlock rule)
    assert _disk_nodes(plan) == [], plan
