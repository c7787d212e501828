"""The benchmark's PostgreSQL: one embedded server, fresh migrated databases, CPU accounting."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import asyncpg
import psutil

from cdrsync.store.embedded import EmbeddedPostgres
from cdrsync.store.store import Store

SCHEMA = "cdrsync"
SHOWN_SETTINGS = (
    "server_version",
    "fsync",
    "synchronous_commit",
    "full_page_writes",
    "wal_level",
    "shared_buffers",
    "max_wal_size",
    "checkpoint_timeout",
)
# A re-read must find every record again: without its stream's watermark, windows and handed
# request, `cdrsync backfill` starts its range from the beginning.
FORGET_SQL = f"""
DELETE FROM {SCHEMA}.sync_windows WHERE stream LIKE '%/backfill:%';
DELETE FROM {SCHEMA}.backfills WHERE stream LIKE '%/backfill:%';
DELETE FROM {SCHEMA}.sync_state WHERE stream LIKE '%/backfill:%';
"""  # noqa: S608 - a constant schema name
# Rows the re-read inserted or changed: the upsert stamps updated_at on both.
WRITTEN_SINCE_SQL = f"SELECT count(*) FROM {SCHEMA}.calls WHERE updated_at >= $1"  # noqa: S608
COUNT_SQL = f"SELECT count(*) FROM {SCHEMA}.calls"  # noqa: S608 - a constant schema name


class Postgres:
    """The embedded server, and fresh migrated databases on it."""

    def __init__(self, root: Path) -> None:
        self.server = EmbeddedPostgres()  # no settings: PostgreSQL's durable defaults
        self.root = root
        self.dsn_root = ""

    def start(self) -> None:
        """Initialise and start the server."""
        self.dsn_root = self.server.start(self.root / "pg")

    def dsn(self, database: str) -> str:
        """A DSN for ``database`` on this server."""
        return self.server.dsn(database)

    async def settings(self) -> dict[str, str]:
        """The settings that decide durability and write speed."""
        conn = await asyncpg.connect(self.dsn_root)
        try:
            return {name: await conn.fetchval(f"SHOW {name}") for name in SHOWN_SETTINGS}
        finally:
            await conn.close()

    async def admin(self, *statements: str) -> None:
        """Run statements on the maintenance database (outside a transaction)."""
        conn = await asyncpg.connect(self.dsn_root)
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    async def fresh(self, database: str) -> str:
        """Create ``database``, apply cdrsync's migrations, checkpoint; its DSN."""
        await self.admin(f'DROP DATABASE IF EXISTS "{database}"', f'CREATE DATABASE "{database}"')
        store = await Store.connect(self.dsn(database), schema=SCHEMA, pool_size=1)
        try:
            await store.migrate()
        finally:
            await store.close()
        await self.admin("CHECKPOINT")
        return self.dsn(database)

    async def count(self, database: str) -> int:
        """How many calls ``database`` holds."""
        conn = await asyncpg.connect(self.dsn(database))
        try:
            return int(await conn.fetchval(COUNT_SQL))
        finally:
            await conn.close()

    async def fetchval(self, database: str, sql: str, *args: object) -> Any:
        """One value of ``sql`` on ``database``."""
        conn = await asyncpg.connect(self.dsn(database))
        try:
            return await conn.fetchval(sql, *args)
        finally:
            await conn.close()

    async def forget_backfills(self, database: str) -> None:
        """Drop every backfill stream's progress, so the same backfill reads its range again."""
        conn = await asyncpg.connect(self.dsn(database))
        try:
            await conn.execute(FORGET_SQL)
        finally:
            await conn.close()

    def cpu_seconds(self) -> float:
        """CPU time of the server and every backend, living or reaped, so far.

        Waits (up to 5 s) for client backends to exit and be reaped first: only then does a
        backend's CPU move into the postmaster's children times.
        """
        pid = int((self.root / "pg" / "postmaster.pid").read_text().split()[0])
        main = psutil.Process(pid)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and any(_client(c) for c in main.children()):
            time.sleep(0.02)
        own = main.cpu_times()
        total = own.user + own.system + own.children_user + own.children_system
        for child in main.children():
            with contextlib.suppress(psutil.Error):
                times = child.cpu_times()
                total += times.user + times.system
        return total


def _client(process: psutil.Process) -> bool:
    """Whether a server process is a client backend, or any process not reaped yet."""
    try:
        if process.status() == psutil.STATUS_ZOMBIE:
            return True
        return "[local]" in " ".join(process.cmdline())
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True
