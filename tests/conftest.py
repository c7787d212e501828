"""Shared fixtures: one PostgreSQL server per session, a fresh database per test.

Unit tests request none of these, so they never start PostgreSQL. Integration tests ask for
``dsn`` (an empty, migrated database of their own, cloned from a template built once per
session) or ``store`` (a connected ``Store`` on it).

The server is an embedded PostgreSQL in a temporary directory, unless ``CDRSYNC_TEST_DSN``
names an external one (its role must be allowed to CREATE DATABASE). Tests that stop or
restart the server take ``restartable_pg``, which skips them on an external server.

pytest-asyncio gives every test its own loop, so session fixtures are synchronous and run
their async work with ``asyncio.run`` in a helper thread, away from any test's loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg
import pytest

from cdrsync.model import CallRecord
from cdrsync.store.embedded import EmbeddedPostgres
from cdrsync.store.store import Store, quote_ident

T = TypeVar("T")
EXTERNAL_DSN_ENV = "CDRSYNC_TEST_DSN"
# Durability is pointless for throw-away test databases; these make CREATE DATABASE and
# commits several times faster.
TEST_SERVER_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
}


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion on a fresh loop in another thread (for sync fixtures)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def dsn_for_database(dsn: str, database: str) -> str:
    """``dsn`` pointing at another database of the same server (URI or key=value form)."""
    if "://" in dsn:
        parts = urlsplit(dsn)
        return urlunsplit(parts._replace(path="/" + quote(database, safe="")))
    if re.search(r"\bdbname\s*=", dsn):
        return re.sub(r"\bdbname\s*=\s*('(?:[^'\\]|\\.)*'|\S+)", f"dbname={database}", dsn)
    return f"{dsn} dbname={database}"


@pytest.fixture(scope="session")
def embedded_pg() -> Iterator[EmbeddedPostgres | None]:
    """The session's embedded PostgreSQL, or None when CDRSYNC_TEST_DSN names a server."""
    if os.environ.get(EXTERNAL_DSN_ENV):
        yield None
        return
    # Not under pytest's tmp_path: as root the server runs as another user, and every pytest
    # run (even a concurrent one) resets /tmp/pytest-of-<user> to mode 0700, locking it out.
    home = Path(tempfile.mkdtemp(prefix="cdrsync-test-pg-"))
    server = EmbeddedPostgres(settings=TEST_SERVER_SETTINGS)
    try:
        server.start(home / "data")
        yield server
    finally:
        server.stop("immediate")
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def restartable_pg(embedded_pg: EmbeddedPostgres | None) -> EmbeddedPostgres:
    """The embedded server, for tests that stop or restart it (skipped on an external one)."""
    if embedded_pg is None:
        pytest.skip(f"restarts the server: needs the embedded PostgreSQL, not {EXTERNAL_DSN_ENV}")
    if not embedded_pg.running():
        embedded_pg.restart()  # a previous test failed while the server was down
    return embedded_pg


@pytest.fixture(scope="session")
def pg_dsn_base(embedded_pg: EmbeddedPostgres | None) -> str:
    """A DSN to the server's maintenance database (allowed to CREATE DATABASE)."""
    if embedded_pg is None:
        return os.environ[EXTERNAL_DSN_ENV]
    return embedded_pg.dsn("postgres")


async def _admin(dsn: str, *statements: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=30)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


async def _drop_database(dsn: str, name: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=30)
    try:
        if conn.get_server_version() >= (13, 0):
            await conn.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")
            return
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
        )
        await conn.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)}")
    finally:
        await conn.close()


async def _migrate(dsn: str) -> None:
    store = await Store.connect(dsn, schema="cdrsync", pool_size=2)
    try:
        await store.migrate()
    finally:
        await store.close()


@pytest.fixture(scope="session")
def pg_template(pg_dsn_base: str) -> Iterator[str]:
    """Name of a database migrated once per session, cloned by every test's ``dsn``."""
    name = f"cdrsync_test_template_{uuid.uuid4().hex[:12]}"
    run_sync(_admin(pg_dsn_base, f"CREATE DATABASE {quote_ident(name)}"))
    try:
        run_sync(_migrate(dsn_for_database(pg_dsn_base, name)))
        yield name
    finally:
        run_sync(_drop_database(pg_dsn_base, name))


@pytest.fixture
async def dsn(pg_dsn_base: str, pg_template: str) -> AsyncIterator[str]:
    """A DSN to a fresh database of this test only, with cdrsync's schema migrated."""
    name = f"t_{uuid.uuid4().hex}"
    await _admin(
        pg_dsn_base, f"CREATE DATABASE {quote_ident(name)} TEMPLATE {quote_ident(pg_template)}"
    )
    try:
        yield dsn_for_database(pg_dsn_base, name)
    finally:
        await _drop_database(pg_dsn_base, name)


@pytest.fixture
async def empty_dsn(pg_dsn_base: str) -> AsyncIterator[str]:
    """A DSN to a fresh database of this test only, with nothing of cdrsync in it."""
    name = f"t_{uuid.uuid4().hex}"
    await _admin(pg_dsn_base, f"CREATE DATABASE {quote_ident(name)}")
    try:
        yield dsn_for_database(pg_dsn_base, name)
    finally:
        await _drop_database(pg_dsn_base, name)


@pytest.fixture
async def store(dsn: str) -> AsyncIterator[Store]:
    """A ``Store`` connected to this test's database (schema "cdrsync")."""
    opened = await Store.connect(dsn)
    try:
        yield opened
    finally:
        await asyncio.wait_for(opened.close(), timeout=30)


CALL_TIME = dt.datetime(2024, 5, 1, 10, 0, tzinfo=dt.UTC)


def build_call(
    key: str, *, fetched: dt.datetime = CALL_TIME, status: str = "answered", **fields: Any
) -> CallRecord:
    """A normalized answered inbound Acefone call; ``fields`` override any column.

    ``raw`` and ``content_hash`` follow the content, so a changed field is a changed record.
    """
    values: dict[str, Any] = {
        "vendor": "acefone",
        "account": "main",
        "call_key": key,
        "call_id": f"1714557600.{key}",
        "call_uuid": None,
        "direction": "inbound",
        "status": status,
        "started_at": CALL_TIME,
        "answered_at": CALL_TIME + dt.timedelta(seconds=5),
        "ended_at": CALL_TIME + dt.timedelta(seconds=65),
        "duration_s": 65,
        "talk_s": 60,
        "ring_s": 5,
        "agent_name": "Asha",
        "agent_number": "101",
        "customer_number": "+919800000000",
        "line_number": "+911140000000",
        "department": "sales",
        "hangup_cause": "NORMAL_CLEARING",
        "recording_url": None,
        "service": None,
        "description": None,
        "local_date": dt.date(2024, 5, 1),
        "fetched_at": fetched,
    }
    values.update(fields)
    content = {k: None if v is None else str(v) for k, v in values.items() if k != "fetched_at"}
    raw = json.dumps(content, sort_keys=True)
    return CallRecord(**values, raw=raw, content_hash=hashlib.sha256(raw.encode()).digest())


@pytest.fixture
def make_call() -> Callable[..., CallRecord]:
    """The ``build_call`` factory: ``make_call("k1", status="missed", talk_s=0)``."""
    return build_call
