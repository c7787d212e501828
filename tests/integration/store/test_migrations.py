"""Schema migrations and what analysts see: idempotence, concurrency, comments, views."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from cdrsync.model import CallRecord
from cdrsync.store.store import Store, migrations

STREAM = "acefone:main:records"
DOCUMENTED_TABLES = (
    "calls", "sync_state", "rejects", "sync_windows", "lookups", "call_events", "vcclive_outbox",
    "backfills",
)  # fmt: skip
VIEWS = ("calls_daily", "calls_daily_utc", "agent_daily")


async def fetch(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    """Rows of ``sql`` on a fresh connection with the given schema on the search path."""
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def test_migrate_twice_is_a_no_op(empty_dsn: str) -> None:
    """The first migrate applies every migration; the second applies nothing."""
    store = await Store.connect(empty_dsn)
    try:
        first = await store.migrate()
        second = await store.migrate()
    finally:
        await store.close()

    assert first == [m.name for m in migrations()]
    assert first[0] == "0001_init"
    assert second == []
    recorded = await fetch(empty_dsn, "SELECT version, name FROM cdrsync.schema_migrations")
    assert [tuple(r) for r in recorded] == [(m.version, m.name) for m in migrations()]


async def test_concurrent_migrations_apply_once(empty_dsn: str) -> None:
    """Two instances migrating at once both succeed and each migration runs once."""
    stores = [await Store.connect(empty_dsn) for _ in range(2)]
    try:
        results = await asyncio.gather(*(s.migrate() for s in stores))
    finally:
        for s in stores:
            await s.close()

    # Each migration is applied by exactly one of them (which one may differ per migration:
    # the lock is taken per migration, so the two may take turns).
    first, second = results
    assert not set(first) & set(second)
    assert sorted(first + second) == [m.name for m in migrations()]
    count = await fetch(empty_dsn, "SELECT count(*) FROM cdrsync.schema_migrations")
    assert count[0][0] == len(migrations())


async def test_custom_schema_is_isolated(
    empty_dsn: str, make_call: Callable[..., CallRecord]
) -> None:
    """A configured schema gets its own tables; nothing lands in cdrsync or public."""
    store = await Store.connect(empty_dsn, schema="Tenant_2")
    try:
        await store.migrate()
        await store.ensure_stream(STREAM, vendor="acefone", account="main", kind="window")
        await store.write_batch(STREAM, [make_call("a")], now=dt.datetime.now(dt.UTC))
    finally:
        await store.close()

    tables = await fetch(
        empty_dsn,
        "SELECT table_schema, table_name FROM information_schema.tables "
        "WHERE table_name = 'calls' AND table_schema NOT LIKE 'pg_temp%'",
    )
    assert [tuple(r) for r in tables] == [("Tenant_2", "calls")]
    assert (await fetch(empty_dsn, 'SELECT count(*) FROM "Tenant_2".calls'))[0][0] == 1


@pytest.mark.parametrize("table", DOCUMENTED_TABLES + VIEWS)
async def test_every_column_has_a_comment(dsn: str, table: str) -> None:
    """Analysts find a description on the table or view and on each of its columns."""
    described = await fetch(
        dsn,
        "SELECT obj_description(c.oid, 'pg_class') FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'cdrsync' AND c.relname = $1",
        table,
    )
    assert described, f"{table} does not exist"
    assert described[0][0], f"{table} has no comment"
    undocumented = await fetch(
        dsn,
        "SELECT a.attname FROM pg_attribute a "
        "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'cdrsync' AND c.relname = $1 AND a.attnum > 0 "
        "AND NOT a.attisdropped AND coalesce(col_description(c.oid, a.attnum), '') = ''",
        table,
    )
    assert [r[0] for r in undocumented] == []


async def test_calls_has_the_documented_columns(dsn: str) -> None:
    """calls holds every CallRecord column, first_seen_at, updated_at and the other sources'
    records (raw_other, fetched_other), keyed per vendor."""
    from cdrsync.model import CALL_COLUMNS

    columns = await fetch(
        dsn,
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_schema = 'cdrsync' AND table_name = 'calls' ORDER BY ordinal_position",
    )
    # `source` came with migration 3, so ALTER TABLE put it after the two bookkeeping columns.
    names = tuple(r[0] for r in columns)
    extra = ("first_seen_at", "updated_at", "raw_other", "fetched_other")
    assert sorted(names) == sorted((*CALL_COLUMNS, *extra))
    assert names[: len(CALL_COLUMNS) - 1] == CALL_COLUMNS[:-1]
    key = await fetch(
        dsn,
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a "
        "ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
        "WHERE i.indrelid = 'cdrsync.calls'::regclass AND i.indisprimary ORDER BY a.attnum",
    )
    assert [r[0] for r in key] == ["vendor", "account", "call_key"]


async def test_views_aggregate_a_known_day(
    store: Store, dsn: str, make_call: Callable[..., CallRecord]
) -> None:
    """calls_daily, calls_daily_utc and agent_daily count, sum and average correctly."""
    ist_day, utc_evening = dt.date(2024, 5, 2), dt.datetime(2024, 5, 1, 20, 0, tzinfo=dt.UTC)
    batch = [
        make_call("a", talk_s=60, agent_name="Asha"),
        make_call("b", talk_s=30, agent_name="Asha", direction="outbound"),
        make_call("c", status="missed", talk_s=0, agent_name="Ravi"),
        make_call("d", talk_s=45, agent_name="Ravi"),
        # Started 20:00 UTC = 01:30 IST next day: another local day, same UTC day.
        make_call("e", status="missed", talk_s=0, agent_name=None, started_at=utc_evening,
                  local_date=ist_day),
    ]  # fmt: skip
    await store.ensure_stream(STREAM, vendor="acefone", account="main", kind="window")
    await store.write_batch(STREAM, batch, now=dt.datetime.now(dt.UTC))

    daily = await fetch(dsn, "SELECT * FROM cdrsync.calls_daily ORDER BY day")
    assert [dict(r) for r in daily] == [
        {
            "vendor": "acefone", "account": "main", "day": dt.date(2024, 5, 1), "calls": 4,
            "answered": 3, "missed": 1, "inbound": 3, "outbound": 1, "talk_s": 135,
            "avg_talk_s": Decimal("45.0"), "answer_rate": Decimal("0.7500"),
        },
        {
            "vendor": "acefone", "account": "main", "day": ist_day, "calls": 1, "answered": 0,
            "missed": 1, "inbound": 1, "outbound": 0, "talk_s": 0, "avg_talk_s": None,
            "answer_rate": Decimal("0.0000"),
        },
    ]  # fmt: skip
    utc = await fetch(dsn, "SELECT day, calls, answered, answer_rate FROM cdrsync.calls_daily_utc")
    assert [tuple(r) for r in utc] == [(dt.date(2024, 5, 1), 5, 3, Decimal("0.6000"))]
    agents = await fetch(
        dsn,
        "SELECT day, agent_name, calls, answered, talk_s, avg_talk_s FROM cdrsync.agent_daily "
        "ORDER BY day, agent_name",
    )
    assert [tuple(r) for r in agents] == [
        (dt.date(2024, 5, 1), "Asha", 2, 2, 90, Decimal("45.0")),
        (dt.date(2024, 5, 1), "Ravi", 2, 1, 45, Decimal("45.0")),
        (ist_day, None, 1, 0, 0, None),
    ]
