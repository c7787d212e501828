"""Scarce rate budgets shared through PostgreSQL by every process of an account.

Each "stack" below is what one process builds: its own ``Store`` (its own pool) and its own
``shared_limiters`` for the same account on the same database, as a daemon and a ``backfill``
process, or two daemons holding different streams of one account, would have.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import pytest
from structlog.testing import capture_logs

from cdrsync.app.streams import shared_limiters
from cdrsync.config import AccountSettings
from cdrsync.errors import StoreError
from cdrsync.http.limiter import SlidingWindowLimiter
from cdrsync.store.queues import Queues
from cdrsync.store.store import Store
from support import one_account, sql_value

ACCOUNT = "acme-in"


def account(rate: str) -> AccountSettings:
    """An Acefone account whose list budget is ``rate`` (scarce: at most one a second)."""
    acc = {
        "name": ACCOUNT, "vendor": "acefone", "base_url": "http://127.0.0.1:9", "token": "t",
        "start": "2026-01-01", "rate_limits": {"list": rate},
    }  # fmt: skip
    return one_account(acc)


Stack = Callable[[str], Awaitable[SlidingWindowLimiter]]


@pytest.fixture
async def stack(dsn: str) -> AsyncIterator[Stack]:
    """Builds one process's list limiter for ``rate``: a store of its own, shared_limiters."""
    stores: list[Store] = []

    async def build(rate: str) -> SlidingWindowLimiter:
        store = await Store.connect(dsn, pool_size=2)
        stores.append(store)
        runtime = SimpleNamespace(store=store)  # all of a Runtime that shared_limiters reads
        limiters = await shared_limiters(runtime, account(rate))  # type: ignore[arg-type]
        limiter = limiters["list"]
        assert limiter.scarce and limiter.gate is not None
        return limiter

    try:
        yield build
    finally:
        for store in stores:
            await asyncio.wait_for(store.close(), timeout=30)


def most_in_any_window(times: list[float], period: float) -> int:
    """The most times inside one sliding window of ``period`` seconds."""
    ordered = sorted(times)
    return max(
        (sum(1 for t in ordered[i:] if t - start < period) for i, start in enumerate(ordered)),
        default=0,
    )


async def send(limiter: SlidingWindowLimiter, sent: list[float], count: int) -> None:
    """``count`` requests one after another; ``sent`` gets the time each one goes out."""
    for _ in range(count):
        await limiter.acquire()
        sent.append(time.monotonic())


async def test_two_processes_together_never_exceed_the_budget(stack: Stack) -> None:
    """Two processes spending one account's 2/2s budget at once stay within 2 in every
    sliding 2 s between them, and both get a share."""
    first, second = await stack("2/2s"), await stack("2/2s")
    sent: dict[str, list[float]] = {"first": [], "second": []}
    await asyncio.gather(
        send(first, sent["first"], 2), send(second, sent["second"], 2),
        send(first, sent["first"], 1), send(second, sent["second"], 1),
    )  # fmt: skip
    assert len(sent["first"]) == len(sent["second"]) == 3
    assert most_in_any_window(sent["first"] + sent["second"], 2.0) == 2


async def test_a_process_waits_for_the_grants_of_another(stack: Stack) -> None:
    """A process started before another spent the window (so its seed saw nothing) waits for
    that window to pass before its first request."""
    first, second = await stack("2/2s"), await stack("2/2s")
    await send(first, [], 2)
    spent = time.monotonic()
    await send(second, [], 1)
    assert time.monotonic() - spent >= 2.0
    assert second.used(time.monotonic()) == 1


async def test_a_slow_database_cannot_bring_grants_closer(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A grant whose database step returns 1 s late is timestamped when it returns: the next
    request of the process still goes out a full window after it, not after the insert."""
    limiter = await stack("1/1s")
    take_grant = Queues.take_grant
    delays = [1.0]

    async def slow(self: Queues, *args: Any, **kwargs: Any) -> float:
        wait = await take_grant(self, *args, **kwargs)
        if delays:
            await asyncio.sleep(delays.pop())  # the answer comes back late
        return wait

    monkeypatch.setattr(Queues, "take_grant", slow)
    sent: list[float] = []
    await asyncio.gather(send(limiter, sent, 1), send(limiter, sent, 1))
    assert sent[1] - sent[0] >= 1.0 + limiter.margin


async def test_the_grant_table_stays_small(store: Store, dsn: str) -> None:
    """Each grant forgets its group's grants older than the window: many grants leave a few
    rows, and the grants of other groups are kept."""
    queues = store.queues
    await queues.take_grant("other", "list", limit=5, window=60.0)
    for _ in range(200):
        assert await queues.take_grant(ACCOUNT, "lookup", limit=10_000, window=0.2) == 0.0
    await asyncio.sleep(0.3)
    await queues.take_grant(ACCOUNT, "lookup", limit=10_000, window=0.2)
    assert await sql_value(dsn, "SELECT count(*) FROM rate_grants WHERE grp = 'lookup'") == 1
    assert await sql_value(dsn, "SELECT count(*) FROM rate_grants WHERE account = 'other'") == 1


async def test_a_full_window_answers_when_the_oldest_grant_leaves_it(store: Store) -> None:
    """With the budget spent, the database answers the seconds until the grant that fills the
    window leaves it, and records nothing."""
    queues = store.queues
    assert await queues.take_grant(ACCOUNT, "list", limit=2, window=10.0) == 0.0
    assert await queues.take_grant(ACCOUNT, "list", limit=2, window=10.0) == 0.0
    wait = await queues.take_grant(ACCOUNT, "list", limit=2, window=10.0)
    assert 9.0 < wait <= 10.0
    assert (
        await queues.grant_ages(ACCOUNT, "list", within=10.0)
        == [pytest.approx(10.0 - wait, abs=1.0)] * 2
    )


async def test_the_grant_function_waits_for_the_limit_th_most_recent_grant(dsn: str) -> None:
    """A full budget answers the wait until the limit-th newest grant leaves, recording none."""
    ages = [70, 50, 30, 10]  # seconds ago; a 60 s window holds the last three
    for age in ages:
        await sql_value(
            dsn,
            "INSERT INTO rate_grants (account, grp, granted_at) "
            "VALUES ($1, 'list', clock_timestamp() - make_interval(secs => $2))",
            ACCOUNT, float(age),
        )  # fmt: skip
    wait = await sql_value(dsn, "SELECT take_rate_grant($1, 'list', 2, 60.0)", ACCOUNT)
    assert 28.0 < wait <= 30.0  # the grant of 30 s ago leaves in 30 s; then 1 of 2 remains
    left = await sql_value(dsn, "SELECT count(*) FROM rate_grants WHERE account = $1", ACCOUNT)
    assert left == 3  # the 70 s old grant is forgotten, no new one is recorded
    assert await sql_value(dsn, "SELECT take_rate_grant($1, 'list', 4, 60.0)", ACCOUNT) == 0.0


async def test_without_the_database_the_request_still_goes_out(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the grant cannot be taken in PostgreSQL the process's own limiter decides alone,
    with a warning."""
    limiter = await stack("2/2s")

    async def down(self: Queues, *args: Any, **kwargs: Any) -> float:
        raise StoreError("could not take a list request grant (PostgreSQL is unreachable)")

    monkeypatch.setattr(Queues, "take_grant", down)
    with capture_logs() as logs:
        await asyncio.wait_for(send(limiter, [], 2), timeout=10.0)  # not held back: 2 within 2/2s
    assert [e["event"] for e in logs] == ["rate.grant_not_recorded"] * 2
    assert limiter.used(time.monotonic()) == 2
