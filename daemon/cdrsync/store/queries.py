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
