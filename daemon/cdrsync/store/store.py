"""PostgreSQL: migrations, the batch write of calls, stream state and rejects.

With its sibling modules (``queries``, ``upsert``, ``lock``, ``queues``) the only place that
imports asyncpg. Every driver failure is translated into ``StoreError`` (``queries.translate``),
with a message naming the operation and what to do, and never the DSN's password. SQL lives in
``sql/queries.sql`` (named queries) and ``sql/migrations/NNNN_name.sql``.

``write_batch`` carries guarantees 1, 2 and 4 of the design: rows, rejects and the stream's
watermark commit in one transaction; a key appears once; an unchanged re-read writes nothing;
an older copy never replaces a newer one.
"""

from __future__ import annotations

import datetime as dt
import importlib.resources
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from cdrsync import jsontext
from cdrsync.errors import ParseError, StoreError
from cdrsync.model import CALL_COLUMNS, CallRecord, Reject, StreamState, Window, WriteResult
from cdrsync.store import members
from cdrsync.store.lock import StreamLocks
from cdrsync.store.members import Holder
from cdrsync.store.queries import (
    ADVANCE_STATE_SQL,
    ADVANCE_WINDOW_SQL,
    CREATE_TEMP_SQL,
    QUERIES,
    TEMP_TABLE,
    UPSERT_CALLS_SQL,
    UPSERT_REJECTS_SQL,
    describe_dsn,
    quote_ident,
    server_settings,
    translate,
    validate_schema,
)
from cdrsync.store.queues import Queues
from cdrsync.store.upsert import (
    SMALL_BATCH_ROWS,
    collapse,
    upsert_advance,
    upsert_in,
    widen_send_buffer,
)

__all__ = [
    "ADVANCE_STATE_SQL",
    "ADVANCE_WINDOW_SQL",
    "CREATE_TEMP_SQL",
    "QUERIES",
    "TEMP_TABLE",
    "UPSERT_CALLS_SQL",
    "UPSERT_REJECTS_SQL",
    "Migration",
    "Store",
    "StreamLocks",
    "collapse",
    "describe_dsn",
    "migrations",
    "quote_ident",
    "server_settings",
    "translate",
    "upsert_in",
    "validate_schema",
    "widen_send_buffer",
]


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema migration file: ``NNNN_name.sql``."""

    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    """Every migration shipped with cdrsync, in version order."""
    folder = importlib.resources.files("cdrsync.store") / "sql" / "migrations"
    found = []
    for entry in folder.iterdir():
        match = re.fullmatch(r"(\d{4})_(\w+)\.sql", entry.name)
        if match:
            found.append(Migration(int(match[1]), entry.name[:-4], entry.read_text("utf-8")))
    return sorted(found, key=lambda m: m.version)


def _state(row: Mapping[str, Any]) -> StreamState:
    cursor = row["cursor"]
    return StreamState(
        stream=row["stream"],
        vendor=row["vendor"],
        account=row["account"],
        kind=row["kind"],
        watermark=row["watermark"],
        cursor=json.loads(cursor) if isinstance(cursor, str) else cursor,
        last_success_at=row["last_success_at"],
        last_error=row["last_error"],
        last_error_at=row["last_error_at"],
        rows_inserted=int(row["rows_inserted"]),
        rows_updated=int(row["rows_updated"]),
        cycles=int(row["cycles"]),
        updated_at=row["updated_at"],
    )


async def _keep_session(conn: Any) -> None:
    """The pool's reset on release: nothing beyond the rollback asyncpg always does.

    asyncpg's default sends ``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`` on
    every release: a round trip per acquire, a quarter of the daemon's statements with a
    thousand accounts. cdrsync keeps no session state on pooled connections (stream locks live
    on the lock session, grant locks are transaction locks, no LISTEN, SET or open cursor); the
    temporary batch table is meant to outlive the release (``create_temp_calls``).
    """


class Store:
    """A connection pool to cdrsync's schema and every operation the daemon needs on it."""

    def __init__(self, pool: Any, dsn: str, schema: str, connect_timeout: float) -> None:
        """Use ``Store.connect``; this only keeps what it opened."""
        self._pool = pool
        self._dsn = dsn
        self.schema = schema
        self._connect_timeout = connect_timeout
        self.small_batch_rows = SMALL_BATCH_ROWS
        """Batches up to this many records and no rejects are one statement (not COPY)."""

    @classmethod
    async def connect(
        cls,
        dsn: str,
        *,
        schema: str = "cdrsync",
        pool_size: int = 10,
        connect_timeout: float = 10.0,
    ) -> Store:
        """Open a pool whose connections use ``schema`` (which need not exist yet)."""
        validate_schema(schema)
        with translate("connect to PostgreSQL", dsn):
            pool = await asyncpg.create_pool(
                dsn,
                min_size=1,
                max_size=pool_size,
                timeout=connect_timeout,
                server_settings=server_settings(schema),
                reset=_keep_session,
                init=widen_send_buffer,
            )
        return cls(pool, dsn, schema, connect_timeout)

    async def close(self) -> None:
        """Close the pool, waiting for connections in use to be released."""
        with translate("close the connection pool", self._dsn):
            await self._pool.close()

    async def migrate(self) -> list[str]:
        """Apply pending migrations, each in its own transaction; return their names.

        A transaction-scoped advisory lock per schema makes concurrent runs (two instances
        starting together) safe: the second waits, then finds the migration applied.
        """
        schema = quote_ident(self.schema)
        applied = []
        for migration in migrations():
            with translate(f"apply schema migration {migration.name}", self._dsn):
                async with self._pool.acquire() as conn, conn.transaction():
                    await conn.execute(QUERIES["migration_lock"], self.schema)
                    # Identifiers cannot be bind parameters; `schema` is validated and quoted.
                    await conn.execute(
                        f"CREATE SCHEMA IF NOT EXISTS {schema}; SET LOCAL search_path TO {schema}"
                    )
                    await conn.execute(QUERIES["bootstrap_migrations"])
                    if await conn.fetchval(QUERIES["migration_applied"], migration.version):
                        continue
                    await conn.execute(migration.sql)
                    await conn.execute(
                        QUERIES["record_migration"], migration.version, migration.name
                    )
            applied.append(migration.name)
        return applied

    async def ping(self) -> None:
        """Raise ``StoreError`` unless PostgreSQL answers a query."""
        with translate("reach PostgreSQL", self._dsn):
            await self._pool.fetchval("SELECT 1", timeout=self._connect_timeout)

    async def ensure_stream(
        self, stream: str, *, vendor: str, account: str, kind: str
    ) -> StreamState:
        """Create the stream's ``sync_state`` row if missing and return its state."""
        with translate(f"register stream {stream}", self._dsn):
            row = await self._pool.fetchrow(QUERIES["ensure_stream"], stream, vendor, account, kind)
        return _state(row)

    async def load_state(self, stream: str) -> StreamState | None:
        """The stream's state, or None if it was never registered."""
        with translate(f"read the state of stream {stream}", self._dsn):
            row = await self._pool.fetchrow(QUERIES["load_state"], stream)
        return None if row is None else _state(row)

    async def states(self) -> list[StreamState]:
        """Every stream's state, by stream name."""
        with translate("read the stream states", self._dsn):
            rows = await self._pool.fetch(QUERIES["all_states"])
        return [_state(row) for row in rows]

    async def write_batch(
        self,
        stream: str,
        records: Sequence[CallRecord],
        rejects: Sequence[Reject] = (),
        *,
        now: dt.datetime,
        advance_to: dt.datetime | None = None,
        cursor: Mapping[str, Any] | None = None,
        windows: Sequence[tuple[Window, int]] = (),
    ) -> WriteResult:
        """Upsert ``records``, count ``rejects`` and advance the stream, in one transaction.

        ``unchanged`` counts the records that wrote nothing, collapsed duplicates included.
        The watermark moves to ``advance_to`` (never backwards) and the cursor is replaced
        when either is given. ``windows`` records completely read windows with the vendor's
        count, for the audit (``sync_windows``). Raises ``StoreError``; then nothing of the
        batch is committed. Up to ``small_batch_rows`` records without rejects are one
        statement (``upsert_advance``); larger batches go through COPY (``upsert_in``).
        A record PostgreSQL refuses to store (a ``DataError``) is found (``_refused``) and
        written to ``rejects`` instead, with the server's reason; the rest is written.
        """
        after: dict[str, Any] = {
            "now": now, "advance_to": advance_to, "cursor": cursor, "windows": windows,
        }  # fmt: skip
        try:
            return await self._write_batch(stream, records, rejects, **after)
        except StoreError as exc:
            if not isinstance(exc.__cause__, asyncpg.DataError):
                raise
            # A record PostgreSQL refuses (a number beyond numeric, a byte jsonb or text does
            # not take) would fail this batch on every cycle and stall the stream: the refused
            # records become rejects, with PostgreSQL's reason, and the rest is written.
            refused = await self._refused(records)
            if not refused:
                raise  # not one record's fault: the batch is retried as a whole
        # A refused record's raw written as the full decode writes it (a number beyond a
        # double kept as its text, one below it read as 0.0): stored so, as before the split
        # path left such numbers to PostgreSQL; still refused, it is a reject. Its content
        # hash stays that of the vendor's bytes, so a re-read skips it instead of failing its
        # batch again.
        rewritten = {id(r): new for r in records if id(r) in refused and (new := _rewritten(r))}
        again = await self._refused(list(rewritten.values())) if rewritten else {}
        kept: list[CallRecord] = []
        more: list[Reject] = []
        for record in records:
            why = refused.get(id(record))
            new = rewritten.get(id(record))
            if why is None:
                kept.append(record)
            elif new is not None and id(new) not in again:
                kept.append(new)
            else:
                why = again.get(id(new), why) if new is not None else why
                more.append(refused_reject(record, stream, why, now))
        return await self._write_batch(stream, kept, [*rejects, *more], **after)

    async def _write_batch(
        self,
        stream: str,
        records: Sequence[CallRecord],
        rejects: Sequence[Reject],
        *,
        now: dt.datetime,
        advance_to: dt.datetime | None,
        cursor: Mapping[str, Any] | None,
        windows: Sequence[tuple[Window, int]],
    ) -> WriteResult:
        cursor_json = None if cursor is None else json.dumps(dict(cursor), sort_keys=True)
        set_cursor = cursor is not None or advance_to is not None
        # One row per window: a window read twice in a batch is recorded once.
        read = {(w.start, w.end): n for w, n in windows}
        starts, ends, counts = [s for s, _ in read], [e for _, e in read], list(read.values())

        # advance_window_state's $4..$6 and $8..$10 (the one-statement batch's $3..$8).
        state = (advance_to, cursor_json, set_cursor)
        read_windows = (starts, ends, counts)

        def advance(inserted: int, updated: int) -> tuple[Any, ...]:
            return (stream, inserted, updated, *state, now, *read_windows)

        inserted = updated = 0
        with translate(f"write {len(records)} calls of stream {stream}", self._dsn):
            if not records and not rejects:
                # Nothing to upsert: the state and the windows in one statement, which is a
                # transaction by itself (one round trip instead of four).
                found = await self._pool.fetchval(ADVANCE_WINDOW_SQL, *advance(0, 0))
            elif not rejects and len(records) <= self.small_batch_rows:
                # A live cycle's few rows: one statement, its own transaction (issue 10).
                registered, inserted, updated = await upsert_advance(
                    self._pool, records, now, (stream, *state, *read_windows)
                )
                found = stream if registered else None
            else:
                async with self._pool.acquire() as conn, conn.transaction():
                    inserted, updated = await upsert_in(conn, records, rejects, now)
                    found = await conn.fetchval(ADVANCE_WINDOW_SQL, *advance(inserted, updated))
                    if found is None:
                        raise _unknown_stream(stream)  # rolls the rows back
        if found is None:
            raise _unknown_stream(stream)
        return WriteResult(
            inserted=inserted,
            updated=updated,
            unchanged=len(records) - inserted - updated,
            rejected=len(rejects),
        )

    async def _refused(self, records: Sequence[CallRecord]) -> dict[int, str]:
        """The records PostgreSQL refuses to store (by ``id``), each with its reason: halves of
        the batch are copied into the temporary table, each in a savepoint, down to the single
        records that fail; the transaction is rolled back, nothing is written."""
        refused: dict[int, str] = {}

        async def sift(conn: Any, part: Sequence[CallRecord]) -> None:
            try:
                async with conn.transaction():  # a savepoint
                    rows = [record.row() for record in part]
                    await conn.copy_records_to_table(TEMP_TABLE, records=rows, columns=CALL_COLUMNS)
            except asyncpg.DataError as exc:
                if len(part) == 1:
                    refused[id(part[0])] = str(exc).splitlines()[0]
                    return
                half = len(part) // 2
                await sift(conn, part[:half])
                await sift(conn, part[half:])

        with translate(f"find the calls PostgreSQL refuses among {len(records)}", self._dsn):
            async with self._pool.acquire() as conn:
                outer = conn.transaction()
                await outer.start()
                try:
                    await conn.execute(CREATE_TEMP_SQL)
                    await sift(conn, records)
                finally:
                    await outer.rollback()
        return refused

    async def record_cycle(
        self, stream: str, *, now: dt.datetime, error: str | None = None
    ) -> StreamState:
        """Count a finished cycle: a success at ``now``, or the cycle's ``error``; the stream's
        state after it (saves a cycle reading it again)."""
        with translate(f"record a cycle of stream {stream}", self._dsn):
            row = await self._pool.fetchrow(QUERIES["record_cycle"], stream, now, error)
        if row is None:
            raise _unknown_stream(stream)
        return _state(row)

    async def windows_due(
        self,
        stream: str,
        *,
        since: dt.datetime,
        until: dt.datetime,
        checked_before: dt.datetime,
        limit: int,
    ) -> tuple[list[tuple[Window, int]], dt.datetime | None]:
        """Recorded windows inside ``[since, until]`` whose count was last checked before
        ``checked_before``, newest first, with their recorded vendor count; and the oldest
        check of all the stream's windows kept (None when it has none). Windows that ended
        before ``since`` are forgotten. One statement."""
        with translate(f"read the windows due for audit of stream {stream}", self._dsn):
            rows = await self._pool.fetch(
                QUERIES["windows_due"], stream, since, until, checked_before, limit
            )
        due = [
            (Window(r["window_start"], r["window_end"]), int(r["vendor_count"]))
            for r in rows
            if r["window_start"] is not None
        ]
        return due, rows[0]["least_checked"] if rows else None

    async def window_checked(self, stream: str, window: Window, *, now: dt.datetime) -> None:
        """The vendor still counts what was recorded for ``window``: checked at ``now``."""
        with translate(f"record an audit of stream {stream}", self._dsn):
            await self._pool.execute(
                QUERIES["window_checked"], stream, window.start, window.end, now
            )

    async def rows_since(self, since: dt.datetime) -> dict[tuple[str, str], int]:
        """``(vendor, account) -> calls first stored at or after ``since``."""
        with translate("count the calls stored recently", self._dsn):
            rows = await self._pool.fetch(QUERIES["rows_since"], since)
        return {(r["vendor"], r["account"]): int(r["rows"]) for r in rows}

    async def call_count(self, vendor: str | None = None, account: str | None = None) -> int:
        """How many calls are stored (for one vendor and/or account when given)."""
        with translate("count calls", self._dsn):
            return int(await self._pool.fetchval(QUERIES["call_count"], vendor, account))

    async def call_hashes(self, vendor: str, account: str) -> dict[str, bytes]:
        """``call_key -> content_hash`` of every stored call of one account (for comparisons)."""
        with translate(f"read the call hashes of {vendor} account {account}", self._dsn):
            rows = await self._pool.fetch(QUERIES["call_hashes"], vendor, account)
        return {row["call_key"]: bytes(row["content_hash"]) for row in rows}

    async def list_hashes(
        self, vendor: str, account: str, start: dt.datetime, end: dt.datetime
    ) -> frozenset[bytes]:
        """The content hashes of one account's list copies of calls started in [start, end)."""
        found = await self.list_hashes_upto(vendor, account, start, end, None)
        assert found is not None  # no limit
        return found

    async def list_hashes_upto(
        self, vendor: str, account: str, start: dt.datetime, end: dt.datetime, most: int | None
    ) -> frozenset[bytes] | None:
        """``list_hashes``, or None when there are more than ``most`` (None: no limit)."""
        limit = None if most is None else most + 1
        with translate(f"read the stored hashes of {vendor} account {account}", self._dsn):
            rows = await self._pool.fetch(
                QUERIES["list_hashes"], vendor, account, start, end, limit
            )
        if most is not None and len(rows) > most:
            return None
        return frozenset(bytes(row["content_hash"]) for row in rows)

    async def reject_count(self, vendor: str | None = None, account: str | None = None) -> int:
        """How many distinct rejected records are stored (for one vendor and/or account)."""
        with translate("count rejects", self._dsn):
            return int(await self._pool.fetchval(QUERIES["reject_count"], vendor, account))

    async def reject_counts(self) -> dict[tuple[str, str], int]:
        """``(vendor, account) -> distinct rejected records stored``."""
        with translate("count rejects", self._dsn):
            rows = await self._pool.fetch(QUERIES["reject_counts"])
        return {(r["vendor"], r["account"]): int(r["rows"]) for r in rows}

    @property
    def queues(self) -> Queues:
        """The lookup queue and the VCC Live outbox on this store's pool."""
        return Queues(self._pool, self._dsn)

    async def instances(self) -> tuple[list[Any], dt.datetime]:
        """Every row of table ``instances`` (the daemons) and the database's now."""
        with translate("read the running instances (table instances)", self._dsn):
            async with self._pool.acquire() as conn:
                return await members.registered(conn)

    async def holders(self) -> dict[str, Holder]:
        """Stream -> the session (daemon) holding its lock now."""
        with translate("read who holds the stream locks (pg_locks)", self._dsn):
            async with self._pool.acquire() as conn:
                return await members.holders(conn, self.schema)

    def lock_session(self, *, probe_every: float = 0.0) -> StreamLocks:
        """A new, unopened holder of this process's stream locks (its own connection), whose
        ``alive()`` trusts a probe up to ``probe_every`` seconds old."""
        return StreamLocks(
            self._dsn, schema=self.schema, connect_timeout=self._connect_timeout,
            probe_every=probe_every,
        )  # fmt: skip


def _rewritten(record: CallRecord) -> CallRecord | None:
    """``record`` with ``raw`` as sorted-key JSON from the full decode (``jsontext``); None
    when that changes nothing, fails, or holds a NUL PostgreSQL cannot store either."""
    try:
        raw = jsontext.canonical(jsontext.loads(record.raw))
    except (ValueError, ParseError):  # orjson.JSONDecodeError is a ValueError
        return None
    if b"\\u0000" in raw or raw.decode() == record.raw:
        return None
    return record._replace(raw=raw.decode())


def refused_reject(record: CallRecord, stream: str, why: str, now: dt.datetime) -> Reject:
    """A record PostgreSQL refused, as a reject: its reason and its ``raw`` (a NUL, which text
    cannot hold either, written as JSON's escape)."""
    return Reject(
        record.vendor,
        record.account,
        stream,
        record.call_key.replace("\0", "\\u0000"),
        f"PostgreSQL refused to store the record ({why}); it is kept here, not in calls",
        record.raw.replace("\0", "\\u0000"),
        now,
    )


def _unknown_stream(stream: str) -> StoreError:
    return StoreError(
        f"stream {stream} has no row in sync_state, so its batch was not written; this is a "
        "cdrsync bug (ensure_stream() must run first): please report it"
    )
