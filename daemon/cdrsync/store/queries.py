"""The SQL shared by every store module: named queries, identifiers, and driver-error translation.

``sql/queries.sql`` holds the named queries; the only dynamic identifier, the schema name, is
validated and quoted here. ``translate`` turns every driver failure into a ``StoreError`` naming
the operation and what to do, and never the DSN's password. Imports asyncpg only for its error
classes; it sits below ``store``, ``lock`` and ``queues`` so that none of them imports another's
helpers in a circle.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import re
from collections.abc import Iterator
from urllib.parse import parse_qs, unquote, urlsplit

import asyncpg

from cdrsync.errors import AccessRefused, ConfigError, StoreError
from cdrsync.model import CALL_COLUMNS

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
    text = (importlib.resources.files("cdrsync.store") / "sql" / "queries.sql").read_text("utf-8")
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
ADVANCE_WINDOW_SQL = QUERIES["advance_window_state"]
"""A window stream's batch ends with it: the state advanced and the windows read recorded."""

CALL_TYPES: dict[str, str] = {
    **dict.fromkeys(CALL_COLUMNS, "text"),
    **dict.fromkeys(("started_at", "answered_at", "ended_at", "fetched_at"), "timestamptz"),
    **dict.fromkeys(("duration_s", "talk_s", "ring_s"), "int"),
    "local_date": "date",
    "raw": "jsonb",
    "content_hash": "bytea",
}
"""The column types of ``calls`` for ``CALL_COLUMNS`` (the one-statement batch's arrays)."""

# The one-statement batch's parameters: $1 now (upsert_calls' own $1), then advance_window_state's
# parameters but the counts, then one array per column of CALL_COLUMNS.
_ADVANCE_PARAMS = {
    1: "$2",  # stream
    2: "(SELECT inserted FROM counted)",
    3: "(SELECT updated FROM counted)",
    4: "$3",  # advance_to
    5: "$4",  # cursor
    6: "$5",  # set cursor?
    7: "$1",  # now: the same instant as upsert_calls' $1
    8: "$6",  # window starts
    9: "$7",  # window ends
    10: "$8",  # vendor counts
}
FIRST_COLUMN_PARAM = 9


def _one(pattern: str, text: str, what: str) -> re.Match[str]:
    match = re.fullmatch(pattern, text, flags=re.DOTALL)
    if match is None:
        raise ValueError(f"cannot derive the one-statement batch: {what} not found")
    return match


def one_statement_sql(upsert: str, advance: str) -> str:
    """``upsert_calls`` and ``advance_window_state`` as one statement (issue 10).

    The rows come from one array per column (``unnest``) instead of the COPied temporary table,
    and only when the stream is registered (the COPY path rolls back instead); the state
    advances by the upsert's counts. One statement is one transaction: the rows and the
    watermark stay atomic. Derived from the two texts, so the merge rules exist once; raises
    ``ValueError`` when a text no longer has the shape it rewrites.
    """
    rows = _one(
        r"(?:--[^\n]*\n)*(WITH up AS \(.*\n\))\s*(SELECT\b.*\bFROM up);?", upsert, "WITH up"
    )
    source = f"FROM {TEMP_TABLE}"
    if rows[1].count(source) != 1:
        raise ValueError(f"cannot derive the one-statement batch: {source!r} not found once")
    arrays = ", ".join(
        f"${FIRST_COLUMN_PARAM + n}::{CALL_TYPES[c]}[]" for n, c in enumerate(CALL_COLUMNS)
    )
    unnest = (
        f"FROM unnest({arrays}) AS {TEMP_TABLE} ({', '.join(CALL_COLUMNS)})"
        " CROSS JOIN (SELECT FROM sync_state WHERE stream = $2::text) AS registered"
    )
    upserted = rows[1].replace(source, unnest)
    state = _one(
        r"(?:--[^\n]*\n)*WITH (advanced AS \(.*\))\s*SELECT stream FROM advanced;?",
        advance,
        "WITH advanced",
    )
    numbers = {int(n) for n in re.findall(r"\$(\d+)", state[1])}
    if numbers != set(_ADVANCE_PARAMS):
        raise ValueError(f"cannot derive the one-statement batch: parameters {sorted(numbers)}")
    advanced = re.sub(r"\$(\d+)", lambda m: _ADVANCE_PARAMS[int(m[1])], state[1])
    return (
        f"{upserted},\ncounted AS (\n{rows[2]}\n),\n{advanced}\n"
        "SELECT a.stream, c.inserted, c.updated FROM advanced AS a, counted AS c"
    )


UPSERT_ADVANCE_SQL = one_statement_sql(UPSERT_CALLS_SQL, ADVANCE_WINDOW_SQL)
"""A small batch without rejects in one statement; ``$1`` now, ``$2`` stream, ``$3`` advance_to,
``$4`` cursor, ``$5`` set cursor?, ``$6..$8`` windows, ``$9..`` the columns (``CALL_COLUMNS``);
returns (stream, inserted, updated), no row for an unregistered stream (then nothing written)."""


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
# Refusals of who connects: the role, its password or pg_hba.conf (class 28), a database that
# does not exist, a role without CONNECT on it (or, later, without a privilege a statement
# needs). Not "unreachable": waiting does not fix them, someone must change the DSN or the role.
_ACCESS_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.InvalidAuthorizationSpecificationError,
    asyncpg.InvalidCatalogNameError,
    asyncpg.InsufficientPrivilegeError,
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
        if isinstance(exc, _ACCESS_ERRORS):
            raise AccessRefused(
                f"PostgreSQL on {target} refused cdrsync ({detail}): cdrsync cannot "
                f"{operation}, so it cannot start (or, running, cannot sync) until this is "
                "fixed. Check the user, password and database name in database.dsn, or the "
                "role's password, privileges and pg_hba.conf rule on the server"
            ) from exc
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


# A batch of 5 000 calls is 10-15 MB in the temporary table (raw is most of it), and the upsert
# sorts it by key. With PostgreSQL's defaults (temp_buffers 8MB, work_mem 4MB) both spill to
# disk on every batch, which halved the store's write rate against a plain COPY (issue 11).
# Session-only settings: memory a connection uses only while it writes a batch.
BATCH_MEMORY = {"temp_buffers": "64MB", "work_mem": "64MB"}


def server_settings(schema: str) -> dict[str, str]:
    """Session settings of every cdrsync connection: the schema first on the search path, and
    room for a write batch in memory (``BATCH_MEMORY``)."""
    return {
        "search_path": quote_ident(validate_schema(schema)),
        "application_name": "cdrsync",
        **BATCH_MEMORY,
    }
