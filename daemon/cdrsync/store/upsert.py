"""The batch write of calls: COPY then one upsert inside a caller's transaction, or a small
batch in one statement with the stream's advance (``upsert_advance``).

Carries guarantees 1 and 4 of the design: duplicate keys of a batch are collapsed before the
statement runs (``collapse``), an unchanged re-read writes nothing and an older copy never
replaces a newer one (both in ``upsert_calls``, which the one statement is derived from).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import socket
from collections.abc import Sequence
from typing import Any

from cdrsync.model import CALL_COLUMNS, SOURCES, CallRecord, Reject
from cdrsync.store.queries import (
    CREATE_TEMP_SQL,
    TEMP_TABLE,
    UPSERT_ADVANCE_SQL,
    UPSERT_CALLS_SQL,
    UPSERT_REJECTS_SQL,
)

SMALL_BATCH_ROWS = 100
"""Batches of at most this many records (and no rejects) are written in one statement from
arrays (``upsert_advance``): one round trip instead of six (BEGIN, the temporary table, COPY,
upsert, advance, COMMIT). A live stream's cycle writes one to three rows (issue 10). Measured
on the embedded server (wall time per batch, COPY vs one statement): 1 row 2.8 vs 0.8 ms, 50
rows 5.4 vs 3.3 ms, 100 rows 7.8 vs 6.1 ms, 200 rows 12.4 vs 12.9 ms, 1,000 rows 50 vs 73 ms:
above about 150 rows the arrays cost more per row than the round trips they save."""

SEND_BUFFER_BYTES = 4 * 1024 * 1024
"""The send buffer asked for on a store connection over a unix socket (``widen_send_buffer``);
Linux grants at most ``net.core.wmem_max`` (often 208 KB; 4 MB on the development machine)."""


async def widen_send_buffer(conn: Any) -> None:
    """Give a connection over a unix socket a send buffer of ``SEND_BUFFER_BYTES`` (the pool's
    ``init``).

    A batch's COPY data reaches PostgreSQL through the socket only while the event loop gets
    to write it, and the loop is also parsing the next pages (about 5 ms each): with the
    default buffer (208 KB, some 100 rows, about 3 ms of the server's COPY work) PostgreSQL
    waited for each turn of the loop, and a backfill's writer spent half its time in COPY
    although the server was busy a third of it. Measured on the development machine, three
    paired 200 000-record backfills (1M's density): COPY took 10.6-11.2 s of the writer
    instead of 12.3-17.1, the reader waited 5 s instead of 10-13 for room, and the whole run
    took 19.5-21.5 s instead of 19.8-27.2. A TCP connection is left alone: setting the size
    would switch off the kernel's own tuning of it. asyncpg keeps the transport private; when
    it is not there, or the kernel refuses, the connection keeps its buffer (only speed)."""
    transport = getattr(conn, "_transport", None)
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or sock.family != socket.AF_UNIX:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)


_RANK = {source: rank for rank, source in enumerate(SOURCES)}


def collapse(records: Sequence[CallRecord]) -> list[CallRecord]:
    """One record per key: the highest-ranked source wins (list > lookup > push), then the
    greatest ``fetched_at``, the later one on a tie (the rule of ``upsert_calls``)."""
    best: dict[tuple[str, str, str], CallRecord] = {}
    for record in records:
        key = (record.vendor, record.account, record.call_key)
        kept = best.get(key)
        if kept is None or (_RANK.get(record.source, 0), record.fetched_at) >= (
            _RANK.get(kept.source, 0),
            kept.fetched_at,
        ):
            best[key] = record
    return list(best.values())


async def upsert_in(
    conn: Any, records: Sequence[CallRecord], rejects: Sequence[Reject], now: dt.datetime
) -> tuple[int, int]:
    """Upsert ``records`` and count ``rejects`` on ``conn`` inside the caller's transaction;
    returns (inserted, updated)."""
    inserted = updated = 0
    if records:
        rows = [record.row() for record in collapse(records)]
        await conn.execute(CREATE_TEMP_SQL)
        await conn.copy_records_to_table(TEMP_TABLE, records=rows, columns=CALL_COLUMNS)
        counts = await conn.fetchrow(UPSERT_CALLS_SQL, now)
        inserted, updated = int(counts["inserted"]), int(counts["updated"])
    if rejects:
        await conn.execute(UPSERT_REJECTS_SQL, *_reject_arrays(rejects, now))
    return inserted, updated


async def upsert_advance(
    pool: Any, records: Sequence[CallRecord], now: dt.datetime, advance: Sequence[Any]
) -> tuple[bool, int, int]:
    """Upsert ``records`` and advance the stream in one statement (``UPSERT_ADVANCE_SQL``);
    ``advance`` is its $2..$8. Returns (stream registered, inserted, updated); when the stream
    is not registered nothing was written."""
    columns = [list(column) for column in zip(*(r.row() for r in collapse(records)), strict=True)]
    row = await pool.fetchrow(UPSERT_ADVANCE_SQL, now, *advance, *columns)
    if row is None:
        return False, 0, 0
    return True, int(row["inserted"]), int(row["updated"])


def _reject_arrays(rejects: Sequence[Reject], now: dt.datetime) -> list[Any]:
    """Columns of ``upsert_rejects``, one entry per distinct payload, with how often it came."""
    merged: dict[tuple[str, str, bytes], tuple[Reject, int]] = {}
    for reject in rejects:
        digest = hashlib.sha256(reject.payload.encode("utf-8", "surrogatepass")).digest()
        key = (reject.vendor, reject.account, digest)
        seen = merged.get(key)
        merged[key] = (reject, (seen[1] if seen else 0) + 1)
    items = [(key[2], reject, count) for key, (reject, count) in merged.items()]
    return [
        [r.vendor for _, r, _ in items],
        [r.account for _, r, _ in items],
        [r.stream for _, r, _ in items],
        [r.call_key for _, r, _ in items],
        [r.reason for _, r, _ in items],
        [r.payload for _, r, _ in items],
        [digest for digest, _, _ in items],
        now,
        [count for _, _, count in items],
    ]
