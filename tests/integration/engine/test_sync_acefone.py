"""The Acefone window stream end to end: real simulator over HTTP, real PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import time
from collections.abc import AsyncIterator, MutableMapping
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import structlog

from cdrsync.app import daemon as app
from cdrsync.app.runtime import runtime
from cdrsync.engine.window import WindowStream
from cdrsync.errors import StoreError
from cdrsync.simulator.acefone import AcefoneSimConfig, AcefoneSimulator
from cdrsync.simulator.server import start_server
from cdrsync.vendors.acefone import record_hash
from support import (
    ACCOUNT,
    HashQueries,
    acefone_settings,
    differences,
    eventually,
    running_daemon,
    sql_value,
    synced,
    truth_hashes,
)

IN_STEP: dict[str, list[object]] = {"missing": [], "extra": [], "stale": []}


class FakeClock:
    """Epoch seconds that move only when the test says so."""

    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def utc(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.now, dt.UTC)


def drifting(clock: FakeClock):
    """A source wrapper that moves the simulator's clock by a minute right after the first page
    of the newest window: the rows due in that minute appear while the window is being read."""
    moved: list[bool] = []

    class Drifting:
        def __init__(self, inner):
            self.inner, self.vendor, self.page_size = inner, inner.vendor, inner.page_size

        async def count(self, window):
            return await self.inner.count(window)

        async def fetch_page(self, window, page):
            result = await self.inner.fetch_page(window, page)
            newest = window.end >= clock.utc() - dt.timedelta(seconds=1)
            if page == 1 and newest and not moved:
                moved.append(window)
                clock.now += 60
            return result

    return Drifting


@pytest.fixture
async def sim_server() -> AsyncIterator[tuple[AcefoneSimulator, str]]:
    """A busy simulator (backlog, live arrivals, late and changed records) on 127.0.0.1."""
    sim = AcefoneSimulator(
        AcefoneSimConfig(
            seed=11,
            backlog=1500,
            backlog_days=1.0,
            live_per_minute=600.0,
            visible_delay_s=(0.2, 1.0),
            late_fraction=0.05,
            late_delay_s=(1.0, 3.0),
            change_fraction=0.1,
            change_delay_s=(0.5, 3.0),
        )
    )
    server = await start_server(sim)
    try:
        yield sim, server.base_url
    finally:
        await server.close()


async def test_backlog_and_live_arrivals_end_exactly_equal(sim_server, dsn, store):
    """After the backlog and live arrivals, calls equals the simulator: none missing, none extra,
    none stale, no duplicates."""
    sim, url = sim_server
    async with running_daemon(acefone_settings(url, dsn)):
        await asyncio.sleep(4)  # live calls keep arriving while the backlog is read
        sim.stop_live()
        diff = await synced(store, sim, timeout=30)
    assert diff == IN_STEP
    assert len(truth_hashes(sim)) > 1500
    dupes = await sql_value(
        dsn, "SELECT count(*) - count(DISTINCT (vendor, account, call_key)) FROM calls"
    )
    assert dupes == 0


async def test_unchanged_reread_writes_nothing(sim_server, dsn, store):
    """Once in step, further cycles over the lookback write no row (content hash unchanged)."""
    sim, url = sim_server
    sim.stop_live()
    settings = acefone_settings(url, dsn, account={"settle": "0s"})
    async with running_daemon(settings):
        assert await synced(store, sim, timeout=30) == IN_STEP
        await asyncio.sleep(max(0.0, sim.last_visible_time() - time.time()) + 0.5)
        before = await sql_value(dsn, "SELECT max(updated_at) FROM calls")
        state_before = await store.load_state(f"{ACCOUNT}/list")

        async def more_cycles() -> bool:
            # Several more cycles over the lookback hour, counted (a busy machine is slower).
            state = await store.load_state(f"{ACCOUNT}/list")
            return state.cycles >= state_before.cycles + 3

        assert await eventually(more_cycles, timeout=30)
        after = await sql_value(dsn, "SELECT max(updated_at) FROM calls")
        state_after = await store.load_state(f"{ACCOUNT}/list")
    assert state_after.cycles > state_before.cycles
    assert after == before
    assert (state_after.rows_inserted, state_after.rows_updated) == (
        state_before.rows_inserted,
        state_before.rows_updated,
    )


@dataclasses.dataclass
class Clocked:
    """A simulator on a fake clock, served on 127.0.0.1, and settings for an account on it."""

    clock: FakeClock
    sim: AcefoneSimulator
    dsn: str
    url: str

    def settings(self, **account):
        """Settings starting the day before, with ``account`` overrides (settle 0s default).
        The day of the account's zone (IST), not UTC's: from 00:00 to 05:30 IST the UTC date
        is a day behind, the start two IST days back, and three tests failed then."""
        start = self.clock.utc().astimezone(ZoneInfo("Asia/Kolkata")).date() - dt.timedelta(days=1)
        return acefone_settings(
            self.url, self.dsn, start=start, account={"settle": "0s", **account}
        )

    async def cycle(self, settings, *, wrap=None) -> None:
        """Cycles of the account's stream at the fake time, until it has caught up."""
        stop = asyncio.Event()
        async with runtime(settings, stop) as rt:
            assert rt is not None
            stream = app.build_stream(rt, settings.accounts[0], stop, clock=self.clock.utc)
            if wrap is not None:
                stream._source = wrap(self.clock)(stream._source)
            assert await rt.locks.try_acquire(stream.name)
            while await stream.cycle():  # a first cycle may stop at its window cap
                pass


def clear_of_midnight(now: float) -> float:
    """``now``, or 02:00 IST when ``now`` is earlier in the IST day: the day windows of these
    tests then hold the whole backlog (under an hour), whatever the real time. Started just
    after the account's midnight, the newest day window was nearly empty and the drift tests
    failed."""
    local = dt.datetime.fromtimestamp(now, ZoneInfo("Asia/Kolkata"))
    two = local.replace(hour=2, minute=0, second=0, microsecond=0)
    return max(now, two.timestamp())


@contextlib.asynccontextmanager
async def clocked(dsn: str, **config) -> AsyncIterator[Clocked]:
    """A backlog-only simulator (no live calls, no changes unless ``config`` says) on a fake
    clock, served for the block."""
    clock = FakeClock(clear_of_midnight(time.time()))
    sim = AcefoneSimulator(
        AcefoneSimConfig(**{"live_per_minute": 0, "change_fraction": 0.0, **config}), now=clock
    )
    server = await start_server(sim)
    try:
        yield Clocked(clock, sim, dsn, server.base_url)
    finally:
        await server.close()


async def test_late_and_changed_records_arrive_within_one_poll(dsn, store):
    """A record that appears late inside a synced window, or changes, is in calls after the
    next cycle; the watermark never moves back."""
    async with clocked(
        dsn, seed=5, backlog=400, backlog_days=0.02, late_fraction=0.2,
        late_delay_s=(60.0, 120.0), change_fraction=0.3, change_delay_s=(60.0, 120.0),
    ) as c:  # fmt: skip
        settings = c.settings(lookback="1h")
        await c.cycle(settings)
        first = await store.call_hashes("acefone", ACCOUNT)
        mark1 = (await store.load_state(f"{ACCOUNT}/list")).watermark
        assert differences(truth_hashes(c.sim), first) == IN_STEP
        c.clock.now += 200  # late records become visible and changes happen
        later = truth_hashes(c.sim)
        assert len(later) > len(first)
        assert any(first.get(k) not in (None, h) for k, h in later.items())
        await c.cycle(settings)
        second = await store.call_hashes("acefone", ACCOUNT)
        mark2 = (await store.load_state(f"{ACCOUNT}/list")).watermark
    assert differences(later, second) == IN_STEP
    assert mark2 >= mark1


DRIFTY = {"seed": 3, "backlog": 600, "backlog_days": 0.05, "late_fraction": 0.3,
          "late_delay_s": (30.0, 40.0)}  # fmt: skip


async def test_page_drift_is_detected_and_the_window_reread(dsn, store):
    """Rows that appear between page reads shift Acefone's newest-first pages; the window is
    read again and nothing is lost (without the check, a row would be missing)."""
    async with clocked(dsn, **DRIFTY) as c:
        settings = c.settings(lookback="0s", window="1d", max_page_depth=1000)
        with structlog.testing.capture_logs() as logs:
            await c.cycle(settings, wrap=drifting)
        stored = await store.call_hashes("acefone", ACCOUNT)
    assert any(e["event"] == "sync.window_drift" for e in logs)
    assert differences(truth_hashes(c.sim), stored) == IN_STEP


async def test_newest_window_drifting_closes_provisionally_and_is_caught_next_cycle(dsn, store):
    """On a busy account rows keep appearing in the newest window while it is read; inside the
    lookback it closes anyway (the watermark moves on) and the next cycle fetches what appeared."""
    async with clocked(dsn, **DRIFTY) as c:
        settings = c.settings(lookback="1h", window="1d", max_page_depth=1000)
        planned_end = c.clock.utc().replace(microsecond=0)
        with structlog.testing.capture_logs() as logs:
            await c.cycle(settings, wrap=drifting)
        first = (await store.load_state(f"{ACCOUNT}/list")).watermark
        await c.cycle(settings, wrap=drifting)
        stored = await store.call_hashes("acefone", ACCOUNT)
    assert any(e["event"] == "sync.window_provisional" for e in logs)
    assert not any(e["event"] == "sync.window_incomplete" for e in logs)
    assert first == planned_end
    assert differences(truth_hashes(c.sim), stored) == IN_STEP


async def test_deep_window_is_split(dsn, store):
    """A window holding more rows than max_page_depth pages reach is split, not paged deeply."""
    async with clocked(dsn, seed=9, backlog=900, backlog_days=0.1, late_fraction=0.0) as c:
        settings = c.settings(window="1d", max_page_depth=2, page_size=50)
        with structlog.testing.capture_logs() as logs:
            await c.cycle(settings)
        stored = await store.call_hashes("acefone", ACCOUNT)
    done = [e for e in logs if e["event"] == "sync.cycle_done"]
    assert done and done[0]["splits"] > 0
    assert differences(truth_hashes(c.sim), stored) == IN_STEP


@pytest.mark.parametrize("audit", [True, False])
async def test_window_audit_catches_calls_listed_after_the_lookback(dsn, store, audit):
    """A call that becomes visible when its window is beyond the lookback (a long call: Acefone
    selects by start time, lists after the end) is fetched by the window audit; with the audit
    off it would be missing."""
    async with clocked(
        dsn, seed=21, backlog=300, backlog_days=0.05, late_fraction=0.2,
        late_delay_s=(2000.0, 3000.0),
    ) as c:  # fmt: skip
        settings = c.settings(
            lookback="10m", window="30m", audit_interval="1m",
            audit_horizon="1d" if audit else "0s",
        )  # fmt: skip
        await c.cycle(settings)
        assert differences(truth_hashes(c.sim), await store.call_hashes("acefone", ACCOUNT)) == (
            IN_STEP
        )
        c.clock.now += 3600  # the late calls are listed now, in windows an hour old
        with structlog.testing.capture_logs() as logs:
            for _ in range(3):
                await c.cycle(settings)
                c.clock.now += 90
        diff = differences(truth_hashes(c.sim), await store.call_hashes("acefone", ACCOUNT))
    if audit:
        assert diff == IN_STEP
        assert any(e["event"] == "sync.window_recount" for e in logs)
    else:
        assert diff["missing"]


async def test_the_audit_asks_the_database_only_once_a_window_can_be_due(dsn, store, monkeypatch):
    """No due-window query runs until the oldest check is an audit interval old; then it does."""
    async with clocked(dsn, seed=21, backlog=100, backlog_days=0.05, late_fraction=0.0) as c:
        settings = c.settings(lookback="10m", window="1h", audit_interval="10m")
        async with owned_stream(c, settings) as stream:
            with structlog.testing.capture_logs() as logs:
                asked = await due_queries(c, stream, monkeypatch, steps=(0, 60, 60, 600))
    done = [e for e in logs if e["event"] == "sync.cycle_done"]
    assert len(done) == 4
    # The first cycle has no watermark to audit behind; the second finds nothing due (every
    # window was read a minute ago); the third, inside the interval, does not ask.
    assert asked == [60, 720]
    assert done[3]["audited"] > 0


async def test_a_window_straddling_the_audit_horizon_does_not_keep_the_audit_asking(
    dsn, store, monkeypatch
):
    """A window that began before the audit horizon can never come due again: once the windows
    that can are checked, the due-window query waits an interval, as without such a window."""
    async with clocked(dsn, seed=22, backlog=100, backlog_days=0.1, late_fraction=0.0) as c:
        settings = c.settings(
            lookback="10m", window="1h", audit_interval="10m", audit_horizon="90m"
        )
        # Start at a quarter past an hour of the account's zone (IST, 1 h windows), whatever
        # the real time: the horizon's start then falls inside a window, and a whole window
        # lies between it and the current one.
        at = c.clock.utc().astimezone(ZoneInfo("Asia/Kolkata"))
        c.clock.now += ((15 - at.minute) % 60) * 60 - at.second
        async with owned_stream(c, settings) as stream:
            asked = await due_queries(c, stream, monkeypatch, steps=(0, 60, 660, 60, 60, 60))
    # Asked on the second cycle (the first has nothing behind it), once the interval is over
    # (a window is due) and on the cycle after (a window found due may still be due); then not
    # again within the interval, though the straddling window's check is older than it.
    assert asked == [60, 720, 780]


async def test_a_stream_that_keeps_its_lock_reads_its_state_once(dsn, store, monkeypatch):
    """Holding its lock, a stream reads its state once, and again after taking the lock anew."""
    async with clocked(dsn, seed=3, backlog=50, backlog_days=0.05, late_fraction=0.0) as c:
        settings = c.settings(lookback="10m", window="1h")
        async with owned_stream(c, settings) as stream:
            loads = []
            load_state = stream._store.load_state

            async def counted(name):
                loads.append(name)
                return await load_state(name)

            monkeypatch.setattr(stream._store, "load_state", counted)
            for _ in range(3):
                await asyncio.wait_for(stream.cycle(), 30)
                c.clock.now += 60
            assert len(loads) == 1
            await stream._locks.release(stream.name)
            assert await stream._own()  # taken again
            await asyncio.wait_for(stream.cycle(), 30)
            assert len(loads) == 2
            stored = await load_state(stream.name)
    assert stored is not None and stored.cycles == 4


async def due_queries(c: Clocked, stream: WindowStream, monkeypatch, *, steps) -> list[int]:
    """Cycles of ``stream``, each ``steps[i]`` seconds of fake time after the last; the seconds
    since the first cycle at which the stream asked the database for due windows."""
    asked: list[int] = []
    windows_due = stream._store.windows_due
    start = c.clock.utc()

    async def counted(*args, **kwargs):
        asked.append(round((c.clock.utc() - start).total_seconds()))
        return await windows_due(*args, **kwargs)

    monkeypatch.setattr(stream._store, "windows_due", counted)
    for step in steps:
        c.clock.now += step
        await asyncio.wait_for(stream.cycle(), 30)
    return asked


@contextlib.asynccontextmanager
async def owned_stream(c: Clocked, settings, **options) -> AsyncIterator[WindowStream]:
    """The account's window stream at the fake time, owned by this process, for the block."""
    stop = asyncio.Event()
    async with runtime(settings, stop) as rt:
        assert rt is not None
        stream = app.build_stream(rt, settings.accounts[0], stop, clock=c.clock.utc, **options)
        assert await rt.locks.try_acquire(stream.name)
        yield stream


async def test_a_failed_write_stops_the_reader_and_the_cycle_fails(dsn, monkeypatch):
    """When the first batch cannot be stored, the cycle stops reading at once (the vendor's
    request budget is not spent on rows that cannot be stored) and fails; the watermark stays."""
    async with clocked(dsn, seed=7, backlog=600, backlog_days=1.0, late_fraction=0.0) as c:
        settings = c.settings(window="1h")
        async with owned_stream(c, settings) as stream:

            async def refuse(*args, **kwargs):
                raise StoreError("disk full")

            monkeypatch.setattr(stream._store, "write_batch", refuse)
            with structlog.testing.capture_logs() as logs, pytest.raises(StoreError):
                await asyncio.wait_for(stream.cycle(), 10)
            state = await stream._store.load_state(stream.name)
            assert state is not None
    [summary] = [e for e in logs if e["event"] == "sync.cycle_partial"]
    assert summary["windows"] >= 24, "the test needs a cycle that plans many windows"
    # The window whose write failed, and what was read ahead while it failed (3 here).
    assert c.sim.stats.list_requests <= 6, (c.sim.stats.list_requests, summary["windows"])
    assert state.watermark is None


async def test_a_bug_in_the_writer_ends_the_cycle_instead_of_hanging_it(dsn):
    """An exception that is no CdrsyncError in the writer (a progress hook raising) crashes the
    cycle promptly; the reader does not wait for ever on a queue no one empties."""

    def broken(progress):
        raise RuntimeError("hook bug")

    async with clocked(dsn, seed=7, backlog=600, backlog_days=1.0, late_fraction=0.0) as c:
        settings = c.settings(window="1h")
        async with owned_stream(c, settings, on_progress=broken) as stream:
            stream._write_rows = 10  # a queue far smaller than the backlog
            with pytest.raises(RuntimeError, match="hook bug"):
                await asyncio.wait_for(stream.cycle(), 10)


class Inflated:
    """The real source, its counts replaced by an absurd one (a vendor bug)."""

    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, name):
        return getattr(self._inner, name)

    async def fetch_page(self, window, page):
        got = await self._inner.fetch_page(window, page)
        return dataclasses.replace(got, total=10**12)


async def test_an_absurd_vendor_count_costs_a_bounded_number_of_requests(dsn, store):
    """A count of a trillion calls in a one-second window (which cannot be split further) is
    read to max_page_depth pages and no further, and the window is not closed on it; the
    count's size does not break the bookkeeping either."""
    async with clocked(dsn, seed=5, backlog=50, backlog_days=1.0, late_fraction=0.0) as c:
        settings = c.settings(window="1s", max_page_depth=3)
        async with owned_stream(c, settings) as stream:
            stream._source = Inflated(stream._source)
            with structlog.testing.capture_logs() as logs:
                await asyncio.wait_for(stream.cycle(), 30)
            state = await stream._store.load_state(stream.name)
            assert state is not None
    planned = 48  # windows a cycle reads at most
    assert c.sim.stats.list_requests <= planned * 3 * 4  # pages x (1 read + 3 re-reads)
    assert any(e["event"] == "sync.count_implausible" for e in logs)
    assert state.watermark is None


class KillsTheLockSession:
    """The real source; after its first page, the stream's lock session is ended on the
    server (as an admin or a failover would), and the lock is lost."""

    def __init__(self, inner, locks, dsn):
        self._inner, self._locks, self._dsn = inner, locks, dsn
        self.pages = 0

    def __getattr__(self, name):
        return getattr(self._inner, name)

    async def fetch_page(self, window, page):
        got = await self._inner.fetch_page(window, page)
        self.pages += 1
        if self.pages == 1:
            pid = self._locks._conn.get_server_pid()
            await sql_value(self._dsn, "SELECT pg_terminate_backend($1)", pid)
        return got


async def test_a_cycle_stops_reading_once_its_lock_session_is_gone(dsn, store):
    """A long catch-up cycle whose lock session ends on the server stops after the window in
    hand (another instance may own the stream now) instead of reading every planned window."""
    async with clocked(dsn, seed=9, backlog=300, backlog_days=1.0, late_fraction=0.0) as c:
        settings = c.settings(window="1h")
        async with owned_stream(c, settings) as stream:
            stream._source = KillsTheLockSession(stream._source, stream._locks, dsn)
            with structlog.testing.capture_logs() as logs:
                await asyncio.wait_for(stream.cycle(), 30)
            state = await stream._store.load_state(stream.name)
            assert state is not None
    assert any(e["event"] == "stream.lock_lost" for e in logs)
    assert stream._source.pages <= 2, stream._source.pages  # not the 24+ windows planned
    assert state.watermark is not None  # the window read before still committed


READINGS = [("total", None), ("page", None), ("total", 20), ("page", 20)]


@pytest.mark.parametrize(("count_mode", "limit_cap"), READINGS)
async def test_every_reading_of_count_and_limit_ends_equal_to_the_truth(
    dsn, store, count_mode, limit_cap
):
    """Whether count is the window's total or the page's rows, and whether limit is silently
    capped, calls ends equal to the simulator: nothing missing, nothing twice."""
    async with clocked(
        dsn, seed=13, backlog=3000, backlog_days=1.0, late_fraction=0.0,
        count_mode=count_mode, limit_cap=limit_cap,
    ) as c:  # fmt: skip
        settings = c.settings(window="1h")
        with structlog.testing.capture_logs() as logs:
            await c.cycle(settings)
        stored = await store.call_hashes("acefone", ACCOUNT)
    events = [e["event"] for e in logs]
    assert differences(truth_hashes(c.sim), stored) == IN_STEP
    assert len(stored) > 3000 * 0.9
    dupes = await sql_value(
        dsn, "SELECT count(*) - count(DISTINCT (vendor, account, call_key)) FROM calls"
    )
    assert dupes == 0
    assert ("acefone.count_per_page" in events) == (count_mode == "page")
    assert events.count("acefone.count_per_page") <= 1
    assert ("acefone.limit_capped" in events) == (limit_cap is not None)
    assert "sync.window_incomplete" not in events


@pytest.mark.parametrize("count_mode", ["total", "page"])
async def test_window_audit_works_under_both_readings_of_count(dsn, store, count_mode):
    """A call listed after the lookback is still fetched by the window audit when count is the
    rows of one page (the audit then counts a window's rows by reading them)."""
    async with clocked(
        dsn, seed=21, backlog=300, backlog_days=0.05, late_fraction=0.2,
        late_delay_s=(2000.0, 3000.0), count_mode=count_mode,
    ) as c:  # fmt: skip
        settings = c.settings(lookback="10m", window="30m", audit_interval="1m")
        await c.cycle(settings)
        c.clock.now += 3600  # the late calls are listed now, in windows an hour old
        assert differences(truth_hashes(c.sim), await store.call_hashes("acefone", ACCOUNT))[
            "missing"
        ]
        for _ in range(3):
            await c.cycle(settings)
            c.clock.now += 90
        diff = differences(truth_hashes(c.sim), await store.call_hashes("acefone", ACCOUNT))
    assert diff == IN_STEP


@pytest.mark.parametrize("count_mode", ["total", "page"])
async def test_window_audit_covers_windows_that_were_split(dsn, store, count_mode):
    """A window too deep to page (split into parts) is recorded for the audit under both
    readings of count, so a call listed after the lookback in it is still fetched."""
    async with clocked(
        dsn, seed=21, backlog=300, backlog_days=0.05, late_fraction=0.2,
        late_delay_s=(2000.0, 3000.0), count_mode=count_mode,
    ) as c:  # fmt: skip
        settings = c.settings(
            lookback="10m", window="30m", audit_interval="1m", max_page_depth=2, page_size=20
        )
        with structlog.testing.capture_logs() as logs:
            await c.cycle(settings)
        assert sum(e.get("splits", 0) for e in logs if e["event"] == "sync.cycle_done") > 0
        c.clock.now += 3600  # the late calls are listed now, in windows an hour old
        assert differences(truth_hashes(c.sim), await store.call_hashes("acefone", ACCOUNT))[
            "missing"
        ]
        for _ in range(3):
            await c.cycle(settings)
            c.clock.now += 90
        diff = differences(truth_hashes(c.sim), await store.call_hashes("acefone", ACCOUNT))
    assert diff == IN_STEP


# ---------------------------------------------------------------------------- stored skips


def cycle_done(logs: list[MutableMapping[str, Any]]) -> dict[str, int]:
    """The totals of the cycles logged in ``logs`` (``sync.cycle_done`` events)."""
    done = [e for e in logs if e["event"] == "sync.cycle_done"]
    assert done
    keys = ("inserted", "updated", "unchanged", "skipped", "rejected")
    return {k: sum(int(e[k]) for e in done) for k in keys}


async def test_an_unchanged_reread_normalizes_and_writes_nothing(dsn, store):
    """A re-read of an unchanged range skips every record before normalizing it (the cycle's
    ``skipped``): every record is still counted as received and unchanged, none is written."""
    async with clocked(dsn, seed=21, backlog=300, backlog_days=0.05, late_fraction=0.0) as c:
        settings = c.settings(lookback="1d")
        with structlog.testing.capture_logs() as logs:
            await c.cycle(settings)
        first = cycle_done(logs)
        before = await sql_value(dsn, "SELECT max(updated_at) FROM calls")
        with structlog.testing.capture_logs() as logs:
            await c.cycle(settings)
        after = await sql_value(dsn, "SELECT max(updated_at) FROM calls")
        stored = await store.call_hashes("acefone", ACCOUNT)
    # Received: every call once, plus those on a window's end second, which both windows list.
    received = first["inserted"] + first["unchanged"]
    assert first["inserted"] == len(truth_hashes(c.sim)) > 0
    assert cycle_done(logs) == {
        "inserted": 0, "updated": 0, "unchanged": received, "skipped": received, "rejected": 0
    }  # fmt: skip
    assert after == before
    assert differences(truth_hashes(c.sim), stored) == IN_STEP


async def test_a_changed_record_among_unchanged_ones_is_written(dsn, store):
    """Records changed since the last read are normalized and written; the rest are skipped."""
    async with clocked(
        dsn, seed=22, backlog=300, backlog_days=0.05, late_fraction=0.0,
        change_fraction=0.2, change_delay_s=(60.0, 120.0),
    ) as c:  # fmt: skip
        settings = c.settings(lookback="1d")
        await c.cycle(settings)
        first = truth_hashes(c.sim)
        c.clock.now += 200
        later = truth_hashes(c.sim)
        changed = sum(1 for k, h in later.items() if first.get(k, h) != h)
        assert changed > 0
        with structlog.testing.capture_logs() as logs:
            await c.cycle(settings)
        stored = await store.call_hashes("acefone", ACCOUNT)
    totals = cycle_done(logs)
    assert (totals["inserted"], totals["updated"]) == (len(later.keys() - first.keys()), changed)
    assert totals["skipped"] >= len(first) - changed > 0
    assert differences(truth_hashes(c.sim), stored) == IN_STEP


async def test_a_call_stored_from_a_push_is_still_merged_by_the_list(dsn, store, make_call):
    """A stored copy from a push is never skipped by a re-read, even when its hash equals the
    list record's: the list copy is merged in and becomes the row's source."""
    async with clocked(dsn, seed=23, backlog=50, backlog_days=0.02, late_fraction=0.0) as c:
        key, text = next(iter(c.sim.iter_truth_json()))
        pushed = make_call(key, account=ACCOUNT, started_at=c.clock.utc() - dt.timedelta(hours=1))
        pushed = pushed._replace(source="push", content_hash=record_hash(text.encode()))
        push_stream = f"{ACCOUNT}/push"
        await store.ensure_stream(push_stream, vendor="acefone", account=ACCOUNT, kind="push")
        await store.write_batch(push_stream, [pushed], now=c.clock.utc())
        await c.cycle(c.settings(lookback="1d"))
        source = await sql_value(dsn, "SELECT source FROM calls WHERE call_key = $1", key)
        stored = await store.call_hashes("acefone", ACCOUNT)
    assert source == "list"
    assert differences(truth_hashes(c.sim), stored) == IN_STEP


async def test_a_cycle_reads_the_stored_hashes_once_for_all_its_windows(dsn, store):
    """A re-read cycle over several windows asks the database for the stored hashes once, and
    still skips every record and writes nothing (issue 10: a round trip per window saved)."""
    async with clocked(dsn, seed=24, backlog=200, backlog_days=0.08, late_fraction=0.0) as c:
        settings = c.settings(lookback="3h", window="1h")
        async with owned_stream(c, settings) as stream:
            while await asyncio.wait_for(stream.cycle(), 30):  # the first read may take cycles
                pass
            counted = stream._store._pool = HashQueries(stream._store._pool)
            with structlog.testing.capture_logs() as logs:
                await asyncio.wait_for(stream.cycle(), 30)
            stored = await store.call_hashes("acefone", ACCOUNT)
            kept = stream._stored._hashes  # what the stream holds until its next cycle
    [done] = [e for e in logs if e["event"] == "sync.cycle_done"]
    assert done["windows"] >= 2
    assert counted.asked == 1
    assert not kept  # the cycle's set is not held between cycles
    assert (done["inserted"], done["updated"], done["rejected"]) == (0, 0, 0)
    assert done["skipped"] == done["unchanged"] > 0
    assert differences(truth_hashes(c.sim), stored) == IN_STEP
