"""Helpers shared by the integration tests: settings for a simulator, an in-process daemon,
comparing the calls table with the simulator's truth, and waiting without fixed sleeps."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from cdrsync.app import daemon as app
from cdrsync.config import AccountSettings, Settings, parse
from cdrsync.simulator.acefone import AcefoneSimConfig, AcefoneSimulator
from cdrsync.store.queries import QUERIES
from cdrsync.store.store import Store
from cdrsync.vendors.acefone import record_hash

ACCOUNT = "acme-in"


def acefone_settings(
    base_url: str,
    dsn: str,
    *,
    token: str = "sim-token",
    start: dt.date | None = None,
    account: dict[str, Any] | None = None,
    daemon: dict[str, Any] | None = None,
) -> Settings:
    """Validated settings for one Acefone account pointing at a simulator, tuned for tests."""
    acc: dict[str, Any] = {
        "name": ACCOUNT,
        "vendor": "acefone",
        "base_url": base_url,
        "token": token,
        "start": (start or (dt.datetime.now(dt.UTC) - dt.timedelta(days=2)).date()).isoformat(),
        "poll_interval": "300ms",
        "lookback": "1h",
        "settle": "1s",
        "rate_limits": {"list": "100000/min"},
    }
    acc.update(account or {})
    return parse(
        {
            "database": {"dsn": dsn, "schema": "cdrsync"},
            "daemon": {
                "state_dir": "/tmp",
                "http_listen": "",
                "shutdown_grace": "5s",
                **(daemon or {}),
            },
            "accounts": [acc],
        },
        source="<test>",
        environ={},
    )


def backlog_simulator(*, seed: int, backlog: int, days: float, now: float) -> AcefoneSimulator:
    """An Acefone simulator holding only a fixed backlog ending at ``now`` (no live calls, no
    late or changed ones): every read sees the same pages."""
    config = AcefoneSimConfig(
        seed=seed, backlog=backlog, backlog_days=days, live_per_minute=0, late_fraction=0.0,
        change_fraction=0.0,
    )  # fmt: skip
    return AcefoneSimulator(config, now=lambda: now)


def truth_hashes(sim: AcefoneSimulator, at: float | None = None) -> dict[str, bytes]:
    """The simulator's well-formed records as call_key -> content hash of their current version."""
    bad = sim.malformed_ids(at)
    return {
        key: record_hash(text.encode()) for key, text in sim.iter_truth_json(at) if key not in bad
    }


def differences(truth: dict[str, bytes], stored: dict[str, bytes]) -> dict[str, list[str]]:
    """What the table lacks, has in excess, or holds in an older version."""
    return {
        "missing": sorted(truth.keys() - stored.keys())[:20],
        "extra": sorted(stored.keys() - truth.keys())[:20],
        "stale": sorted(k for k, h in truth.items() if k in stored and stored[k] != h)[:20],
    }


async def eventually(
    check: Callable[[], Awaitable[bool]], *, timeout: float, interval: float = 0.2
) -> bool:
    """Poll ``check`` until it is true or ``timeout`` seconds pass; returns the last result."""
    deadline = time.monotonic() + timeout
    while True:
        if await check():
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(interval)


async def synced(store: Store, sim: AcefoneSimulator, timeout: float) -> dict[str, list[str]]:
    """Wait until the table equals the simulator's truth (or time runs out); the differences."""
    diff: dict[str, list[str]] = {}

    async def equal() -> bool:
        nonlocal diff
        diff = differences(truth_hashes(sim), await store.call_hashes("acefone", ACCOUNT))
        return not any(diff.values())

    await eventually(equal, timeout=timeout)
    return diff


@contextlib.asynccontextmanager
async def running_daemon(settings: Settings) -> AsyncIterator[asyncio.Task[None]]:
    """The daemon (``app.run``) as a task in this loop; stopped cleanly on exit."""
    stop = asyncio.Event()
    task = asyncio.create_task(app.run(settings, stop=stop), name="daemon")
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=15)


async def sql_value(dsn: str, query: str, *args: Any) -> Any:
    """One value from the test database (schema cdrsync), for assertions."""
    import asyncpg

    conn = await asyncpg.connect(dsn, server_settings={"search_path": "cdrsync"})
    try:
        return await conn.fetchval(query, *args)
    finally:
        await conn.close()


def one_account(acc: dict[str, Any]) -> AccountSettings:
    """The validated settings of one account table (no database, no HTTP listener)."""
    settings = parse(
        {"daemon": {"state_dir": "/tmp", "http_listen": ""}, "accounts": [acc]},
        source="<test>",
        environ={},
    )
    return settings.accounts[0]


class HashQueries:
    """A store's pool, passed through, counting the stored-hash queries (list_hashes) in
    ``asked``: install with ``store._pool = HashQueries(store._pool)``."""

    def __init__(self, pool: Any) -> None:
        self._pool, self.asked = pool, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)

    async def fetch(self, query: str, *args: Any, **kwargs: Any) -> Any:
        self.asked += query == QUERIES["list_hashes"]
        return await self._pool.fetch(query, *args, **kwargs)
