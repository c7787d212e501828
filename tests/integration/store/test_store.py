"""The store on a real PostgreSQL: batch upsert rules, watermark, rejects, locks, restarts.

Every test writing a batch runs on both write paths: COPY, and a small batch's one statement."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest

from cdrsync.errors import ConfigError, StoreError
from cdrsync.model import CallRecord, Reject, Window
from cdrsync.store import store as store_module
from cdrsync.store import upsert as upsert_module
from cdrsync.store.embedded import EmbeddedPostgres
from cdrsync.store.lock import StreamLocks
from cdrsync.store.queries import CALL_TYPES, one_statement_sql
from cdrsync.store.store import Store, collapse, quote_ident
from netfault import freezable_proxy
from support import sql_value

UTC = dt.UTC
T0 = dt.datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
STREAM = "acefone:main:records"


async def rows(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    """Rows of ``sql`` read on a separate connection (what another client would see)."""
    conn = await asyncpg.connect(dsn, server_settings={"search_path": "cdrsync"})
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


PATHS = {"copy": 0, "one statement": 10**6}
"""Store.small_batch_rows per write path: 0 sends every batch through COPY."""


@pytest.fixture(params=sorted(PATHS))
def store(store: Store, request: pytest.FixtureRequest) -> Store:
    """The test's store writing batches by COPY, or (without rejects) in one statement."""
    store.small_batch_rows = PATHS[request.param]
    return store


@pytest.fixture
async def stream(store: Store) -> str:
    """A registered window stream."""
    await store.ensure_stream(STREAM, vendor="acefone", account="main", kind="window")
    return STREAM


async def test_identical_rewrite_writes_nothing(
    make_call: Callable[..., CallRecord], store: Store, stream: str, dsn: str
) -> None:
    """Re-writing an identical batch reports every row unchanged and touches no row."""
    batch = [make_call(f"k{i}") for i in range(50)]
    first = await store.write_batch(stream, batch, now=T0)
    assert (first.inserted, first.updated, first.unchanged) == (50, 0, 0)
    before = await rows(dsn, "SELECT call_key, xmin::text, updated_at FROM calls ORDER BY 1")

    again = await store.write_batch(stream, batch, now=T0 + dt.timedelta(hours=1))

    assert (again.inserted, again.updated, again.unchanged, again.written) == (0, 0, 50, 0)
    assert (
        await rows(dsn, "SELECT call_key, xmin::text, updated_at FROM calls ORDER BY 1") == before
    )
    assert await store.call_count() == 50
    state = await store.load_state(stream)
    assert state is not None
    assert (state.rows_inserted, state.rows_updated) == (50, 0)


async def test_changed_content_updates_the_row(
    make_call: Callable[..., CallRecord], store: Store, stream: str, dsn: str
) -> None:
    """A newer copy with different content updates the row; first_seen_at stays put."""
    await store.write_batch(stream, [make_call("a", status="missed")], now=T0)
    later = T0 + dt.timedelta(minutes=10)

    result = await store.write_batch(
        stream, [make_call("a", status="answered", fetched=later)], now=later
    )

    assert (result.inserted, result.updated) == (0, 1)
    [row] = await rows(dsn, "SELECT status, first_seen_at, updated_at, fetched_at FROM calls")
    assert row["status"] == "answered"
    assert row["first_seen_at"] == T0
    assert row["updated_at"] == later
    assert row["fetched_at"] == later


async def test_older_copy_never_overwrites_newer(
    make_call: Callable[..., CallRecord], store: Store, stream: str, dsn: str
) -> None:
    """A copy fetched earlier than the stored one is ignored even if its content differs."""
    new = T0 + dt.timedelta(minutes=10)
    await store.write_batch(stream, [make_call("a", status="answered", fetched=new)], now=new)

    result = await store.write_batch(stream, [make_call("a", status="missed", fetched=T0)], now=new)

    assert (result.inserted, result.updated, result.unchanged) == (0, 0, 1)
    [row] = await rows(dsn, "SELECT status, fetched_at FROM calls")
    assert (row["status"], row["fetched_at"]) == ("answered", new)


async def test_duplicate_keys_in_one_batch_collapse(
    make_call: Callable[..., CallRecord], store: Store, stream: str, dsn: str
) -> None:
    """Duplicates in one batch become one row: the newest copy, the later one on a tie."""
    t1, t2 = T0 + dt.timedelta(seconds=1), T0 + dt.timedelta(seconds=2)
    batch = [
        make_call("a", status="answered", fetched=t2),
        make_call("a", status="missed", fetched=t1),
        make_call("b", status="missed", fetched=t1),
        make_call("b", status="busy", fetched=t1),
    ]

    result = await store.write_batch(stream, batch, now=t2)

    assert (result.inserted, result.updated, result.unchanged) == (2, 0, 2)
    got = await rows(dsn, "SELECT call_key, status FROM calls ORDER BY call_key")
    assert [tuple(r) for r in got] == [("a", "answered"), ("b", "busy")]


def test_collapse_keeps_order_of_first_appearance(
    make_call: Callable[..., CallRecord],
) -> None:
    """collapse() keeps one record per key without reordering the batch."""
    batch = [make_call("b"), make_call("a"), make_call("b", fetched=T0 + dt.timedelta(seconds=1))]
    assert [(r.call_key, r.fetched_at) for r in collapse(batch)] == [
        ("b", T0 + dt.timedelta(seconds=1)),
        ("a", T0),
    ]


async def test_watermark_moves_with_batch_never_back(
    make_call: Callable[..., CallRecord], store: Store, stream: str
) -> None:
    """The watermark and cursor advance with the batch, and an older advance_to is ignored."""
    w1, w0 = T0 + dt.timedelta(hours=1), T0 - dt.timedelta(hours=1)
    await store.write_batch(stream, [make_call("a")], now=T0, advance_to=w1, cursor={"page": 3})
    state = await store.load_state(stream)
    assert state is not None
    assert (state.watermark, state.cursor) == (w1, {"page": 3})

    await store.write_batch(stream, [make_call("b")], now=T0, advance_to=w0, cursor={"page": 1})
    await store.write_batch(stream, [make_call("c")], now=T0)

    state = await store.load_state(stream)
    assert state is not None
    assert state.watermark == w1
    assert state.cursor == {"page": 1}
    assert state.rows_inserted == 3


# Each fault makes one statement after the COPY fail on the server, inside the transaction:
# the upsert itself, or the watermark update that follows a successful upsert.
FAULTS = {
    "UPSERT_CALLS_SQL": (
        "FROM cdrsync_calls_in",
        "FROM cdrsync_calls_in WHERE 1 / (length(call_key) - length(call_key)) = 1",
    ),
    "ADVANCE_WINDOW_SQL": (
        "WHERE stream",
        "WHERE 1 / (length($1::text) - length($1::text)) = 1 AND stream",
    ),
}


async def test_a_batch_without_records_advances_and_records_its_windows_together(
    store: Store, *, stream: str, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An empty batch moves the watermark and records its window together, or neither."""
    first, second = Window(T0, T0 + dt.timedelta(hours=1)), Window(T0, T0 + dt.timedelta(hours=2))
    await store.write_batch(stream, [], now=T0, advance_to=first.end, windows=[(first, 4)])
    state = await store.load_state(stream)
    assert state is not None and state.watermark == first.end
    recorded = await rows(dsn, "SELECT window_end, vendor_count FROM sync_windows")
    assert [tuple(r) for r in recorded] == [(first.end, 4)]

    broken = store_module.ADVANCE_WINDOW_SQL.replace("LEAST(c,", "LEAST(c / 0,", 1)
    monkeypatch.setattr(store_module, "ADVANCE_WINDOW_SQL", broken)
    with pytest.raises(StoreError, match="could not write 0 calls"):
        await store.write_batch(stream, [], now=T0, advance_to=second.end, windows=[(second, 5)])
    monkeypatch.undo()
    state = await store.load_state(stream)
    assert state is not None and state.watermark == first.end
    assert len(await rows(dsn, "SELECT * FROM sync_windows")) == 1


@pytest.mark.parametrize("step", sorted(FAULTS))
async def test_failed_batch_commits_nothing(
    make_call: Callable[..., CallRecord],
    store: Store,
    *,
    stream: str,
    dsn: str,
    monkeypatch: pytest.MonkeyPatch,
    step: str,
) -> None:
    """A failure in the upsert or the advance rolls back the rows, the rejects and the
    watermark together (on the one-statement path: the rows and the watermark)."""
    old, new = FAULTS[step]
    # Patched where the statement is used: the upsert lives in store.upsert, the state in store.
    user = upsert_module if step == "UPSERT_CALLS_SQL" else store_module
    monkeypatch.setattr(user, step, getattr(user, step).replace(old, new, 1))
    faulty = one_statement_sql(
        vars(upsert_module)["UPSERT_CALLS_SQL"], store_module.ADVANCE_WINDOW_SQL
    )
    monkeypatch.setattr(upsert_module, "UPSERT_ADVANCE_SQL", faulty)
    reject = Reject("acefone", "main", stream, None, "no id", '{"x": 1}', T0)
    # A batch with rejects always takes the COPY path.
    rejects = [reject] if store.small_batch_rows == PATHS["copy"] else []

    with pytest.raises(StoreError, match=r"could not write 3 calls .*rolled back"):
        await store.write_batch(
            stream,
            [make_call("a"), make_call("b"), make_call("c")],
            rejects,
            now=T0,
            advance_to=T0,
        )

    monkeypatch.undo()
    assert await store.call_count() == 0
    assert await rows(dsn, "SELECT * FROM rejects") == []
    state = await store.load_state(stream)
    assert state is not None
    assert (state.watermark, state.rows_inserted) == (None, 0)
    after = await store.write_batch(stream, [make_call("a")], now=T0)  # the connection is usable
    assert after.inserted == 1


class Counted:
    """A pool or a connection whose statements are counted in ``sent`` (a round trip each,
    BEGIN and COMMIT two for a transaction); everything is passed on to the real one."""

    STATEMENTS = ("execute", "fetch", "fetchrow", "fetchval", "copy_records_to_table")

    def __init__(self, real: Any, sent: list[str]) -> None:
        self._real, self._sent = real, sent

    def __getattr__(self, name: str) -> Any:
        found = getattr(self._real, name)
        if name in self.STATEMENTS:

            async def counted(*args: Any, **kwargs: Any) -> Any:
                self._sent.append(name)
                return await found(*args, **kwargs)

            return counted
        if name == "transaction":
            self._sent += ["BEGIN", "COMMIT"]
        return found

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[Counted]:
        async with self._real.acquire() as conn:
            yield Counted(conn, self._sent)


async def test_a_small_batch_is_one_round_trip(
    make_call: Callable[..., CallRecord], store: Store, stream: str
) -> None:
    """A live cycle's one-row batch costs one statement by default (six by COPY: BEGIN, the
    temporary table, COPY, upsert, advance, COMMIT)."""
    copy = store.small_batch_rows == PATHS["copy"]
    if not copy:
        store.small_batch_rows = upsert_module.SMALL_BATCH_ROWS  # the default
    statements: list[str] = []
    store._pool = Counted(store._pool, statements)

    result = await store.write_batch(
        stream, [make_call("a")], now=T0, advance_to=T0, windows=[(Window(T0, T0), 1)]
    )

    assert len(statements) == (6 if copy else 1), statements
    assert result.inserted == 1
    assert await store.call_count() == 1


async def test_the_batch_arrays_have_the_types_of_the_calls_columns(dsn: str) -> None:
    """Each column's array in the one-statement batch has the column's type in table calls."""
    found = await rows(
        dsn,
        "SELECT column_name, format_type(atttypid, atttypmod) AS type FROM pg_attribute a "
        "JOIN information_schema.columns c ON c.column_name = a.attname "
        "WHERE a.attrelid = 'cdrsync.calls'::regclass AND c.table_schema = 'cdrsync' "
        "AND c.table_name = 'calls'",
    )
    types = {r["column_name"]: r["type"] for r in found}
    aliases = {"int": "integer", "timestamptz": "timestamp with time zone"}
    assert {c: aliases.get(t, t) for c, t in CALL_TYPES.items()} == {
        c: types[c] for c in CALL_TYPES
    }


async def test_rejects_are_counted_not_duplicated(store: Store, stream: str, dsn: str) -> None:
    """The same bad record read again bumps seen_count instead of adding a row."""
    bad = Reject("acefone", "main", stream, "x1", "missing start time", '{"id": "x1"}', T0)
    other = Reject("acefone", "main", stream, None, "not an object", "[1, 2]", T0)
    later = T0 + dt.timedelta(minutes=5)

    first = await store.write_batch(stream, [], [bad, other, bad], now=T0)
    await store.write_batch(stream, [], [bad], now=later)

    assert first.rejected == 3
    got = await rows(
        dsn, "SELECT call_key, seen_count, first_seen_at, last_seen_at FROM rejects ORDER BY id"
    )
    assert [tuple(r) for r in got] == [("x1", 3, T0, later), (None, 1, T0, T0)]


async def test_unregistered_stream_is_refused(
    make_call: Callable[..., CallRecord], store: Store
) -> None:
    """A batch for a stream without sync_state row is refused and writes no call."""
    with pytest.raises(StoreError, match="no row in sync_state"):
        await store.write_batch("nobody", [make_call("a")], now=T0)
    assert await store.call_count() == 0


async def test_record_cycle_and_states(store: Store, stream: str) -> None:
    """Cycles count up; a success sets last_success_at, an error sets last_error; each count
    answers the stream's state after it."""
    counted = await store.record_cycle(stream, now=T0)
    assert (counted.stream, counted.cycles, counted.last_success_at) == (STREAM, 1, T0)
    later = T0 + dt.timedelta(minutes=1)
    await store.record_cycle(stream, now=later, error="TransientError: 503 from vendor")
    await store.ensure_stream("vcclive:x:cdrs", vendor="vcclive", account="x", kind="window")

    states = await store.states()

    assert [s.stream for s in states] == [STREAM, "vcclive:x:cdrs"]
    first = states[0]
    assert (first.cycles, first.last_success_at) == (2, T0)
    assert (first.last_error, first.last_error_at) == ("TransientError: 503 from vendor", later)
    assert await store.load_state("missing") is None
    with pytest.raises(StoreError, match="no row in sync_state"):
        await store.record_cycle("missing", now=T0)


async def test_call_count_filters(
    make_call: Callable[..., CallRecord], store: Store, stream: str
) -> None:
    """call_count counts per vendor and account."""
    await store.write_batch(
        stream, [make_call("a"), make_call("b"), make_call("c", account="other")], now=T0
    )
    assert await store.call_count() == 3
    assert await store.call_count("acefone", "main") == 2
    assert await store.call_count(account="other") == 1
    assert await store.call_count("vcclive") == 0


async def test_call_hashes_and_reject_count(
    make_call: Callable[..., CallRecord], store: Store, stream: str
) -> None:
    """call_hashes maps each key of one account to its content hash; reject_count counts rows."""
    a, b = make_call("a"), make_call("b", status="missed")
    bad = Reject("acefone", "main", stream, None, "no id", "{}", T0)
    await store.write_batch(stream, [a, b, make_call("c", account="other")], [bad, bad], now=T0)

    assert await store.call_hashes("acefone", "main") == {"a": a.content_hash, "b": b.content_hash}
    assert await store.reject_count() == 1
    assert await store.reject_count("acefone", "other") == 0


async def test_errors_never_show_the_password() -> None:
    """A connection failure says what failed and hides the DSN's password."""
    with pytest.raises(StoreError) as caught:
        await Store.connect("postgresql://cdr:s3cr3t-pw@127.0.0.1:1/cdr", connect_timeout=2)
    message = str(caught.value)
    assert "s3cr3t-pw" not in message
    assert "127.0.0.1:1/cdr" in message
    assert "unreachable" in message


@pytest.mark.parametrize(
    "schema", ["", "1abc", "a-b", 'x"; DROP TABLE calls; --', "pg_x", "a" * 64]
)
async def test_bad_schema_names_are_refused(schema: str) -> None:
    """A schema name that is not a plain identifier stops start-up with a config error."""
    with pytest.raises(ConfigError, match="schema"):
        await Store.connect("postgresql://u@127.0.0.1:1/db", schema=schema)


def test_quote_ident_doubles_quotes() -> None:
    """quote_ident makes any text a single identifier."""
    assert quote_ident('we"ird') == '"we""ird"'


async def test_stream_lock_is_exclusive(store: Store) -> None:
    """A held stream lock cannot be taken by another session until the first closes."""
    first, second = store.lock_session(), store.lock_session()
    await first.open()
    try:
        assert await first.try_acquire(STREAM)
        assert await first.try_acquire(STREAM)  # re-entrant for its owner
        assert not await second.try_acquire(STREAM)
        assert await second.try_acquire("other")
        assert (first.held, second.held) == (frozenset({STREAM}), frozenset({"other"}))

        await first.close()

        assert first.held == frozenset()
        assert await second.try_acquire(STREAM)
        await second.release(STREAM)
        assert second.held == frozenset({"other"})
        assert await first.try_acquire(STREAM)  # reconnects after close
    finally:
        await first.close()
        await second.close()


async def test_store_recovers_after_postgres_restart(
    make_call: Callable[..., CallRecord],
    store: Store,
    stream: str,
    restartable_pg: EmbeddedPostgres,
) -> None:
    """While PostgreSQL is down writes fail with StoreError; after it returns they work."""
    await store.write_batch(stream, [make_call("a")], now=T0)
    restartable_pg.stop()
    try:
        with pytest.raises(StoreError, match="unreachable"):
            await store.write_batch(stream, [make_call("b")], now=T0, advance_to=T0)
        with pytest.raises(StoreError):
            await store.ping()
    finally:
        restartable_pg.restart()

    result = await store.write_batch(stream, [make_call("b")], now=T0, advance_to=T0)

    assert result.inserted == 1
    assert await store.call_count() == 2
    state = await store.load_state(stream)
    assert state is not None
    assert state.watermark == T0


async def test_stream_locks_are_lost_on_restart(
    store: Store, restartable_pg: EmbeddedPostgres
) -> None:
    """After a server restart the lock session reports dead, holds nothing, and reconnects."""
    locks = store.lock_session()
    await locks.open()
    try:
        assert await locks.try_acquire(STREAM)
        assert await locks.alive()

        restartable_pg.kill_and_start()

        assert not await locks.alive()
        assert locks.held == frozenset()
        assert await locks.try_acquire(STREAM)
        assert await locks.alive()
    finally:
        await locks.close()


ACTIVITY_SQL = "SELECT state_change FROM pg_stat_activity WHERE pid = $1"


async def test_the_lock_probe_asks_the_server_at_most_every_probe_every(
    store: Store, dsn: str
) -> None:
    """alive() asks the server at most every probe_every, and then reports a lost session."""
    now = [0.0]
    locks = StreamLocks(dsn, schema=store.schema, probe_every=5.0, clock=lambda: now[0])
    await locks.open()
    try:
        assert await locks.try_acquire(STREAM)
        pid = locks._conn.get_server_pid()
        assert await locks.alive()
        probed = await sql_value(dsn, ACTIVITY_SQL, pid)
        now[0] = 4.9
        assert await locks.alive()
        assert await sql_value(dsn, ACTIVITY_SQL, pid) == probed  # nothing was sent
        now[0] = 5.0
        assert await locks.alive()
        assert await sql_value(dsn, ACTIVITY_SQL, pid) > probed  # asked again

        await sql_value(dsn, "SELECT pg_terminate_backend($1)", pid)
        now[0] = 10.0
        assert not await locks.alive()
        assert locks.held == frozenset()
    finally:
        await locks.close()


async def test_lock_session_silent_network_is_a_lost_session_not_a_hang(dsn: str) -> None:
    """With the network to PostgreSQL silently dropped, try_acquire and release fail within
    the connect timeout and the session counts as lost (every lock with it), instead of
    blocking every stream's probe and the heartbeat until TCP gives up."""
    async with freezable_proxy(dsn) as proxy:
        # 5 s: the real connects through the proxy (the first, and the one after thaw) must not
        # time out on a busy machine; the frozen statements still end within it.
        locks = StreamLocks(proxy.dsn, connect_timeout=5.0)
        try:
            assert await locks.try_acquire(STREAM)
            proxy.freeze()
            with pytest.raises(StoreError, match="treated as lost"):
                await asyncio.wait_for(locks.try_acquire("other"), 60)
            assert locks.held == frozenset()
            proxy.thaw()
            assert await locks.try_acquire("third")  # a new session
            proxy.freeze()
            with pytest.raises(StoreError, match="treated as lost"):
                await asyncio.wait_for(locks.release("third"), 60)
            assert locks.held == frozenset()
            assert not await locks.alive()
        finally:
            proxy.thaw()
            await locks.close()


async def test_records_postgres_cannot_store_become_rejects_not_a_stuck_batch(store) -> None:
    """A NUL character or an out-of-range number in one record sends that record to rejects;
    the rest of its page is stored (kept, it would fail the whole batch on every cycle)."""
    import zoneinfo

    import orjson

    from cdrsync.vendors.acefone import parse_page

    good = {"id": "ok1", "date": "2026-11-20", "time": "10:00:00", "end_stamp": "",
            "call_duration": 30, "status": "answered"}  # fmt: skip
    page = orjson.dumps(
        {"count": 3, "results": [good, {**good, "id": "nul1", "agent_name": "a\x00b"},
                                 {**good, "id": "big1", "call_duration": 10**12}]}
    )  # fmt: skip
    now = dt.datetime.now(dt.UTC)
    parsed = parse_page(
        page, account="main", stream="main/list", zone=zoneinfo.ZoneInfo("Asia/Kolkata"),
        fetched_at=now,
    )  # fmt: skip
    await store.ensure_stream("main/list", vendor="acefone", account="main", kind="list")
    result = await store.write_batch("main/list", parsed.records, parsed.rejects, now=now)
    assert (result.inserted, result.rejected) == (1, 2)
    assert await store.call_count("acefone", "main") == 1
    assert await store.reject_count("acefone", "main") == 2
