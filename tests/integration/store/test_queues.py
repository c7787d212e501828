"""The lookup queue, source ranks and the outbox tables on real PostgreSQL."""

from __future__ import annotations

import datetime as dt

import pytest

from cdrsync.model import CallEvent, LookupOutcome, LookupRequest
from cdrsync.store.store import Store
from support import sql_value

NOW = dt.datetime(2026, 11, 20, 10, 0, tzinfo=dt.UTC)


async def _stream(store: Store, name: str = "main/lookup") -> str:
    await store.ensure_stream(name, vendor="acefone", account="main", kind="lookup")
    return name


@pytest.mark.parametrize(
    ("first", "second", "kept"),
    [
        ("push", "list", "list"),  # the list is the truth: it replaces a push
        ("list", "push", "list"),  # a later push never replaces the list's copy
        ("list", "lookup", "list"),
        ("lookup", "list", "list"),
        ("push", "lookup", "lookup"),
        ("lookup", "push", "lookup"),
    ],
)
async def test_a_lower_source_never_replaces_a_higher_one(
    store: Store, make_call, first: str, second: str, kept: str
) -> None:
    """Copies of one call from push, lookup and list settle on the highest-ranked source."""
    stream = await _stream(store, "main/list")
    await store.write_batch(stream, [make_call("k", source=first, description=first)], now=NOW)
    later = NOW + dt.timedelta(minutes=1)
    await store.write_batch(
        stream, [make_call("k", source=second, description=second, fetched=later)], now=later
    )
    row = await sql_value(store_dsn(store), "SELECT source || '/' || description FROM calls")
    assert row == f"{kept}/{kept}"


def store_dsn(store: Store) -> str:
    return store._dsn  # the test database of the fixture


async def test_a_push_commits_its_call_and_queues_its_lookup(store: Store, make_call) -> None:
    """write_push stores the call and one pending lookup; a second push does not add another."""
    stream = await _stream(store, "main/push")
    lookup = LookupRequest("ozonetel.cdr", "k1", {"started_at": NOW.isoformat()}, NOW)
    for _ in range(2):
        await store.queues.write_push(
            stream, [make_call("k1", source="push")], [], [lookup],
            vendor="acefone", account="main", now=NOW,
        )  # fmt: skip
    assert await store.call_count() == 1
    due = await store.queues.due_lookups("acefone", "main", ["ozonetel.cdr"], now=NOW, limit=10)
    assert [(i.call_key, i.attempts, dict(i.context)) for i in due] == [
        ("k1", 0, {"started_at": NOW.isoformat()})
    ]


async def test_a_push_listing_one_call_twice_is_stored_with_one_lookup(
    store: Store, make_call
) -> None:
    """A list push naming the same call twice (Ozonetel pushes may) is stored, not refused
    with a database error on every retry of the vendor."""
    stream = await _stream(store, "main/push")
    first = LookupRequest("ozonetel.cdr", "k1", {"n": 1}, NOW)
    second = LookupRequest("ozonetel.cdr", "k1", {"n": 2}, NOW)
    await store.queues.write_push(
        stream, [make_call("k1", source="push"), make_call("k1", source="push")], [],
        [first, second], vendor="acefone", account="main", now=NOW,
    )  # fmt: skip
    due = await store.queues.due_lookups("acefone", "main", ["ozonetel.cdr"], now=NOW, limit=10)
    assert [(i.call_key, dict(i.context)) for i in due] == [("k1", {"n": 2})]


async def test_lookup_attempts_retry_finish_and_follow_up(store: Store, make_call) -> None:
    """A retry moves the due time and counts the attempt; done stores calls, events and
    follow-ups in the same transaction; finished lookups are never due again."""
    stream = await _stream(store)
    q = store.queues
    await q.enqueue("acefone", "main", [LookupRequest("vcclive.cdr", "u1", {}, NOW)], now=NOW)
    (item,) = await q.due_lookups("acefone", "main", ["vcclive.cdr"], now=NOW, limit=5)
    later = NOW + dt.timedelta(minutes=5)
    await q.finish_lookup(stream, item, LookupOutcome("retry", next_attempt_at=later), now=NOW)
    assert await q.due_lookups("acefone", "main", ["vcclive.cdr"], now=NOW, limit=5) == []
    assert await q.next_lookup_due("acefone", "main", ["vcclive.cdr"]) == later
    (item,) = await q.due_lookups("acefone", "main", ["vcclive.cdr"], now=later, limit=5)
    assert item.attempts == 1
    event = CallEvent("acefone", "main", 3, 11, 0, "u1", "disposition", 3, "AFTERWORK", 6,
                      "busy", NOW, '{"a": 1}')  # fmt: skip
    follow = LookupRequest("vcclive.record", "3/11/u1", {"projectid": 3, "numberid": 11}, later)
    done = LookupOutcome(
        "done", records=(make_call("u1", source="lookup"),), events=(event,), follow_ups=(follow,)
    )
    result = await q.finish_lookup(stream, item, done, now=later)
    assert result.inserted == 1
    assert await q.due_lookups("acefone", "main", ["vcclive.cdr"], now=later, limit=5) == []
    assert [e["description"] for e in await q.events_of("acefone", "main")] == ["busy"]
    depths = await q.depths()
    assert depths[("acefone", "main", "lookups")] == {"done": 1, "pending": 1}


async def test_lookups_of_calls_the_list_stored_are_closed(store: Store, make_call) -> None:
    """A pending lookup whose call the list poller already stored needs no request."""
    stream = await _stream(store, "main/list")
    q = store.queues
    requests = [LookupRequest("x.cdr", key, {}, NOW) for key in ("k1", "k2")]
    await q.enqueue("acefone", "main", requests, now=NOW)
    await store.write_batch(stream, [make_call("k1")], now=NOW)
    assert await q.confirmed_by_list("acefone", "main", ["x.cdr"], now=NOW) == 1
    due = await q.due_lookups("acefone", "main", ["x.cdr"], now=NOW, limit=5)
    assert [i.call_key for i in due] == ["k2"]


async def _outbox_rows(store: Store, *rows: tuple[int, str]) -> None:
    import asyncpg

    conn = await asyncpg.connect(store_dsn(store), server_settings={"search_path": "cdrsync"})
    try:
        for projectid, name in rows:
            await conn.execute(
                "INSERT INTO vcclive_outbox (account, projectid, payload) VALUES ($1, $2, $3)",
                "eu", projectid, f'{{"form": {{"name": "{name}"}}}}',
            )  # fmt: skip
    finally:
        await conn.close()


async def test_outbox_claims_one_project_at_a_time_and_recovers_in_doubt_rows(
    store: Store,
) -> None:
    """A claim takes due rows of the oldest row's project; rows left sending become unknown."""
    await _outbox_rows(store, (3, "a"), (4, "b"), (3, "c"))
    q = store.queues
    now = dt.datetime.now(dt.UTC)  # inserted rows are due from the database's now()
    claimed = await q.outbox_claim("eu", now=now, limit=10, batch="b1")
    assert [(r.projectid, r.payload["form"]["name"]) for r in claimed] == [(3, "a"), (3, "c")]
    assert await q.outbox_recover("eu", now=now) == 2
    unknown = await q.outbox_unknown("eu", limit=10)
    assert [r.id for r in unknown] == [r.id for r in claimed]
    (other,) = await q.outbox_claim("eu", now=now, limit=10, batch="b2")
    await q.outbox_delivered([other.id], [77], now=now)
    later = now + dt.timedelta(hours=1)
    bounds = await q.outbox_probe_bounds("eu", 4, first_sent=later, last_sent=later)
    assert (bounds.after, bounds.until) == (77, None)  # rows in doubt sent after 77's batch
    bounds = await q.outbox_probe_bounds("eu", 4, first_sent=now - dt.timedelta(hours=1),
                                         last_sent=now - dt.timedelta(hours=1))  # fmt: skip
    assert (bounds.after, bounds.until) == (0, 77)  # ... or before it
    assert (await q.depths())[("vcclive", "eu", "outbox")] == {"unknown": 2, "delivered": 1}
