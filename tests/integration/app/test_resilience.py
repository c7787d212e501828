"""Resilience of the daemon end to end: rate limits, 429s, vendor faults, malformed records,
PostgreSQL outages, two instances on one database, bad credentials and Acefone's login mode.

Every test runs ``app.run`` in-process (``support.running_daemon``) against the Acefone
simulator on 127.0.0.1 and a real PostgreSQL, and asserts on what an operator would notice:
the calls table against the simulator's truth, the requests the vendor saw, and the log events.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import itertools
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import asyncpg
import orjson
import pytest
import structlog

from cdrsync.config import Settings
from cdrsync.settings_types import Secret
from cdrsync.simulator.acefone import AcefoneSimConfig, AcefoneSimulator, Admission
from cdrsync.simulator.server import start_server
from cdrsync.store.embedded import EmbeddedPostgres
from cdrsync.store.store import Store
from support import (
    ACCOUNT,
    acefone_settings,
    differences,
    eventually,
    running_daemon,
    sql_value,
    synced,
    truth_hashes,
)

IN_STEP: dict[str, list[object]] = {"missing": [], "extra": [], "stale": []}
STREAM = f"{ACCOUNT}/list"
# Issued login tokens all start with this JWT header (simulator/acefone.py): a cheap way to
# look for any of them in the logs.
JWT_HEAD = "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9"

Logs = list[MutableMapping[str, Any]]  # what structlog.testing.capture_logs gives


class RecordingSimulator(AcefoneSimulator):
    """The simulator, also noting every list request's arrival time, status and Retry-After."""

    def __init__(self, config: AcefoneSimConfig) -> None:
        super().__init__(config)
        self.arrivals: list[tuple[float, int, int | None]] = []

    def admit_list_request(self, authorization: str | None) -> Admission:
        """The simulator's decision, recorded."""
        admission = super().admit_list_request(authorization)
        self.arrivals.append((self.now(), admission.status, admission.retry_after))
        return admission


@contextlib.asynccontextmanager
async def serving(sim: AcefoneSimulator) -> AsyncIterator[str]:
    """``sim`` over HTTP on 127.0.0.1; yields its base URL."""
    server = await start_server(sim)
    try:
        yield server.base_url
    finally:
        await server.close()


def quiet_config(**changes: Any) -> AcefoneSimConfig:
    """A simulator config whose truth settles quickly: no late records, no later changes."""
    base: dict[str, Any] = {
        "seed": 21,
        "backlog": 1000,
        "backlog_days": 0.05,
        "live_per_minute": 60.0,
        "visible_delay_s": (0.2, 1.0),
        "late_fraction": 0.0,
        "change_fraction": 0.0,
    }
    return AcefoneSimConfig(**{**base, **changes})


def settings_for(url: str, dsn: str, **account: Any) -> Settings:
    """Test settings starting yesterday with 6 h windows: few empty windows to page through
    before the backlog, so rate-limited tests spend their budget on real pages."""
    yesterday = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
    return acefone_settings(url, dsn, start=yesterday, account={"window": "6h", **account})


def with_login(settings: Settings, email: str, password: str) -> Settings:
    """``settings`` whose account logs in with email/password instead of a long-lived token."""
    account = dataclasses.replace(
        settings.accounts[0],
        token=None,
        email=email,
        password=Secret(value=password, source="literal"),
    )
    return dataclasses.replace(settings, accounts=(account,))


def events(logs: Logs, name: str, **fields: Any) -> Logs:
    """The captured events called ``name`` whose fields include ``fields``."""
    return [e for e in logs if e["event"] == name and all(e.get(k) == v for k, v in fields.items())]


def busiest_window(times: list[float], period: float) -> int:
    """The most requests inside any sliding window ``[t, t + period)`` that starts at one."""
    ordered = sorted(times)
    most, end = 0, 0
    for start, t in enumerate(ordered):
        while end < len(ordered) and ordered[end] - t < period:
            end += 1
        most = max(most, end - start)
    return most


async def in_step(dsn: str, sim: AcefoneSimulator, within: float) -> dict[str, list[str]]:
    """``support.synced`` on a Store of its own (so that it survives a PostgreSQL restart)."""
    store = await Store.connect(dsn, pool_size=2)
    try:
        return await synced(store, sim, timeout=within)
    finally:
        await store.close()


async def all_stored(dsn: str, truth: dict[str, bytes], within: float) -> dict[str, list[str]]:
    """``in_step`` for a simulator whose truth no longer changes (no live, late or changed
    calls), hashed once by the caller: it polls the row count, and compares once.

    The simulator shares this event loop, and hashing its thousands of records takes about
    half a second: at every poll the vendor would see requests arrive that late, as long as
    the rate limiter's margin, and a request sent within the limit could meet a 429."""

    async def complete() -> bool:
        return await sql_value(dsn, "SELECT count(*) FROM calls") >= len(truth)

    await eventually(complete, timeout=within)
    rows = await _rows(dsn, "SELECT call_key, content_hash FROM calls")
    return differences(truth, {r["call_key"]: bytes(r["content_hash"]) for r in rows})


async def logged(logs: Logs, name: str, within: float, **fields: Any) -> bool:
    """Wait until an event ``name`` with ``fields`` has been captured."""

    async def seen() -> bool:
        return bool(events(logs, name, **fields))

    return await eventually(seen, timeout=within, interval=0.05)


# ---------------------------------------------------------------------------- rate limits


async def test_rate_limit_is_never_exceeded_in_any_sliding_window(dsn):
    """At the vendor's limit (20/5 s) a many-page backlog syncs with zero 429s, <= 20 a window."""
    # No live calls: each arrival shifts Acefone's newest-first pages and forces a re-read of
    # the window, which is not what this test is about (test_sync_acefone covers drift).
    sim = AcefoneSimulator(
        quiet_config(
            backlog=3000, backlog_days=0.1, live_per_minute=0, rate_limit=20, rate_period_s=5.0
        )
    )
    limit = 20
    sim.stop_live()  # there are none: this makes the truth final, and known in advance
    truth = truth_hashes(sim, at=max(sim.now(), sim.last_visible_time()))
    async with serving(sim) as url:
        settings = settings_for(url, dsn, rate_limits={"list": f"{limit}/5s"})
        pages = -(-sim.config.backlog // settings.accounts[0].page_size)
        assert pages > limit, "the backlog alone must need more requests than a window allows"
        async with running_daemon(settings) as daemon:
            diff = await all_stored(dsn, truth, within=45)
            synced_at = len(sim.stats.request_times)

            async def steady() -> bool:
                return len(sim.stats.request_times) > synced_at + limit

            # Steady state: the lookback hour re-read at full budget, for more than one
            # window's worth of requests (counted, not timed).
            assert await eventually(steady, timeout=45), "no re-reads after the sync"
            assert not daemon.done()
    assert diff == IN_STEP
    assert sim.stats.rate_limited == 0, f"{sim.stats.rate_limited} requests got 429"
    assert sim.stats.responses.get(429, 0) == 0
    assert busiest_window(sim.stats.request_times, 5.0) <= limit


@pytest.mark.parametrize("send_retry_after", [True, False], ids=["retry-after", "no-header"])
async def test_429_is_honoured_and_the_table_still_converges(dsn, send_retry_after):
    """After a 429 nothing is sent until Retry-After (or one window) passes; calls converges."""
    sim = RecordingSimulator(
        quiet_config(
            backlog=2500,
            backlog_days=0.1,
            live_per_minute=0,
            rate_limit=20,
            rate_period_s=5.0,
            send_retry_after=send_retry_after,
        )
    )
    sim.stop_live()  # there are none: this makes the truth final, and known in advance
    truth = truth_hashes(sim, at=max(sim.now(), sim.last_visible_time()))
    async with serving(sim) as url:
        settings = settings_for(url, dsn, rate_limits={"list": "60/5s"})
        with structlog.testing.capture_logs() as logs:
            async with running_daemon(settings) as daemon:
                # Not in_step: hashing the truth at each poll would delay arrivals by as much
                # as the in-flight allowance below.
                diff = await all_stored(dsn, truth, within=45)
                assert not daemon.done()
    assert diff == IN_STEP
    assert sim.stats.rate_limited > 0, "the daemon's higher limit should have met 429s"
    assert events(logs, "http.rate_limited")
    at, _, retry_after = next(a for a in sim.arrivals if a[1] == 429)
    if send_retry_after:
        assert retry_after is not None
        pause = float(retry_after)
    else:
        pause = 5.0  # the vendor's window: anything sooner still counts against the limit
    # Requests already granted when the 429 came back may still arrive just after it.
    in_flight = 0.5
    early = [round(t - at, 3) for t, _, _ in sim.arrivals if at + in_flight < t < at + pause - 0.05]
    assert early == [], f"requests {early} s after a 429 that asked for {pause} s"
    assert any(t >= at + pause for t, _, _ in sim.arrivals), "the daemon never resumed"


# ---------------------------------------------------------------------------- vendor faults


async def test_5xx_slow_and_truncated_pages_are_retried_and_nothing_is_skipped(dsn):
    """503s, truncated bodies and slow answers are retried until whole: calls equals the truth."""
    sim = AcefoneSimulator(
        quiet_config(backlog=1500, fault_5xx=0.2, fault_truncated=0.2, fault_slow=0.1, slow_s=2.0)
    )
    async with serving(sim) as url:
        settings = settings_for(url, dsn, request_timeout="1s")
        with structlog.testing.capture_logs() as logs:
            async with running_daemon(settings) as daemon:
                await asyncio.sleep(
                    3
                )  # live calls for a while (the simulator's clock is the wall's)
                sim.stop_live()
                diff = await in_step(dsn, sim, within=60)
                assert not daemon.done()
    assert diff == IN_STEP
    assert sim.stats.responses.get(503, 0) > 0
    retries = events(logs, "http.retry", endpoint="acme-in/acefone.call_records")
    kinds = {e["error"] for e in retries}
    assert {"TransientError", "BadPageError"} <= kinds, kinds


async def test_account_request_timeout_cuts_a_slow_response(dsn):
    """An answer slower than the account's request_timeout is abandoned and retried."""
    sim = AcefoneSimulator(quiet_config(backlog=200, live_per_minute=0, fault_slow=0.5, slow_s=3.0))
    async with serving(sim) as url:
        settings = settings_for(url, dsn, request_timeout="1s")
        with structlog.testing.capture_logs() as logs:
            async with running_daemon(settings):
                timed_out = await eventually(lambda: _has_timeout(logs), timeout=30, interval=0.1)
    assert timed_out, (
        "no request was cut at the account's 1 s request_timeout although the vendor took 3 s; "
        f"http.retry events: {[e.get('message') for e in events(logs, 'http.retry')]}"
    )


async def _has_timeout(logs: Logs) -> bool:
    return any("timed out" in str(e.get("message")) for e in events(logs, "http.retry"))


# ---------------------------------------------------------------------------- bad records


async def test_malformed_records_go_to_rejects_once_per_payload(dsn):
    """Malformed records land in rejects (not calls), once per payload, counted on re-reads."""
    sim = AcefoneSimulator(
        quiet_config(seed=4, backlog=1200, backlog_days=0.03, live_per_minute=0,
                     malformed_fraction=0.02)
    )  # fmt: skip
    bad = sim.malformed_ids()
    assert len(bad) >= 10, "the test needs malformed records"
    truth = sim.truth()
    rejects_sql = "SELECT count(*) FROM rejects"
    seen_sql = "SELECT coalesce(sum(seen_count), 0) FROM rejects"
    async with serving(sim) as url:
        async with running_daemon(settings_for(url, dsn)) as daemon:
            diff = await in_step(dsn, sim, within=40)

            async def all_rejected() -> bool:
                return await sql_value(dsn, rejects_sql) >= len(bad)

            assert await eventually(all_rejected, timeout=30)
            seen_before = await sql_value(dsn, seen_sql)
            cycles = (await _state_cycles(dsn)) + 3

            async def more_cycles() -> bool:
                return await _state_cycles(dsn) >= cycles

            assert await eventually(more_cycles, timeout=30)
            assert not daemon.done()
        rows = await _rows(dsn, "SELECT call_key, reason, payload, seen_count, stream FROM rejects")
        in_calls = await sql_value(
            dsn, "SELECT count(*) FROM calls WHERE call_key = ANY($1::text[])", sorted(bad)
        )
        seen_after = await sql_value(dsn, seen_sql)
    assert diff == IN_STEP  # every good record, nothing else, in calls
    assert in_calls == 0
    assert sorted(r["call_key"] for r in rows) == sorted(bad), "one reject row per bad record"
    for row in rows:
        assert row["reason"], row
        assert row["stream"] == STREAM
        expected = orjson.dumps(truth[row["call_key"]], option=orjson.OPT_SORT_KEYS).decode()
        assert orjson.loads(row["payload"]) == orjson.loads(expected)
        assert row["seen_count"] >= 2, "re-read rejects are counted"
    assert seen_after > seen_before


async def _state_cycles(dsn: str) -> int:
    return int(await sql_value(dsn, "SELECT cycles FROM sync_state WHERE stream = $1", STREAM) or 0)


async def _rows(dsn: str, query: str) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(dsn, server_settings={"search_path": "cdrsync"})
    try:
        return [dict(r) for r in await conn.fetch(query)]
    finally:
        await conn.close()


# ---------------------------------------------------------------------------- PostgreSQL outages


async def test_postgres_restart_mid_sync_is_survived(restartable_pg: EmbeddedPostgres, dsn):
    """A PostgreSQL outage mid-sync fails cycles, not the daemon; afterwards calls catches up."""
    sim = AcefoneSimulator(quiet_config(backlog=1500, live_per_minute=120.0))
    async with serving(sim) as url:
        with structlog.testing.capture_logs() as logs:
            async with running_daemon(settings_for(url, dsn)) as daemon:
                assert await logged(logs, "sync.cycle_done", within=15)
                try:
                    await asyncio.to_thread(restartable_pg.stop)
                    # A cycle fails while PostgreSQL is down (waited for, not timed).
                    failed = await logged(logs, "sync.cycle_failed", within=30,
                                          error_type="StoreError")  # fmt: skip
                    assert not daemon.done(), "the daemon ended while PostgreSQL was down"
                finally:
                    await asyncio.to_thread(restartable_pg.restart)
                sim.stop_live()
                diff = await in_step(dsn, sim, within=45)
                assert not daemon.done(), "the daemon ended after PostgreSQL came back"
    assert failed, "no sync.cycle_failed (StoreError) logged while PostgreSQL was down"
    assert diff == IN_STEP


async def test_daemon_started_while_postgres_is_down_waits_for_it(
    restartable_pg: EmbeddedPostgres, dsn
):
    """A daemon started while PostgreSQL is down logs db.unavailable, waits, then syncs."""
    sim = AcefoneSimulator(quiet_config(live_per_minute=0))
    async with serving(sim) as url:
        with structlog.testing.capture_logs() as logs:
            await asyncio.to_thread(restartable_pg.stop)
            try:
                async with running_daemon(settings_for(url, dsn)) as daemon:
                    assert await logged(logs, "db.unavailable", within=30)
                    await asyncio.sleep(1.5)
                    assert not daemon.done(), "the daemon gave up waiting for PostgreSQL"
                    assert not events(logs, "daemon.started")
                    await asyncio.to_thread(restartable_pg.restart)
                    assert await logged(logs, "daemon.started", within=20)
                    diff = await in_step(dsn, sim, within=30)
            finally:
                if not restartable_pg.running():
                    await asyncio.to_thread(restartable_pg.restart)
    assert diff == IN_STEP


# ---------------------------------------------------------------------------- two instances


async def test_one_owner_per_stream_and_takeover(dsn):
    """Of two daemons on one database only one syncs the stream; the other takes over after."""
    sim = AcefoneSimulator(quiet_config(live_per_minute=120.0))
    async with serving(sim) as url:
        first = settings_for(url, dsn)
        # The second instance logs in with email/password: any request it made would show in
        # the simulator's login count, so "it sent nothing" is checked at the vendor's side.
        second = with_login(first, sim.config.email, sim.config.password)
        merge = [structlog.contextvars.merge_contextvars]
        with structlog.testing.capture_logs(processors=merge) as logs:
            async with contextlib.AsyncExitStack() as waiting, contextlib.AsyncExitStack() as owner:
                with structlog.contextvars.bound_contextvars(instance="a"):
                    task_a = await owner.enter_async_context(running_daemon(first))
                assert await logged(logs, "stream.owned", within=15, instance="a")
                with structlog.contextvars.bound_contextvars(instance="b"):
                    task_b = await waiting.enter_async_context(running_daemon(second))
                assert await logged(logs, "stream.owned_elsewhere", within=15, instance="b")
                cycles_a = len(events(logs, "sync.cycle_done", instance="a"))

                async def more_cycles_of_a() -> bool:
                    # Several poll intervals of both, counted in a's cycles (not timed).
                    return len(events(logs, "sync.cycle_done", instance="a")) >= cycles_a + 5

                assert await eventually(more_cycles_of_a, timeout=30)
                assert not task_a.done()
                assert events(logs, "sync.cycle_done", instance="a")
                assert not events(logs, "stream.owned", instance="b")
                assert not [e for e in logs if e.get("instance") == "b" and
                            e["event"].startswith(("sync.", "http."))]  # fmt: skip
                assert sim.stats.logins == 0, "the instance without the stream sent requests"

                await owner.aclose()  # instance a stops; its lock session ends with it
                assert task_a.done()
                assert await logged(logs, "stream.owned", within=30, instance="b")
                sim.stop_live()
                diff = await in_step(dsn, sim, within=40)
                assert not task_b.done()
    assert diff == IN_STEP
    assert sim.stats.logins >= 1
    assert events(logs, "sync.cycle_done", instance="b")


# ---------------------------------------------------------------------------- credentials


async def test_wrong_token_fails_politely_without_leaking_it(dsn):
    """A rejected token says "check the token", backs off without crashing, and never leaks."""
    token = "bad-token-7Qm2xZ9wLp"
    sim = RecordingSimulator(quiet_config(live_per_minute=0))
    async with serving(sim) as url:
        settings = acefone_settings(url, dsn, token=token, account={"poll_interval": "3s"})
        with structlog.testing.capture_logs() as logs:
            async with running_daemon(settings) as daemon:
                assert await logged(logs, "sync.cycle_failed", within=30)

                async def retried() -> bool:
                    return sim.stats.list_requests >= 3

                assert await eventually(retried, timeout=30), "it stopped trying"
                assert not daemon.done()
        last_error = await sql_value(dsn, "SELECT last_error FROM sync_state WHERE stream = $1",
                                     STREAM)  # fmt: skip
    failed = events(logs, "sync.cycle_failed")
    assert {e["error_type"] for e in failed} == {"AuthError"}
    assert "check the account's token" in failed[0]["error"]
    assert sim.stats.responses.get(401, 0) == sim.stats.list_requests
    # It keeps trying (3 requests), and pauses between tries: at least the poll interval
    # (a stream retrying without a pause would make dozens). A slow machine only adds to it.
    times = [t for t, status, _ in sim.arrivals if status == 401]
    gaps = [round(b - a, 2) for a, b in itertools.pairwise(times)]
    assert gaps and min(gaps) >= 2.9, gaps
    assert token not in repr(logs)
    assert last_error
    assert token not in last_error


async def test_login_mode_logs_in_and_syncs(dsn):
    """An email/password account logs in and syncs calls; no password or token is logged."""
    sim = AcefoneSimulator(quiet_config())
    async with serving(sim) as url:
        settings = with_login(settings_for(url, dsn), sim.config.email, sim.config.password)
        with structlog.testing.capture_logs() as logs:
            async with running_daemon(settings) as daemon:
                await asyncio.sleep(
                    2
                )  # live calls for a while (the simulator's clock is the wall's)
                sim.stop_live()
                diff = await in_step(dsn, sim, within=40)
                assert not daemon.done()
    assert diff == IN_STEP
    assert sim.stats.logins >= 1
    assert sim.stats.responses.get(401, 0) == 0
    assert events(logs, "acefone.token_renewed")
    assert sim.config.password not in repr(logs)
    assert JWT_HEAD not in repr(logs)
