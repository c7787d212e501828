"""Acefone records stored as the vendor's own bytes, against a real PostgreSQL: what jsonb
refuses never reaches a batch, and an equal record in other key order or hashed the older way
writes nothing."""

from __future__ import annotations

import datetime as dt
import zoneinfo
from typing import Any

import asyncpg
import orjson
import pytest

from cdrsync.model import Page
from cdrsync.store.store import Store
from cdrsync.vendors.acefone import digest, normalize, parse_page

IST = zoneinfo.ZoneInfo("Asia/Kolkata")
T0 = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)
STREAM = "acme-in/list"
RECORD: dict[str, Any] = {
    "id": "66339a440ac50d47500dbc9e",
    "call_id": "1714657799.11930963",
    "direction": "inbound",
    "status": "answered",
    "date": "2024-05-02",
    "time": "19:19:59",
    "end_stamp": "2024-05-02 19:20:57",
    "call_duration": 54,
    "answered_seconds": 40,
    "agent_name": "pqrs",
    "call_flow": [{"type": "init"}, {"anstime": 1714657817, "time": 1714657857}],
    "agent_ring_time": "N.A.",
    "extra": "EXTRA",
}


def record(key: str, extra: bytes = b'"x"') -> bytes:
    """RECORD under id ``key``, its unread field ``extra`` holding the JSON text ``extra``."""
    return orjson.dumps({**RECORD, "id": key}).replace(b'"EXTRA"', extra)


def page_of(records: list[bytes], at: dt.datetime = T0) -> Page:
    body = b'{"count": %d, "results": [%s]}' % (len(records), b", ".join(records))
    return parse_page(body, account="acme-in", stream=STREAM, zone=IST, fetched_at=at)


async def by_key(dsn: str, query: str) -> dict[str, asyncpg.Record]:
    """The rows ``query`` selects, by their ``call_key``."""
    conn = await asyncpg.connect(dsn, server_settings={"search_path": "cdrsync"})
    try:
        rows = await conn.fetch(query)
    finally:
        await conn.close()
    return {row["call_key"]: row for row in rows}


async def stored(dsn: str) -> dict[str, asyncpg.Record]:
    return await by_key(dsn, "SELECT call_key, raw, updated_at, xmin::text AS x FROM calls")


@pytest.fixture
async def stream(store: Store) -> str:
    await store.ensure_stream(STREAM, vendor="acefone", account="acme-in", kind="window")
    return STREAM


async def rejected(dsn: str) -> dict[str, asyncpg.Record]:
    return await by_key(dsn, "SELECT call_key, stream, reason, payload FROM rejects")


async def test_what_jsonb_refuses_costs_one_record_never_the_batch(store, stream, dsn):
    """Bytes jsonb refuses or changes, in fields cdrsync does not read, never fail the batch:
    a NUL is rejected when the page is parsed; numbers beyond numeric, which PostgreSQL
    refuses, are stored as the full decode reads them (with the hash of the vendor's bytes, so
    a re-read skips them); an escape is canonicalized; a number numeric holds and a record
    nested deeper than orjson writes are stored as sent; the watermark moves past them all."""
    beyond = {
        "huge": b"1e999999",  # more than 131 072 digits before the point
        "tiny": b"-1.5E-123456",  # more than 16 383 after it
        "long": b"0." + b"1" * 7000 + b"e-9999",  # 17 000 digits after the point
    }
    parsed = page_of(
        [
            record("plain"),
            record("nul", b'"a\\u0000b"'),
            *(record(key, number) for key, number in beyond.items()),
            record("escaped", b'"caf\\u00e9 \\ud83d\\ude00"'),
            record("spaced", b'[ 1 , 2.5e3 , {"a" : null} ]'),
            record("big", b"-1e+1234"),  # within numeric: stored as sent
            record("deep", b"[" * 900 + b"]" * 900),  # stored as sent: orjson stops at 255
        ]
    )
    assert [r.call_key for r in parsed.rejects] == ["nul"]
    watermark = T0 + dt.timedelta(hours=2)

    result = await store.write_batch(
        stream, list(parsed.records), list(parsed.rejects), now=T0, advance_to=watermark
    )

    assert (result.inserted, result.rejected) == (8, 1)
    rows = await stored(dsn)
    assert rows.pop("deep")["raw"].count("[") == 900 + 1  # and call_flow
    assert '"extra": -1' + "0" * 1234 + "," in rows.pop("big")["raw"]  # numeric holds it exactly
    extras = {key: orjson.loads(row["raw"])["extra"] for key, row in rows.items()}
    assert extras == {
        "plain": "x",
        "huge": "1e999999",  # beyond a double: kept as its text
        "tiny": 0.0,  # underflows to zero, as orjson reads it
        "long": 0.0,
        "escaped": "caf\u00e9 \U0001f600",
        "spaced": [1, 2500.0, {"a": None}],
    }
    hashes = await store.call_hashes("acefone", "acme-in")
    assert {key: hashes[key] for key in beyond} == {
        key: digest(record(key, number)) for key, number in beyond.items()
    }
    assert list(await rejected(dsn)) == ["nul"]
    state = await store.load_state(STREAM)
    assert state is not None
    assert (state.watermark, state.rows_inserted) == (watermark, 8)


async def test_a_value_postgresql_refuses_costs_only_its_record(store, stream, dsn):
    """A record PostgreSQL refuses to store even rewritten (here a NUL in a text column) is
    rejected with the server's reason and its raw; the others of the batch are stored, on the
    one-statement path of a live cycle's few records too."""
    parsed = page_of([record("a"), record("bad"), record("b")])
    records = [
        r._replace(agent_name="a\x00b") if r.call_key == "bad" else r for r in parsed.records
    ]
    assert len(records) == 3 <= store.small_batch_rows and not parsed.rejects

    result = await store.write_batch(stream, records, now=T0)

    assert (result.inserted, result.rejected) == (2, 1)
    assert sorted(await stored(dsn)) == ["a", "b"]
    refused = await rejected(dsn)
    assert list(refused) == ["bad"]
    assert "PostgreSQL refused to store the record" in refused["bad"]["reason"]
    assert refused["bad"]["payload"] == record("bad").decode()  # the vendor's bytes


async def test_an_equal_record_in_other_key_order_writes_nothing(store, stream, dsn):
    """The same record again with its keys in another order and other whitespace (its bytes,
    and so its hash, differ) leaves the row untouched: jsonb compares equal."""
    first = page_of([record("a")])
    await store.write_batch(stream, list(first.records), now=T0)
    before = await stored(dsn)
    reordered = orjson.dumps(dict(reversed(list({**RECORD, "id": "a", "extra": "x"}.items()))))
    later = T0 + dt.timedelta(hours=1)
    again = page_of([reordered.replace(b",", b", ")], at=later)
    assert again.records[0].content_hash != first.records[0].content_hash

    result = await store.write_batch(stream, list(again.records), now=later)

    assert (result.inserted, result.updated, result.unchanged) == (0, 0, 1)
    assert await stored(dsn) == before


async def test_a_row_hashed_by_an_older_version_is_not_rewritten(store, stream, dsn):
    """A row stored by an older cdrsync (raw and hash of sorted-key JSON) is unchanged by a
    re-read of the same record, whose hash is now of the vendor's bytes."""
    old = normalize({**RECORD, "id": "a", "extra": "x"}, account="acme-in", zone=IST, fetched_at=T0)
    sorted_raw = orjson.dumps(orjson.loads(old.raw), option=orjson.OPT_SORT_KEYS)
    assert old.content_hash == digest(sorted_raw)
    await store.write_batch(stream, [old], now=T0)
    before = await stored(dsn)
    later = T0 + dt.timedelta(hours=1)
    again = page_of([record("a")], at=later)
    assert again.records[0].content_hash != old.content_hash

    result = await store.write_batch(stream, list(again.records), now=later)

    assert (result.inserted, result.updated, result.unchanged) == (0, 0, 1)
    assert await stored(dsn) == before
