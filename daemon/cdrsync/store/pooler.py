"""Is ``database.dsn`` a pooler that hands out server sessions per transaction?

PgBouncer in ``pool_mode = transaction`` (or ``statement``) gives each transaction whichever
server session is idle: a session advisory lock taken by one statement stays behind on a server
session another client may get next, and the stream locks guard nothing. There is no statement
that asks PgBouncer its mode on an ordinary connection (``SHOW pool_mode`` exists on its admin
console only), so this asks PostgreSQL which backend answers: two client connections open side
by side ask ``pg_backend_pid()`` in turns. Directly, or through a session-mode pool, each client
keeps its own backend for as long as it is connected, so the two never share one and neither
changes; per-transaction pooling shows as a shared or a changing backend (a pooler reuses the
idle server session it just got back, so this shows after a few turns).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

from cdrsync.errors import ConfigError
from cdrsync.store.queries import describe_dsn, server_settings, translate

TURNS = 4
"""Statements per connection: each one is a transaction a pooler may move."""


def shares_sessions(first: Sequence[int], second: Sequence[int]) -> bool:
    """Whether the backend pids two side-by-side connections saw, statement after statement,
    show per-transaction pooling: one connection's backend changed, or both used one. Pure."""
    return len(set(first)) > 1 or len(set(second)) > 1 or bool(set(first) & set(second))


def pooler_advice(dsn_description: str) -> str:
    """The error for a per-transaction pooler: what happened, what it breaks, what to do."""
    return (
        f"database.dsn ({dsn_description}) hands out PostgreSQL sessions per transaction (a "
        "pooler such as PgBouncer in pool_mode = transaction or statement): the session "
        "advisory locks that keep two daemons off one stream would not hold, so cdrsync does "
        "not start. Point database.dsn at PostgreSQL directly, or at a pool in "
        "pool_mode = session"
    )


async def check_session_pooling(dsn: str, schema: str, *, connect_timeout: float = 10.0) -> None:
    """Raise ConfigError if ``dsn`` pools per transaction (see the module docstring)."""
    conns: list[Any] = []
    with translate("check how database.dsn pools sessions", dsn):
        try:
            for _ in range(2):
                conns.append(
                    await asyncpg.connect(
                        dsn, timeout=connect_timeout, server_settings=server_settings(schema),
                        # A pooler in transaction mode cannot keep prepared statements either.
                        statement_cache_size=0,
                    )
                )  # fmt: skip
            seen: list[list[int]] = [[], []]
            for _ in range(TURNS):
                for index, conn in enumerate(conns):
                    seen[index].append(int(await conn.fetchval("SELECT pg_backend_pid()")))
        finally:
            for conn in conns:
                conn.terminate()
    if shares_sessions(seen[0], seen[1]):
        raise ConfigError(pooler_advice(describe_dsn(dsn)))
