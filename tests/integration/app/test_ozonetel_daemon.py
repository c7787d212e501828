"""Ozonetel end to end: the daemon (live window stream, backlog stream, push receiver, CallBacks
lookups) against the Ozonetel simulator over HTTP on 127.0.0.1 and real PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from structlog.testing import capture_logs

from cdrsync.app import daemon as app
from cdrsync.config import Settings, parse
from cdrsync.simulator.ozonetel import OzonetelSimConfig, OzonetelSimulator
from cdrsync.simulator.ozonetel_calls import callback_record
from cdrsync.simulator.ozonetel_server import run_pushes, start_ozonetel_server
from cdrsync.simulator.server import RunningServer
from cdrsync.store.store import Store
from cdrsync.vendors.acefone import digest
from cdrsync.vendors.ozonetel import IST, forget_tokens, scrub
from process_support import children, fetch, write_config
from support import differences, eventually, running_daemon

ACCOUNT = "acme-oz"
USER = "sim-user"
API_KEY = "oz-Key-7Hq2-9c4e1b8d0a6f"  # distinctive: searched for in tables and logs
SECRET = "oz-hook-secret-41"
HISTORY = f"{ACCOUNT}/history"


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on (for the daemon's http_listen)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ist_days_ago(days: int) -> dt.date:
    """The IST date ``days`` before today (IST)."""
    return (dt.datetime.now(IST) - dt.timedelta(days=days)).date()


def account_table(base_url: str, **overrides: Any) -> dict[str, Any]:
    """The Ozonetel test account: fast polling, short windows, a bulk budget of 20 per 2 s."""
    table: dict[str, Any] = {
        "name": ACCOUNT, "vendor": "ozonetel", "base_url": base_url, "username": USER,
        "api_key": API_KEY, "webhook_secret": SECRET, "start": ist_days_ago(4).isoformat(),
        "poll_interval": "300ms", "settle": "1s", "lookback": "1h", "window": "1h",
        "history_window": "1d", "page_size": 50,
        "rate_limits": {"bulk": "20/2s", "lookup": "1000/min", "token": "10/h"},
    }  # fmt: skip
    table.update(overrides)
    return table


def oz_settings(base_url: str, dsn: str, port: int = 0, **account: Any) -> Settings:
    """Validated settings for the test account (``http_listen`` on ``port`` unless 0)."""
    return parse(
        {
            "database": {"dsn": dsn, "schema": "cdrsync"},
            "daemon": {
                "state_dir": "/tmp",
                "http_listen": f"127.0.0.1:{port}" if port else "",
                "shutdown_grace": "5s",
            },
            "accounts": [account_table(base_url, **account)],
        },
        source="<test>",
        environ={},
    )


def sim_config(**changes: Any) -> OzonetelSimConfig:
    """A simulated account with the test's credentials, quick visibility and a loose budget."""
    options: dict[str, Any] = {
        "seed": 11, "backlog": 300, "backlog_days": 3.0, "live_per_minute": 60.0,
        "legs_fraction": 0.3, "username": USER, "api_key": API_KEY,
        "visible_delay_s": (0.5, 2.0), "push_delay_s": 0.5,
        "bulk_rate_limit": 20, "bulk_rate_period_s": 2.0, "lookup_rate_limit": 1000,
    }  # fmt: skip
    options.update(changes)
    return OzonetelSimConfig(**options)


def truth_hashes(sim: OzonetelSimulator) -> dict[str, bytes]:
    """UCID -> the content hash the list stream stores for the simulator's bulk record (the
    scrubbed record as sorted-key JSON, as ``ozonetel_parse.normalize_bulk`` builds ``raw``)."""
    return {
        ucid: digest(orjson.dumps(scrub(record), option=orjson.OPT_SORT_KEYS))
        for ucid, record in sim.truth().items()
    }


async def pushed(sim: OzonetelSimulator, *, within: float = 30) -> bool:
    """Wait until the simulator has delivered a push (its calls end on its own clock)."""

    async def some() -> bool:
        return sim.stats.pushes_sent > 0

    return await eventually(some, timeout=within)


async def converged(store: Store, sim: OzonetelSimulator, timeout: float) -> dict[str, list[str]]:
    """Wait until the live traffic has stopped, its last leg is visible and ``calls`` equals
    the simulator's truth; the differences left."""
    diff: dict[str, list[str]] = {}

    async def equal() -> bool:
        nonlocal diff
        diff = differences(truth_hashes(sim), await store.call_hashes("ozonetel", ACCOUNT))
        return not any(diff.values()) and sim.now() > sim.last_visible_time()

    await eventually(equal, timeout=timeout, interval=0.3)
    return diff


async def one(dsn: str, query: str, *args: Any) -> Any:
    """The first column of the first row of ``query``."""
    rows = await fetch(dsn, query, *args)
    return rows[0][0] if rows else None


@pytest.fixture
async def served() -> AsyncIterator[list[RunningServer]]:
    """Simulator servers a test starts; closed at its end (and no token cached across)."""
    forget_tokens()
    servers: list[RunningServer] = []
    try:
        yield servers
    finally:
        for server in servers:
            await server.close()
        forget_tokens()


async def serve(servers: list[RunningServer], sim: OzonetelSimulator) -> str:
    """Serve ``sim`` on 127.0.0.1 for the rest of the test; its base URL."""
    server = await start_ozonetel_server(sim)
    servers.append(server)
    return server.base_url


def hook_url(port: int, token: str = SECRET) -> str:
    """The daemon's push URL for the test account."""
    return f"http://127.0.0.1:{port}/hooks/{ACCOUNT}?token={token}"


# ---------------------------------------------------------------------------- a. equal to truth


async def test_backlog_live_calls_and_pushes_end_equal_to_the_vendor(
    dsn: str, store: Store, served: list[RunningServer]
) -> None:
    """A 3-day backlog (multi-leg calls included) plus live calls and their pushes: calls ends
    equal to the simulator (every UCID once, its CallID kept, the list's copy), and the backlog
    stream finishes."""
    sim = OzonetelSimulator(sim_config())
    url = await serve(served, sim)
    port = free_port()
    stop_pushes = asyncio.Event()
    async with running_daemon(oz_settings(url, dsn, port)) as daemon:
        pushes = asyncio.create_task(run_pushes(sim, hook_url(port), stop_pushes))
        await asyncio.sleep(5)  # live calls for a while (the simulator's clock is the wall's)
        assert await pushed(sim), "no push was delivered"
        sim.stop_live()
        diff = await converged(store, sim, timeout=40)
        stop_pushes.set()
        await pushes

        async def confirmed() -> bool:
            return await one(dsn, "SELECT count(*) FROM lookups WHERE state <> 'done'") == 0

        assert await eventually(confirmed, timeout=30)
        assert not daemon.done()
    assert diff == {"missing": [], "extra": [], "stale": []}
    truth = sim.truth()
    legs: dict[str, set[str]] = {}
    for ucid, record in truth.items():
        legs.setdefault(record["CallID"], set()).add(ucid)
    assert sum(len(u) > 1 for u in legs.values()) >= 5, "too few multi-leg calls to prove much"
    rows = await fetch(dsn, "SELECT call_key, call_id, source FROM calls")
    assert len(rows) == len({r["call_key"] for r in rows}) == len(truth)
    assert {r["call_key"]: r["call_id"] for r in rows} == {u: r["CallID"] for u, r in truth.items()}
    assert {r["source"] for r in rows} == {"list"}
    assert sim.stats.pushes_sent > 0
    assert sim.stats.pushes_failed == 0
    assert sim.stats.rate_limited == {}
    # Each push queued a lookup (due 2 minutes later); the list poller confirmed them all first.
    lookups = await fetch(dsn, "SELECT state, attempts, last_error FROM lookups")
    assert len(lookups) == sim.stats.pushes_sent
    assert {tuple(r) for r in lookups} == {("done", 0, "confirmed by the list poller")}
    assert sim.stats.requests.get("callbacks", 0) == 0
    kind = await one(dsn, "SELECT kind FROM sync_state WHERE stream = $1", HISTORY)
    split = dt.datetime.fromisoformat(kind.removeprefix("history:.."))
    assert await one(dsn, "SELECT watermark FROM sync_state WHERE stream = $1", HISTORY) >= split


@pytest.mark.parametrize("empty_shape", ["details", "no_data", "string_total"])
async def test_every_shape_of_an_empty_window_ends_equal_to_the_vendor(
    dsn: str, store: Store, served: list[RunningServer], empty_shape: str
) -> None:
    """Whether a quiet window comes back as an empty details list, as "No Data Found" without
    details, or with a string totalCount, neither stream stalls on it: calls ends equal to the
    simulator and the backlog stream finishes."""
    # Few calls over the last two days, start five days back: most hours and days are empty.
    sim = OzonetelSimulator(
        sim_config(seed=5, backlog=25, backlog_days=2.0, live_per_minute=0.0,
                   empty_shape=empty_shape)
    )  # fmt: skip
    url = await serve(served, sim)
    settings = oz_settings(url, dsn, start=ist_days_ago(5).isoformat())
    async with running_daemon(settings) as daemon:

        async def both_streams_caught_up() -> bool:
            kind = await one(dsn, "SELECT kind FROM sync_state WHERE stream = $1", HISTORY)
            mark = await one(dsn, "SELECT watermark FROM sync_state WHERE stream = $1", HISTORY)
            live = await one(
                dsn, "SELECT watermark FROM sync_state WHERE stream = $1", f"{ACCOUNT}/list"
            )
            if kind is None or mark is None or live is None:
                return False
            split = dt.datetime.fromisoformat(kind.removeprefix("history:.."))
            return bool(mark >= split and live >= dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))

        caught_up = await eventually(both_streams_caught_up, timeout=40, interval=0.3)
        diff = await converged(store, sim, timeout=30)
        assert not daemon.done()
    assert caught_up, await fetch(dsn, "SELECT stream, watermark, last_error FROM sync_state")
    assert diff == {"missing": [], "extra": [], "stale": []}
    assert len(sim.truth()) >= 25  # calls, some of several legs (one UCID each)


@pytest.mark.parametrize("mode", ["apikey", "token"])
async def test_an_account_of_either_auth_mode_syncs_with_the_default_auth(
    dsn: str, store: Store, served: list[RunningServer], mode: str
) -> None:
    """Whether the account's "API Authentication" is BASIC_AUTH or TOKEN, the default auth
    ("auto") finds it: calls ends equal to the simulator and the mode is logged."""
    sim = OzonetelSimulator(sim_config(seed=6, backlog=60, live_per_minute=0.0, auth=mode))
    url = await serve(served, sim)
    with capture_logs() as logs:
        async with running_daemon(oz_settings(url, dsn)) as daemon:
            diff = await converged(store, sim, timeout=30)
            assert not daemon.done()
    assert diff == {"missing": [], "extra": [], "stale": []}
    assert [e["mode"] for e in logs if e["event"] == "ozonetel.auth_mode"] == [mode]


# ---------------------------------------------------------------------------- b. bulk budget


def busiest_window(times: list[float], period: float) -> int:
    """The most requests any window of ``period`` seconds holds (``[t, t + period)``)."""
    ordered = sorted(times)
    most, lo = 0, 0
    for hi, t in enumerate(ordered):
        while ordered[lo] <= t - period:
            lo += 1
        most = max(most, hi - lo + 1)
    return most


async def test_bulk_budget_is_never_exceeded_by_live_backlog_and_audit_together(
    dsn: str, store: Store, served: list[RunningServer]
) -> None:
    """With the vendor enforcing 4 bulk requests per sliding 2 s, the live stream, the backlog
    stream and the window audit together never get a 429, no 2 s window of the vendor's log
    holds more than 4 requests, and the backlog still finishes."""
    sim = OzonetelSimulator(sim_config(seed=12, backlog=200, live_per_minute=30, bulk_rate_limit=4))
    counts: list[float] = []  # when the audit's one-record count requests arrived
    handle = sim.handle_bulk

    def observed(endpoint: str, api_key: Any, auth: Any, body: bytes, query: Any) -> Any:
        if query.get("pageSize") == "1":
            counts.append(time.time())
        return handle(endpoint, api_key, auth, body, query)

    sim.handle_bulk = observed  # type: ignore[method-assign,assignment]
    url = await serve(served, sim)
    # Without a lookback the live stream re-reads only the current hour, so the audit has the
    # hour before it to re-count; in the first hour of an IST day there is no such window yet.
    settings = oz_settings(
        url, dsn, page_size=100, poll_interval="2s", lookback="0s", audit_horizon="2h",
        audit_interval="3s", rate_limits={"bulk": "4/2s", "lookup": "1000/min", "token": "10/h"},
    )  # fmt: skip
    auditable = dt.datetime.now(IST).time() >= dt.time(1, 0, 10)
    async with running_daemon(settings) as daemon:

        async def backlog_done_and_audited() -> bool:
            kind = await one(dsn, "SELECT kind FROM sync_state WHERE stream = $1", HISTORY)
            mark = await one(dsn, "SELECT watermark FROM sync_state WHERE stream = $1", HISTORY)
            if kind is None or mark is None or (auditable and not counts):
                return False
            return bool(mark >= dt.datetime.fromisoformat(kind.removeprefix("history:..")))

        finished = await eventually(backlog_done_and_audited, timeout=50, interval=0.5)

        async def a_window_full() -> bool:
            # The live stream and the audit spend the budget on their own too: wait until some
            # window was full (counted, not timed: a slow machine sends more slowly).
            return busiest_window(list(sim.stats.bulk_times), 2.0) >= 4

        full = await eventually(a_window_full, timeout=30, interval=0.2)
        assert not daemon.done()
    times = list(sim.stats.bulk_times)
    assert finished, f"backlog not finished or no audit: {len(times)} bulk, {len(counts)} counts"
    assert sim.stats.rate_limited == {}, sim.stats.as_dict()
    assert 429 not in sim.stats.responses.get("bulk", {}), sim.stats.responses
    assert busiest_window(times, 2.0) <= 4
    # The budget was the bottleneck: some window was full, so the test proved something.
    assert full, f"no 2 s window held 4 bulk requests: {len(times)} in all"


# ---------------------------------------------------------------------------- c. pushes


def push_record(ucid: str, started: dt.datetime, **fields: Any) -> dict[str, Any]:
    """A callback-shape record as Ozonetel pushes it, ``Apikey`` included."""
    start = started.astimezone(IST)
    record: dict[str, Any] = {
        "monitorUCID": ucid, "UCID": ucid, "CallID": "999000001", "Did": "918069000111",
        "CampaignName": "Inbound_Support", "CallerID": "919812345678", "Skill": "Support",
        "StartTime": start.strftime("%Y-%m-%d %H:%M:%S"),
        "EndTime": (start + dt.timedelta(seconds=95)).strftime("%Y-%m-%d %H:%M:%S"),
        "TimeToAnswer": "00:00:05", "CallDuration": "00:01:35", "Duration": "00:01:30",
        "Type": "InBound", "AgentName": "Priya Sharma", "Status": "Answered",
        "DialStatus": "answered", "Apikey": API_KEY, "UserName": USER,
    }  # fmt: skip
    record.update(fields)
    return record


async def post_form(http: aiohttp.ClientSession, url: str, data: str, field: str = "data") -> int:
    """POST ``data=<data>`` as form data, the way Ozonetel pushes; the HTTP status."""
    async with http.post(url, data={field: data}) as resp:
        await resp.read()
        return resp.status


async def post_multipart(http: aiohttp.ClientSession, url: str, data: str) -> int:
    """POST ``data=<data>`` as multipart/form-data (the other kind of "form data")."""
    with aiohttp.MultipartWriter("form-data") as writer:
        part = writer.append(data)
        part.set_content_disposition("form-data", name="data")
    async with http.post(url, data=writer) as resp:
        await resp.read()
        return resp.status


async def post_json(http: aiohttp.ClientSession, url: str, doc: Any) -> int:
    """POST ``doc`` as a JSON body; the HTTP status."""
    async with http.post(url, json=doc) as resp:
        await resp.read()
        return resp.status


SECRET_QUERIES = {
    "calls.raw": "SELECT count(*) FROM calls WHERE raw::text LIKE $1 OR raw::text ILIKE $2",
    "rejects.payload": "SELECT count(*) FROM rejects WHERE payload LIKE $1 OR payload ILIKE $2",
    "lookups.context": (
        "SELECT count(*) FROM lookups WHERE context::text LIKE $1 OR context::text ILIKE $2"
    ),
}


async def secret_rows(dsn: str) -> dict[str, int]:
    """Rows that hold the API key's value, or an Apikey field, in the stored text."""
    return {
        where: await one(dsn, query, f"%{API_KEY}%", "%apikey%")
        for where, query in SECRET_QUERIES.items()
    }


async def test_pushes_land_at_once_bad_ones_are_refused_and_the_api_key_is_never_kept(
    dsn: str, store: Store, tmp_path: Path, served: list[RunningServer]
) -> None:
    """A daemon process taking Ozonetel pushes: a push is in calls within 2 s; a wrong token is
    403, a broken body 400, an unusable record 422 (kept as a reject) and the daemon carries
    on; the API key is in no table and in no line of its debug log."""
    sim = OzonetelSimulator(sim_config(seed=13, backlog=100, backlog_days=1.0))
    url = await serve(served, sim)
    port = free_port()
    config = write_config(
        tmp_path / "cdrsync.toml", dsn, [account_table(url)], http_listen=f"127.0.0.1:{port}",
        log_level="debug",
    )  # fmt: skip
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    mine = push_record("1234567890123", now - dt.timedelta(minutes=3))
    unusable = push_record("1234567890124", now, StartTime="yesterday-ish")
    stop_pushes = asyncio.Event()
    async with children(tmp_path) as kids, aiohttp.ClientSession() as http:
        child = await kids.daemon(config)
        assert await child.wait_event("http.listening", within=30), kids.tails()
        pushes = asyncio.create_task(run_pushes(sim, hook_url(port), stop_pushes))
        statuses = [
            await post_form(http, hook_url(port, "wrong"), orjson.dumps(mine).decode()),
            await post_form(http, hook_url(port), "{not json"),
            await post_form(http, hook_url(port), orjson.dumps(unusable).decode()),
            # The record as JSON text, under a form field of another name and inside plain
            # JSON: refused before it is unwrapped, its Apikey must still not be kept.
            await post_form(http, hook_url(port), orjson.dumps(unusable).decode(), field="cdr"),
            await post_json(http, hook_url(port), {"data": orjson.dumps(unusable).decode()}),
            # Multipart form data is read too (422: the record was found, and is unusable).
            await post_multipart(http, hook_url(port), orjson.dumps(unusable).decode()),
        ]
        assert await post_form(http, hook_url(port), orjson.dumps(mine).decode()) == 200
        # Stored before it is answered: in calls the moment the vendor has its 200.
        query = "SELECT count(*) FROM calls WHERE call_key = $1"
        stored_at_answer = await one(dsn, query, "1234567890123")
        await asyncio.sleep(4)  # live calls for a while (the simulator's clock is the wall's)
        assert await pushed(sim), "no push was delivered"
        sim.stop_live()
        stop_pushes.set()
        await pushes
        diff: dict[str, list[str]] = {}

        async def equal() -> bool:
            nonlocal diff
            diff = differences(truth_hashes(sim), await store.call_hashes("ozonetel", ACCOUNT))
            return diff["extra"] == ["1234567890123"] and not diff["missing"] + diff["stale"]

        assert await eventually(equal, timeout=30, interval=0.3), diff
        assert child.running, kids.tails()
        code = await child.terminate(10)
        output = child.output()
        tails = kids.tails()
    assert statuses == [403, 400, 422, 422, 422, 422], tails
    assert stored_at_answer == 1
    assert code == 0, tails
    assert sim.stats.pushes_sent > 0
    assert sim.stats.pushes_failed == 0
    assert await one(dsn, "SELECT source FROM calls WHERE call_key = '1234567890123'") == "push"
    # Four refused records, two of them the same (the form and the multipart push): kept once.
    assert await one(dsn, "SELECT count(*) FROM rejects WHERE stream = $1", f"{ACCOUNT}/push") == 3
    assert await one(dsn, "SELECT count(*) FROM lookups") > 1
    assert await secret_rows(dsn) == dict.fromkeys(
        ("calls.raw", "rejects.payload", "lookups.context"), 0
    )
    assert child.named("webhook.refused", status=403), tails
    assert child.named("webhook.stored"), tails
    leaked = [line for line in output.splitlines() if API_KEY in line or "Apikey" in line]
    assert not leaked, leaked[:3]


# ---------------------------------------------------------------------------- d. lookups


async def test_every_pushed_call_gets_a_confirming_lookup_answered_by_callbacks(
    dsn: str, store: Store, served: list[RunningServer]
) -> None:
    """Each pushed call queues one ozonetel.cdr lookup, which the CallBacks API answers (done,
    the CallBacks copy stored); only a call of yesterday asked before 03:00 IST waits for
    03:00, as Ozonetel's report rule says."""
    # Mostly visible by its push, so the first attempt finds it; a 15-minute settle keeps the
    # list stream away from these calls, so the lookup alone confirms them.
    sim = OzonetelSimulator(
        sim_config(seed=14, backlog=20, backlog_days=1.0, visible_delay_s=(0.0, 0.3),
                   push_delay_s=1.0)
    )  # fmt: skip
    url = await serve(served, sim)
    port = free_port()
    settings = oz_settings(url, dsn, port, settle="15m", lookup_delay="0s", lookup_retry="1s")
    stop_pushes = asyncio.Event()
    async with running_daemon(settings) as daemon:
        pushes = asyncio.create_task(run_pushes(sim, hook_url(port), stop_pushes))
        await asyncio.sleep(5)  # live calls for a while (the simulator's clock is the wall's)
        assert await pushed(sim), "no push was delivered"
        stop_pushes.set()
        await pushes

        async def settled() -> bool:
            # Done, or waiting for 03:00 IST: nothing due within the next minute.
            query = "SELECT count(*) FROM lookups WHERE state = 'pending' AND next_attempt_at < $1"
            soon = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)
            return await one(dsn, query, soon) == 0

        assert await eventually(settled, timeout=30)
        assert not daemon.done()
    rows = await fetch(dsn, "SELECT * FROM lookups ORDER BY call_key")
    assert sim.stats.pushes_sent > 0
    assert len(rows) == sim.stats.pushes_sent
    assert {r["kind"] for r in rows} == {"ozonetel.cdr"}
    legs = {leg.ucid: leg for leg in sim.legs()}
    stored = await store.call_hashes("ozonetel", ACCOUNT)
    sources = {r["call_key"]: r["source"] for r in await fetch(dsn, "SELECT * FROM calls")}
    done = [r for r in rows if r["state"] == "done"]
    for row in done:
        assert row["attempts"] >= 1, dict(row)  # "No Data Found" first: asked again 1 s later
        assert row["last_error"] is None, dict(row)
        record = callback_record(legs[row["call_key"]], sim.config)
        assert sources[row["call_key"]] == "lookup"
        assert stored[row["call_key"]] == digest(
            orjson.dumps(scrub(record), option=orjson.OPT_SORT_KEYS)
        )
    for row in rows:
        if row["state"] == "done":
            continue
        asked = row["updated_at"].astimezone(IST)
        started = dt.datetime.fromisoformat(orjson.loads(row["context"])["started_at"])
        three = dt.datetime.combine(asked.date(), dt.time(3), IST)
        assert row["state"] == "pending", dict(row)
        assert started.astimezone(IST).date() < asked.date(), dict(row)
        assert (row["attempts"], row["next_attempt_at"]) == (0, three), dict(row)
    assert sum(r["attempts"] for r in rows) == sim.stats.requests.get("callbacks", 0)
    assert done or dt.datetime.now(IST).time() < dt.time(0, 15), "no lookup was answered"


# ---------------------------------------------------------------------------- e. midnight


class ShiftedClock:
    """Real time running from a chosen instant: the daemon and the simulator share it."""

    def __init__(self, start: dt.datetime) -> None:
        self.offset = start.timestamp() - time.time()

    def __call__(self) -> float:
        """Epoch seconds now (the simulator's clock)."""
        return time.time() + self.offset

    def utc(self) -> dt.datetime:
        """Now as an aware UTC datetime (the daemon's clock)."""
        return dt.datetime.fromtimestamp(self(), dt.UTC)


@contextlib.asynccontextmanager
async def daemon_at(settings: Settings, clock: ShiftedClock) -> AsyncIterator[asyncio.Task[None]]:
    """The daemon as a task of this loop, its streams on ``clock``; stopped on exit."""
    stop = asyncio.Event()
    task = asyncio.create_task(app.run(settings, stop=stop, clock=clock.utc), name="daemon")
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=15)


async def test_a_call_begun_before_ist_midnight_is_not_lost_by_a_first_start_just_after_it(
    dsn: str, store: Store, served: list[RunningServer]
) -> None:
    """A first start at 00:02 IST, while calls that began before midnight are still ending:
    once they are listed they are in calls (the day before is not read once and for all)."""
    midnight = dt.datetime(2026, 11, 20, tzinfo=IST)
    clock = ShiftedClock(midnight + dt.timedelta(minutes=2))
    sim = OzonetelSimulator(sim_config(seed=15, backlog=50, backlog_days=1.0), now=clock)
    url = await serve(served, sim)
    settings = oz_settings(url, dsn, start="2026-11-17")
    async with daemon_at(settings, clock) as daemon:
        await asyncio.sleep(4)
        sim.stop_live()
        diff = await converged(store, sim, timeout=40)
        assert not daemon.done()
    began_before = [leg.ucid for leg in sim.legs() if leg.live and leg.start < midnight.timestamp()]
    assert began_before, "no live call began before midnight: the test proves nothing"
    assert diff == {"missing": [], "extra": [], "stale": []}


async def test_a_restart_before_the_live_stream_ever_committed_skips_no_day(
    dsn: str, store: Store, served: list[RunningServer]
) -> None:
    """A first start on the 17th split the account there (backlog before, live after), and its
    live stream never committed (wrong credentials, say). Restarted on the 20th, the live
    stream starts at that split again, not at the 20th: the 17th to the 19th are not skipped."""
    clock = ShiftedClock(dt.datetime(2026, 11, 20, 12, 0, tzinfo=IST))
    sim = OzonetelSimulator(sim_config(seed=16, backlog=120, backlog_days=3.0), now=clock)
    url = await serve(served, sim)
    split = dt.datetime(2026, 11, 17, tzinfo=IST).astimezone(dt.UTC)
    await store.ensure_stream(
        HISTORY, vendor="ozonetel", account=ACCOUNT, kind=f"history:..{split.isoformat()}"
    )
    settings = oz_settings(url, dsn, start="2026-11-16")
    async with daemon_at(settings, clock) as daemon:
        await asyncio.sleep(2)
        sim.stop_live()
        diff = await converged(store, sim, timeout=30)
        assert not daemon.done()
    assert diff == {"missing": [], "extra": [], "stale": []}
