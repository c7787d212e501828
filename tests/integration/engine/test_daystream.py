"""The day stream on a real PostgreSQL, over a stand-in VCC Live day list that injects faults.

``FakeDays`` is a DaySource over in-memory rows per local day, in list order: tests insert rows
before the cursor, reorder them, append them mid-read, fail or hang a request. End-to-end tests
against the VCC Live simulator over HTTP live elsewhere.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import zoneinfo
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import asyncpg
import orjson
import pytest
import structlog

from cdrsync.config import AccountSettings
from cdrsync.engine.day import DayStream
from cdrsync.errors import AuthError, StoreError, TransientError
from cdrsync.model import CallRecord, Page, Reject
from cdrsync.store.store import Store
from support import one_account

BUD = zoneinfo.ZoneInfo("Europe/Budapest")
ACCOUNT = "hu"
STREAM = "hu/list"
Hook = Callable[[dt.date, int], Awaitable[None]]


def nov(day: int) -> dt.date:
    return dt.date(2026, 11, day)


def midnight(day: dt.date) -> dt.datetime:
    """The UTC instant of ``day``'s Budapest midnight (what the watermark holds)."""
    return dt.datetime.combine(day, dt.time(), BUD).astimezone(dt.UTC)


NOW = dt.datetime(2026, 11, 23, 10, tzinfo=BUD).astimezone(dt.UTC)
START = dt.date(2026, 11, 18)


def account(start: dt.date = START, **fields: Any) -> AccountSettings:
    """A VCC Live account (Budapest, lookback 1d: today and yesterday open), settle 0s."""
    acc = {
        "name": ACCOUNT, "vendor": "vcclive", "base_url": "https://mycc.asp.virtual-call-center.eu",
        "username": "mycc", "api_key": "test-token", "start": start.isoformat(),
        "settle": "0s", "poll_interval": "1h", **fields,
    }  # fmt: skip
    return one_account(acc)


def call(row: dict[str, Any], day: dt.date) -> CallRecord:
    """A VCC-shaped row as a normalized call (content hash follows the row)."""
    raw = orjson.dumps(row, option=orjson.OPT_SORT_KEYS).decode()
    started = dt.datetime.combine(day, dt.time(10), BUD).astimezone(dt.UTC)
    return CallRecord(
        vendor="vcclive", account=ACCOUNT, call_key=row["uuid"], call_id=None,
        call_uuid=row["uuid"], direction="inbound", status=row["status"], started_at=started,
        answered_at=None, ended_at=None, duration_s=None, talk_s=None, ring_s=None,
        agent_name=None, agent_number=None, customer_number=None, line_number=None,
        department=None, hangup_cause=None, recording_url=None, service=None, description=None,
        local_date=day, raw=raw, content_hash=hashlib.sha256(raw.encode()).digest(),
        fetched_at=dt.datetime.now(dt.UTC),
    )  # fmt: skip


class FakeDays:
    """A DaySource over in-memory day lists: ``hook`` runs before each request is answered;
    ``phantom`` adds rows to a day's totalCount that the list never returns."""

    vendor = "vcclive"

    def __init__(self, page_size: int = 3) -> None:
        self.page_size = page_size
        self.rows: dict[dt.date, list[dict[str, Any]]] = {}
        self.requests: list[tuple[dt.date, int]] = []
        self.phantom: dict[dt.date, int] = {}
        self.hook: Hook | None = None
        self._made: dict[dt.date, int] = {}

    def add(self, day: dt.date, count: int, *, at: int | None = None) -> list[str]:
        """``count`` new rows of ``day``, appended (or inserted at position ``at``)."""
        rows = self.rows.setdefault(day, [])
        first = self._made.get(day, 0)
        self._made[day] = first + count
        made = [{"uuid": f"{day:%m%d}-{first + i:03d}", "status": "answered"} for i in range(count)]
        position = len(rows) if at is None else at
        rows[position:position] = made
        return [r["uuid"] for r in made]

    def uuids(self) -> set[str]:
        return {r["uuid"] for rows in self.rows.values() for r in rows if "uuid" in r}

    def asked(self, day: dt.date) -> list[int]:
        """The offsets requested for ``day``, in order."""
        return [offset for d, offset in self.requests if d == day]

    async def fetch_day(self, day: dt.date, offset: int, num: int) -> Page:
        """Rows ``offset``.. of ``day`` (at most ``num``) with the day's count."""
        self.requests.append((day, offset))
        if self.hook is not None:
            await self.hook(day, offset)
        rows = self.rows.get(day, [])
        chunk = rows[offset : offset + num]
        keyed = [r for r in chunk if "uuid" in r]
        seen = dt.datetime.now(dt.UTC)
        rejects = tuple(
            Reject("vcclive", ACCOUNT, STREAM, None, "no uuid", orjson.dumps(r).decode(), seen)
            for r in chunk
            if "uuid" not in r
        )
        return Page(
            total=len(rows) + self.phantom.get(day, 0),
            size=len(chunk),
            records=tuple(call(r, day) for r in keyed),
            rejects=rejects,
            keys=tuple(r["uuid"] for r in keyed),
        )


class Clock:
    """A UTC clock that moves only when told."""

    def __init__(self, now: dt.datetime = NOW) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


def day_stream(
    store: Store, source: FakeDays, clock: Clock | None = None, **options: Any
) -> DayStream:
    """A DayStream on ``source``; ``account_fields`` change the account, the rest the stream."""
    fields = options.pop("account_fields", {})
    return DayStream(
        name=STREAM,
        account=account(options.pop("start", START), **fields),
        source=source,
        store=store,
        locks=options.pop("locks", None) or store.lock_session(),
        stop=options.pop("stop", None) or asyncio.Event(),
        clock=clock or Clock(),
        **options,
    )


async def sync(stream: DayStream) -> int:
    """Cycle until nothing more waits; the number of cycles."""
    cycles = 1
    while await stream.cycle():
        cycles += 1
        assert cycles < 50
    return cycles


async def stored(dsn: str) -> dict[str, str]:
    """call_key -> status of every stored call, read on a separate connection."""
    conn = await asyncpg.connect(dsn, server_settings={"search_path": "cdrsync"})
    try:
        rows = await conn.fetch("SELECT call_key, status FROM calls")
        rejects = await conn.fetchval("SELECT count(*) FROM rejects")
    finally:
        await conn.close()
    return {r["call_key"]: r["status"] for r in rows} | {"<rejects>": str(rejects)}


async def keys(dsn: str) -> set[str]:
    return set(await stored(dsn)) - {"<rejects>"}


def events(logs: list[MutableMapping[str, Any]], name: str) -> list[MutableMapping[str, Any]]:
    return [e for e in logs if e["event"] == name]


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 30.0) -> None:
    """Wait until ``check()`` holds (polling), failing after ``within`` seconds."""
    async with asyncio.timeout(within):
        while not await check():
            await asyncio.sleep(0.02)


def backlog() -> FakeDays:
    """18th-23rd of November: 0, 1, 7, 10, 5 and 4 calls."""
    source = FakeDays()
    for day, count in zip(range(18, 24), (0, 1, 7, 10, 5, 4), strict=True):
        source.rows[nov(day)] = []
        source.add(nov(day), count)
    return source


# ---------------------------------------------------------------------------- tests


async def test_backlog_syncs_every_call_once_and_closes_days_in_order(store, dsn):
    """A backlog of days ends with every call stored once; days close oldest first, each read
    whole from offset 0, and the watermark stops before yesterday (the lookback)."""
    source = backlog()
    seen: list[tuple[bool, float | None]] = []
    stream = day_stream(
        store, source, max_days_per_cycle=2, on_cycle=lambda _s, ok, lag, _w: seen.append((ok, lag))
    )
    watermarks = []
    with structlog.testing.capture_logs() as logs:
        assert await stream.cycle() is True  # two closing days per cycle: more waits
        watermarks.append((await store.load_state(STREAM)).watermark)
        assert await stream.cycle() is False
        watermarks.append((await store.load_state(STREAM)).watermark)

    assert watermarks == [midnight(nov(20)), midnight(nov(22))]
    assert [e["day"] for e in events(logs, "day.closed")] == [
        "2026-11-18", "2026-11-19", "2026-11-20", "2026-11-21",
    ]  # fmt: skip
    assert all(source.asked(nov(d))[0] == 0 for d in range(18, 22))
    assert await keys(dsn) == source.uuids()
    assert await store.call_count() == 27
    state = await store.load_state(STREAM)
    assert state.rows_inserted == 27
    assert state.cursor == {
        "2026-11-22": {"offset": 5, "anchor": ["1122-002", "1122-003", "1122-004"], "total": 5},
        "2026-11-23": {"offset": 4, "anchor": ["1123-001", "1123-002", "1123-003"], "total": 4},
    }
    assert [ok for ok, _ in seen] == [True, True]
    assert seen[-1][1] == (NOW - midnight(nov(22))).total_seconds()
    [summary] = events(logs, "day.cycle_done")[-1:]
    assert (summary["days"], summary["closed"], summary["reorders"]) == (4, 2, 0)


async def test_new_calls_today_are_read_incrementally(store, dsn):
    """Once in step, a cycle with nothing new costs one request per open day; new calls in today
    are fetched from the cursor, never by reading the day again from offset 0."""
    source = backlog()
    stream = day_stream(store, source)
    await sync(stream)
    source.requests.clear()

    await stream.cycle()
    assert source.requests == [(nov(22), 2), (nov(23), 1)]

    source.requests.clear()
    fresh = source.add(nov(23), 2)
    before = (await store.load_state(STREAM)).rows_inserted
    await stream.cycle()

    assert source.requests == [(nov(22), 2), (nov(23), 1), (nov(23), 4)]
    assert set(fresh) <= await keys(dsn)
    assert (await store.load_state(STREAM)).rows_inserted == before + 2
    assert (await store.load_state(STREAM)).cursor["2026-11-23"]["offset"] == 6


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda s: s.add(nov(23), 1, at=0), id="late-row-sorted-first"),
        pytest.param(lambda s: s.rows[nov(23)].reverse(), id="order-reversed"),
        pytest.param(lambda s: s.rows[nov(23)].pop(0), id="row-removed-before-cursor"),
    ],
)
async def test_reorder_before_the_cursor_rereads_the_day(store, dsn, change):
    """When the rows before the cursor no longer match its anchor, the day is read again from
    offset 0 (logged as day.reorder): nothing is lost, and the next cycle is incremental again."""
    source = backlog()
    stream = day_stream(store, source)
    await sync(stream)
    change(source)
    source.add(nov(23), 2)
    source.requests.clear()

    with structlog.testing.capture_logs() as logs:
        await stream.cycle()

    [reorder] = events(logs, "day.reorder")
    assert reorder["day"] == "2026-11-23"
    assert source.asked(nov(23))[:2] == [1, 0]
    assert source.uuids() <= await keys(dsn)
    total = len(source.rows[nov(23)])
    assert (await store.load_state(STREAM)).cursor["2026-11-23"]["offset"] == total
    source.requests.clear()
    await stream.cycle()
    assert source.asked(nov(23)) == [total - 3]


async def test_a_failed_page_resumes_from_the_cursor(store, dsn):
    """A request failing mid-day leaves the pages before it committed with their cursor; the
    next cycle continues from there: no gap, no duplicate, no re-read from offset 0."""
    source = FakeDays()
    source.add(nov(22), 2)
    source.add(nov(23), 10)
    failed: list[object] = []

    async def fail_once(day: dt.date, offset: int) -> None:
        if (day, offset) == (nov(23), 6) and not failed:
            failed.append(offset)
            raise TransientError("vendor down")

    source.hook = fail_once
    stream = day_stream(store, source, start=nov(22))
    with pytest.raises(TransientError):
        await stream.cycle()

    state = await store.load_state(STREAM)
    assert state.cursor["2026-11-23"]["offset"] == 6
    assert await keys(dsn) == source.uuids() - {f"1123-{i:03d}" for i in range(6, 10)}
    source.requests.clear()

    await stream.cycle()

    assert source.asked(nov(23)) == [3, 6, 9]
    assert await keys(dsn) == source.uuids()
    assert (await store.load_state(STREAM)).rows_inserted == 12


async def test_a_crash_inside_a_closing_day_resumes_it_without_gap_or_duplicate(store, dsn):
    """A process killed inside a closing read (task cancelled while a request hangs) resumes
    from the committed cursor in a new stream; the day then closes with every call once."""
    source = FakeDays()
    source.add(nov(20), 10)
    source.add(nov(21), 2)
    reached = asyncio.Event()

    async def hang(day: dt.date, offset: int) -> None:
        if (day, offset) == (nov(20), 6):
            reached.set()
            await asyncio.Event().wait()

    source.hook = hang
    first = day_stream(store, source, start=nov(20))
    task = asyncio.create_task(first.cycle())
    await asyncio.wait_for(reached.wait(), 5)

    async def committed() -> bool:
        state = await store.load_state(STREAM)
        return bool(state and state.cursor and state.cursor["2026-11-20"]["offset"] == 6)

    await eventually(committed)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (await store.load_state(STREAM)).watermark is None
    source.hook = None
    source.requests.clear()

    await day_stream(store, source, start=nov(20)).cycle()

    assert source.asked(nov(20)) == [3, 6, 9]  # resumed inside the closing read
    state = await store.load_state(STREAM)
    assert state.watermark == midnight(nov(22))
    assert "2026-11-20" not in state.cursor
    assert await keys(dsn) == source.uuids()
    assert state.rows_inserted == 12


async def test_stop_commits_what_was_read_and_makes_no_new_request(store, dsn):
    """SIGTERM while a request is in flight: run() returns promptly, the pages already read are
    committed with their cursor, and no further request is sent."""
    source = FakeDays()
    source.add(nov(22), 1)
    source.add(nov(23), 10)
    stop = asyncio.Event()

    async def stop_here(day: dt.date, offset: int) -> None:
        if (day, offset) == (nov(23), 6):
            stop.set()
            await asyncio.Event().wait()

    source.hook = stop_here
    locks = store.lock_session()
    try:
        stream = day_stream(store, source, start=nov(22), stop=stop, locks=locks)
        await asyncio.wait_for(stream.run(), 5)
    finally:
        await locks.close()

    assert source.requests[-1] == (nov(23), 6)
    state = await store.load_state(STREAM)
    assert state.cursor["2026-11-23"]["offset"] == 6
    assert len(await keys(dsn)) == 7


async def test_the_watermark_never_passes_an_incomplete_day(store, dsn):
    """A closing day whose count never matches the calls listed stays open (day.incomplete):
    the watermark stops before it and no later day closes, while open days are still read."""
    source = backlog()
    source.phantom[nov(20)] = 1
    stream = day_stream(store, source, start=nov(19), max_rereads=1)
    with structlog.testing.capture_logs() as logs:
        assert await stream.cycle() is False

    assert [e["day"] for e in events(logs, "day.incomplete")] == ["2026-11-20"]
    assert len(events(logs, "day.drift")) == 2
    state = await store.load_state(STREAM)
    assert state.watermark == midnight(nov(20))
    assert source.asked(nov(21)) == []
    assert await keys(dsn) == source.uuids() - {f"1121-{i:03d}" for i in range(10)}

    del source.phantom[nov(20)]
    await stream.cycle()
    assert (await store.load_state(STREAM)).watermark == midnight(nov(22))
    assert await keys(dsn) == source.uuids()


async def test_a_closing_read_rereads_the_whole_day_and_catches_a_changed_early_row(store, dsn):
    """A change to a row before the cursor is invisible to incremental reads, but the day's
    closing read goes over it from offset 0 and stores the change before the day is final."""
    source = FakeDays()
    source.add(nov(22), 5)
    source.add(nov(23), 4)
    clock = Clock()
    stream = day_stream(store, source, clock, start=nov(22))
    await stream.cycle()
    source.rows[nov(22)][0]["status"] = "missed"

    await stream.cycle()
    assert (await stored(dsn))["1122-000"] == "answered"  # still open: read from the cursor

    clock.now += dt.timedelta(days=1)
    source.requests.clear()
    await stream.cycle()

    assert source.asked(nov(22)) == [0, 3]
    assert (await stored(dsn))["1122-000"] == "missed"
    state = await store.load_state(STREAM)
    assert state.watermark == midnight(nov(23))
    assert sorted(state.cursor) == ["2026-11-23", "2026-11-24"]


async def test_calls_appended_during_a_closing_read_are_read_on(store, dsn):
    """The day's count grows while it is read: the read goes on to the new end and the day
    closes in one pass."""
    source = FakeDays()
    source.add(nov(21), 7)

    async def grow(day: dt.date, offset: int) -> None:
        if (day, offset) == (nov(21), 3) and len(source.rows[nov(21)]) == 7:
            source.add(nov(21), 3)

    source.hook = grow
    with structlog.testing.capture_logs() as logs:
        await day_stream(store, source, start=nov(21)).cycle()

    assert events(logs, "day.drift") == []
    assert source.asked(nov(21)) == [0, 3, 6, 9]
    assert await keys(dsn) == source.uuids()
    assert (await store.load_state(STREAM)).watermark == midnight(nov(22))


async def test_a_call_inserted_before_the_read_position_forces_a_reread(store, dsn):
    """A row inserted at the front while a closing day is read shifts the pages (one row is
    skipped): the count exposes it, the day is read again, and it closes complete."""
    source = FakeDays()
    source.add(nov(21), 7)

    async def insert(day: dt.date, offset: int) -> None:
        if (day, offset) == (nov(21), 3) and len(source.rows[nov(21)]) == 7:
            source.add(nov(21), 1, at=0)

    source.hook = insert
    with structlog.testing.capture_logs() as logs:
        await day_stream(store, source, start=nov(21)).cycle()

    assert len(events(logs, "day.drift")) == 1
    assert await keys(dsn) == source.uuids()
    assert (await store.load_state(STREAM)).watermark == midnight(nov(22))


async def test_a_row_without_uuid_is_rejected_and_the_day_still_closes(store, dsn):
    """A malformed row goes to rejects; it still counts toward the day's total, so the day
    closes."""
    source = FakeDays()
    source.add(nov(21), 4)
    source.rows[nov(21)].insert(2, {"status": "answered"})
    await day_stream(store, source, start=nov(21)).cycle()

    found = await stored(dsn)
    assert found.pop("<rejects>") == "1"
    assert set(found) == source.uuids()
    assert (await store.load_state(STREAM)).watermark == midnight(nov(22))


@pytest.mark.parametrize("twice", [1, 4], ids=["on-the-first-page", "on-a-later-page"])
async def test_a_uuid_listed_twice_in_one_page_still_closes_the_day(store, dsn, twice):
    """VCC Live listing one uuid twice in one answer (totalCount counts both): the day closes,
    with the call stored once, instead of falling one short of its count on every read."""
    source = FakeDays()
    source.add(nov(21), 7)
    rows = source.rows[nov(21)]
    rows.insert(twice + 1, dict(rows[twice]))
    with structlog.testing.capture_logs() as logs:
        await day_stream(store, source, start=nov(21)).cycle()

    assert events(logs, "day.drift") == []
    assert source.asked(nov(21)) == [0, 3, 6]
    assert (await store.load_state(STREAM)).watermark == midnight(nov(22))
    assert await keys(dsn) == source.uuids()
    assert await store.call_count() == 7


async def test_a_uuid_twice_across_the_resume_point_of_a_closing_read_counts(store, dsn):
    """A closing read resumed from its cursor (a crash) whose first page repeats an anchor row
    (VCC Live listing it twice in one answer) still closes the day."""
    source = FakeDays()
    source.add(nov(20), 7)
    rows = source.rows[nov(20)]
    rows.insert(3, dict(rows[2]))  # pages [000 001 002] [002 003 004] ...: one answer repeats
    reached = asyncio.Event()

    async def hang(day: dt.date, offset: int) -> None:
        if (day, offset) == (nov(20), 3):
            reached.set()
            await asyncio.Event().wait()

    source.hook = hang
    first = asyncio.create_task(day_stream(store, source, start=nov(20)).cycle())
    await asyncio.wait_for(reached.wait(), 5)

    async def committed() -> bool:
        state = await store.load_state(STREAM)
        return bool(state and state.cursor and state.cursor["2026-11-20"]["offset"] == 3)

    await eventually(committed)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    source.hook = None
    source.requests.clear()

    await day_stream(store, source, start=nov(20), verify_rows=1).cycle()

    assert source.asked(nov(20)) == [2, 5]  # resumed one row early, to check the anchor
    assert (await store.load_state(STREAM)).watermark == midnight(nov(22))
    assert await keys(dsn) == source.uuids()


async def test_a_failed_write_stops_reading_and_fails_the_cycle(store, monkeypatch):
    """When the first batch cannot be stored, no more days are requested (each would be
    fetched for nothing) and the cycle fails; the watermark does not move."""
    source = FakeDays()
    for day in range(1, 24):
        source.add(nov(day), 4)

    async def request_takes_time(day: dt.date, offset: int) -> None:
        await asyncio.sleep(0)

    async def refuse(*args: Any, **kwargs: Any) -> None:
        raise StoreError("disk full")

    source.hook = request_takes_time
    monkeypatch.setattr(store, "write_batch", refuse)
    with pytest.raises(StoreError):
        await asyncio.wait_for(day_stream(store, source, start=nov(1)).cycle(), 5)

    # Of 46 planned requests: the first page, and what was read ahead while the write failed.
    assert len(source.requests) <= 10, source.requests
    assert (await store.load_state(STREAM)).watermark is None


async def test_a_bug_in_the_writer_ends_the_cycle_instead_of_hanging_it(store, monkeypatch):
    """An exception that is no CdrsyncError in the writer crashes the cycle promptly; the reader
    does not wait for ever on a full queue that no one empties."""
    source = FakeDays()
    for day in range(1, 24):
        source.add(nov(day), 4)

    async def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(store, "write_batch", broken)
    stream = day_stream(store, source, start=nov(1), write_rows=2)
    with pytest.raises(RuntimeError, match="a bug"):
        await asyncio.wait_for(stream.cycle(), 5)


async def test_one_owner_runs_the_stream_and_a_wake_starts_a_cycle_at_once(store, dsn):
    """Two instances of a stream: only the lock holder requests. With an hour's poll interval,
    wake() (a push arrived) makes the owner fetch a new call at once."""
    source, other = FakeDays(), FakeDays()
    source.add(nov(23), 2)
    other.rows = source.rows
    stop = asyncio.Event()
    locks_a, locks_b = store.lock_session(), store.lock_session()
    owner = day_stream(store, source, start=nov(23), stop=stop, locks=locks_a)
    try:
        running = asyncio.create_task(owner.run())
        await eventually(lambda: keys_are(dsn, source.uuids()))
        second = day_stream(store, other, start=nov(23), stop=stop, locks=locks_b)
        with structlog.testing.capture_logs() as logs:
            standby = asyncio.create_task(second.run())
            await eventually(lambda: has_event(logs, "stream.owned_elsewhere"))
        new = source.add(nov(23), 1)
        owner.wake()
        # "At once" against the hour's poll interval; a loaded machine may take seconds.
        await eventually(lambda: keys_are(dsn, source.uuids()), within=30)
        stop.set()
        await asyncio.wait_for(asyncio.gather(running, standby), 5)
    finally:
        await locks_a.close()
        await locks_b.close()
    assert other.requests == []
    assert new[0] in await keys(dsn)


async def keys_are(dsn: str, expected: set[str]) -> bool:
    return await keys(dsn) == expected


async def has_event(logs: list[MutableMapping[str, Any]], name: str) -> bool:
    return bool(events(logs, name))


async def test_a_permanent_error_is_recorded_and_backs_off_even_when_woken(store):
    """A refused credential is recorded on the stream; the loop backs off (a wake does not cut
    the wait short) and still stops at once on SIGTERM."""
    source = FakeDays()

    async def refuse(day: dt.date, offset: int) -> None:
        raise AuthError("VCC Live refused the API token")

    source.hook = refuse
    stop = asyncio.Event()
    locks = store.lock_session()
    try:
        stream = day_stream(store, source, start=nov(23), stop=stop, locks=locks)
        running = asyncio.create_task(stream.run())

        async def recorded() -> bool:
            state = await store.load_state(STREAM)
            return bool(state and state.last_error)

        await eventually(recorded)
        stream.wake()
        await asyncio.sleep(0.2)
        stop.set()
        await asyncio.wait_for(running, 5)
    finally:
        await locks.close()
    assert "refused the API token" in (await store.load_state(STREAM)).last_error
    assert len(source.requests) == 1
