"""PostgreSQL: migrations, the batch upsert of calls, stream state and rejects.

The only module (with its helper ``store_lock``) that imports asyncpg. Every driver failure is
translated into ``StoreError`` here, with a message naming the operation and what to do, and
never the DSN's password. SQL lives in ``sql/queries.sql`` (named queries) and
``sql/migrations/NNNN_name.sql``; the only dynamic identifier, the schema name, is validated
and quoted by ``quote_ident``.

``write_batch`` carries guarantees 1, 2 and 4 of the design: rows, rejects and the stream's
watermark commit in one transaction; a key appears once; an unchanged re-read writes nothing;
an older copy never replaces a newer one.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import importlib.resources
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

import asyncpg

from cdrsync.errors import ConfigError, StoreError
from cdrsync.model import (
    CALL_COLUMNS,
    SOURCES,
    CallRecord,
    Reject,
    StreamState,
    Window,
    WriteResult,
)

if TYPE_CHECKING:
    from cdrsync.store_lock import StreamLocks
    from cdrsync.store_queues import Queues

__all__ = [
    "ADVANCE_STATE_SQL",
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
]

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MAX_IDENTIFIER = 63  # NAMEDATALEN - 1: PostgreSQL would silently truncate a longer name


def validate_schema(schema: str) -> str:
    """Return ``schema`` if it is a plain identifier PostgreSQL keeps as given, else raise."""
    if not _IDENTIFIER.fullmatch(schema) or len(schema) > _MAX_IDENTIFIER:
        raise ConfigError(
            f"database.schema {schema!r} is not a valid schema name: use 1-63 letters, digits "
            "and underscores, not starting with a digit"
        )
    if schema.lower().startswith("pg_"):
        raise ConfigError(f"database.schema {schema!r}: names starting with pg_ are reserved")
    return schema


def quote_ident(name: str) -> str:
    """Quote ``name`` as an SQL identifier (double quotes, inner quotes doubled)."""
    if "\x00" in name:
        raise ConfigError("an SQL identifier cannot contain a NUL character")
    return '"' + name.replace('"', '""') + '"'


def _load_queries() -> dict[str, str]:
    text = (importlib.resources.files("cdrsync") / "sql" / "queries.sql").read_text("utf-8")
    queries: dict[str, str] = {}
    for chunk in re.split(r"^-- name: ", text, flags=re.MULTILINE)[1:]:
        name, _, body = chunk.partition("\n")
        queries[name.strip()] = body.strip()
    return queries


QUERIES = _load_queries()
"""Named queries of sql/queries.sql, by name."""

TEMP_TABLE = "cdrsync_calls_in"
"""The per-connection temporary table a batch is COPied into (columns: ``CALL_COLUMNS``)."""
CREATE_TEMP_SQL = QUERIES["create_temp_calls"]
"""Creates ``TEMP_TABLE`` if this connection has none yet; run inside the batch transaction."""
UPSERT_CALLS_SQL = QUERIES["upsert_calls"]
"""Moves ``TEMP_TABLE`` into ``calls``; ``$1`` = now; returns one row (inserted, updated)."""
UPSERT_REJECTS_SQL = QUERIES["upsert_rejects"]
ADVANCE_STATE_SQL = QUERIES["advance_state"]


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema migration file: ``NNNN_name.sql``."""

    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    """Every migration shipped with cdrsync, in version order."""
    folder = importlib.resources.files("cdrsync") / "sql" / "migrations"
    found = []
    for entry in folder.iterdir():
        match = re.fullmatch(r"(\d{4})_(\w+)\.sql", entry.name)
        if match:
            found.append(Migration(int(match[1]), entry.name[:-4], entry.read_text("utf-8")))
    return sorted(found, key=lambda m: m.version)


def describe_dsn(dsn: str) -> str:
    """Where ``dsn`` points (host and database), for messages: never user or password."""
    if "://" in dsn:
        parts = urlsplit(dsn)
        query = parse_qs(parts.query)
        host = parts.hostname or unquote(query.get("host", ["localhost"])[0])
        port = f":{parts.port}" if parts.port else ""
        return f"{host}{port}/{unquote(parts.path.lstrip('/')) or 'postgres'}"
    fields = dict(re.findall(r"(\w+)\s*=\s*('(?:[^'\\]|\\.)*'|\S+)", dsn))
    return f"{fields.get('host', 'localhost')}/{fields.get('dbname', 'postgres')}"


def _password(dsn: str) -> str | None:
    if "://" in dsn:
        parts = urlsplit(dsn)
        query = parse_qs(parts.query)
        secret = parts.password or query.get("password", [None])[0]
        return unquote(secret) if secret else None
    match = re.search(r"password\s*=\s*('(?:[^'\\]|\\.)*'|\S+)", dsn)
    return match[1].strip("'") if match else None


_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,  # admin shutdown, crash, "starting up"
    asyncpg.exceptions.InsufficientResourcesError,  # too many connections, disk full
)
_DRIVER_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InternalClientError,
    *_CONNECTION_ERRORS,
)


@contextlib.contextmanager
def translate(operation: str, dsn: str) -> Iterator[None]:
    """Turn a driver failure during ``operation`` into a ``StoreError`` a user can act on."""
    try:
        yield
    except _DRIVER_ERRORS as exc:
        target = describe_dsn(dsn)
        detail = f"{type(exc).__name__}: {exc}".strip().rstrip(":")
        secret = _password(dsn)
        if secret:
            detail = detail.replace(secret, "***")
        if isinstance(exc, _CONNECTION_ERRORS):
            advice = (
                "PostgreSQL is unreachable or restarting; nothing of this operation was "
                "committed. cdrsync retries; if it persists, check that the server is running "
                "and database.dsn"
            )
        else:
            advice = (
                "the transaction was rolled back and nothing of it was committed. cdrsync "
                "retries; if it repeats, check the PostgreSQL log and run `cdrsync migrate`"
            )
        raise StoreError(f"could not {operation} on {target} ({detail}): {advice}") from exc


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


class Store:
    """A connection pool to cdrsync's schema and every operation the daemon needs on it."""

    def __init__(self, pool: Any, dsn: str, schema: str, connect_timeout: float) -> None:
        """Use ``Store.connect``; this only keeps what it opened."""
        self._pool = pool
        self._dsn = dsn
        self.schema = schema
        self._connect_timeout = connect_timeout

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
        batch is committed.
        """
        cursor_json = None if cursor is None else json.dumps(dict(cursor), sort_keys=True)
        set_cursor = cursor is not None or advance_to is not None
        with translate(f"write {len(records)} calls of stream {stream}", self._dsn):
            async with self._pool.acquire() as conn, conn.transaction():
                inserted, updated = await upsert_in(conn, records, rejects, now)
                found = await conn.fetchval(
                    ADVANCE_STATE_SQL, stream, inserted, updated, advance_to, cursor_json,
                    set_cursor, now,
                )  # fmt: skip
                if found is None:
                    raise _unknown_stream(stream)
                if windows:
                    # One row per window: a window read twice in a batch is recorded once.
                    windows = list({(w.start, w.end): (w, n) for w, n in windows}.values())
                    await conn.execute(
                        QUERIES["record_windows"], stream,
                        [w.start for w, _ in windows], [w.end for w, _ in windows],
                        [count for _, count in windows], now,
                    )  # fmt: skip
        return WriteResult(
            inserted=inserted,
            updated=updated,
            unchanged=len(records) - inserted - updated,
            rejected=len(rejects),
        )

    async def record_cycle(
        self, stream: str, *, now: dt.datetime, error: str | None = None
    ) -> None:
        """Count a finished cycle: a success at ``now``, or the cycle's ``error``."""
        with translate(f"record a cycle of stream {stream}", self._dsn):
            found = await self._pool.fetchval(QUERIES["record_cycle"], stream, now, error)
        if found is None:
            raise _unknown_stream(stream)

    async def windows_due(
        self,
        stream: str,
        *,
        since: dt.datetime,
        until: dt.datetime,
        checked_before: dt.datetime,
        limit: int,
    ) -> list[tuple[Window, int]]:
        """Recorded windows inside ``[since, until]`` whose count was last checked before
        ``checked_before``, least recently checked first, with their recorded vendor count.
        Windows that ended before ``since`` are forgotten."""
        with translate(f"read the windows due for audit of stream {stream}", self._dsn):
            async with self._pool.acquire() as conn:
                await conn.execute(QUERIES["forget_windows"], stream, since)
                rows = await conn.fetch(
                    QUERIES["windows_due"], stream, since, until, checked_before, limit
                )
        return [(Window(r["window_start"], r["window_end"]), int(r["vendor_count"])) for r in rows]

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

    async def reject_count(self, vendor: str | None = None, account: str | None = None) -> int:
        """How many distinct rejected records are stored (for one vendor and/or account)."""
        with translate("count rejects", self._dsn):
            return int(await self._pool.fetchval(QUERIES["reject_count"], vendor, account))

    @property
    def queues(self) -> Queues:
        """The lookup queue and the VCC Live outbox on this store's pool."""
        from cdrsync.store_queues import Queues

        return Queues(self._pool, self._dsn)

    def lock_session(self) -> StreamLocks:
        """A new, unopened holder of this process's stream locks (its own connection)."""
        from cdrsync.store_lock import StreamLocks

        return StreamLocks(self._dsn, schema=self.schema, connect_timeout=self._connect_timeout)


def server_settings(schema: str) -> dict[str, str]:
    """Session settings of every cdrsync connection: the schema first on the search path."""
    return {"search_path": quote_ident(validate_schema(schema)), "application_name": "cdrsync"}


def _unknown_stream(stream: str) -> StoreError:
    return StoreError(
        f"stream {stream} has no row in sync_state, so its batch was not written; this is a "
        "cdrsync bug (ensure_stream() must run first): please report it"
    )


def __getattr__(name: str) -> Any:
    """``cdrsync.store.StreamLocks``, imported on first use (PEP 562).

    ``store_lock`` builds on this module's helpers, so importing it at the top would be
    circular whichever of the two modules is imported first.
    """
    if name == "StreamLocks":
        from cdrsync.store_lock import StreamLocks

        return StreamLocks
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
