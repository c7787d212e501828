"""VCC Live end to end: the daemon (day stream, webhook receiver, lookups, outbox) against the
VCC Live simulator over HTTP on 127.0.0.1 and real PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from cdrsync.app import daemon as app
from cdrsync.engine.lookup import LookupStream
from cdrsync.engine.outbox import OutboxStream
from cdrsync.http.transport import Transport
from cdrsync.model import LookupRequest
from cdrsync.simulator.server import RunningServer
from cdrsync.simulator.vcclive import VccSimConfig, VccSimulator
from cdrsync.simulator.vcclive_server import run_webhooks, start_vcclive_server
from cdrsync.store.store import Store
from cdrsync.vendors.acefone import digest
from cdrsync.vendors.vcclive import VccLookups, VccOutbox
from support import differences, eventually, running_daemon, sql_value
from vcclive_support import ACCOUNT, SECRET, free_port, vcc_settings


def truth_hashes(sim: VccSimulator) -> dict[str, bytes]:
    return {
        key: digest(orjson.dumps(row, option=orjson.OPT_SORT_KEYS))
        for key, row in sim.truth().items()
    }


@pytest.fixture
async def served() -> AsyncIterator[list[RunningServer]]:
    servers: list[RunningServer] = []
    yield servers
    for server in servers:
        await server.close()


async def test_days_webhooks_and_lookups_end_equal_to_the_vendor(
    dsn: str, store: Store, served: list[RunningServer]
) -> None:
    """Backlog plus live calls, with disposition webhooks arriving: the calls table ends equal
    to the simulator (every uuid once, the list's copy), and pushed calls were stored."""
    sim = VccSimulator(
        VccSimConfig(
            seed=5,
            backlog=250,
            backlog_days=2.5,
            live_per_minute=120,
            processing_delay_s=(0.5, 2.0),
            dispose_delay_s=(0.1, 0.5),
            max_page_size=60,
        )
    )
    server = await start_vcclive_server(sim)
    served.append(server)
    port = free_port()
    settings = vcc_settings(server.base_url, dsn, port)
    hooks_stop = asyncio.Event()
    async with running_daemon(settings) as daemon:
        hooks = asyncio.create_task(
            run_webhooks(sim, f"http://127.0.0.1:{port}/hooks/{ACCOUNT}?token={SECRET}", hooks_stop)
        )
        await asyncio.sleep(6)
        sim.stop_live()
        diff: dict[str, list[str]] = {}

        async def equal() -> bool:
            nonlocal diff
            diff = differences(truth_hashes(sim), await store.call_hashes("vcclive", ACCOUNT))
            return not any(diff.values()) and time.time() > sim.last_visible_time()

        assert await eventually(equal, timeout=40), diff
        hooks_stop.set()
        await hooks
        assert not daemon.done()
    assert sim.stats.webhooks_sent > 5
    assert sim.stats.webhooks_failed == 0
    assert await sql_value(dsn, "SELECT count(*) FROM calls WHERE source <> 'list'") == 0
    pushes = await sql_value(dsn, "SELECT rows_inserted FROM sync_state WHERE stream = $1",
                             f"{ACCOUNT}/push")  # fmt: skip
    assert pushes > 0  # some webhooks arrived before the day stream listed their call


async def test_a_push_is_visible_at_once_and_bad_pushes_are_refused(
    dsn: str, store: Store, served: list[RunningServer]
) -> None:
    """A disposition webhook is in calls once it is answered; a wrong token, a broken body and
    an unknown account get 4xx, and the daemon carries on."""
    sim = VccSimulator(VccSimConfig(seed=6, backlog=5, live_per_minute=0))
    server = await start_vcclive_server(sim)
    served.append(server)
    port = free_port()
    base = f"http://127.0.0.1:{port}/hooks"
    payload = {"uuid": "push-only-1", "direction": "in", "source": "3612345678",
               "destination": "3698765432", "call_start_time": "2026-11-23 10:00:00",
               "projectid": 3, "numberid": 9, "userid": 6, "username": "agent6"}  # fmt: skip
    async with running_daemon(vcc_settings(server.base_url, dsn, port)) as daemon:
        async with aiohttp.ClientSession() as http:
            await _ready(http, port)
            refused = []
            for url, body in (
                (f"{base}/{ACCOUNT}?token=wrong", orjson.dumps(payload)),
                (f"{base}/{ACCOUNT}", orjson.dumps(payload)),
                (f"{base}/{ACCOUNT}?token={SECRET}", b"{not json"),
                (f"{base}/{ACCOUNT}?token={SECRET}", b'{"no": "uuid"}'),
                (f"{base}/nobody?token={SECRET}", orjson.dumps(payload)),
                (f"{base}/{ACCOUNT}?token={SECRET}", io.BytesIO(b"x" * (2 * 1024 * 1024))),
            ):
                async with http.post(url, data=body) as resp:
                    refused.append(resp.status)
            assert refused == [403, 403, 400, 422, 404, 413]
            async with http.post(f"{base}/{ACCOUNT}?token={SECRET}", data=orjson.dumps(payload),
                                 headers={"Content-Type": "application/json"}) as resp:  # fmt: skip
                assert resp.status == 200
            # Stored before it is answered: in calls the moment the vendor has its 200 (a
            # bound on the request's wall time would measure the machine, not the daemon).
            source = await sql_value(dsn, "SELECT source FROM calls WHERE call_key = 'push-only-1'")
        assert source == "push"
        assert await sql_value(dsn, "SELECT count(*) FROM rejects WHERE stream = $1",
                               f"{ACCOUNT}/push") == 1  # fmt: skip
        assert not daemon.done()


async def _ready(http: aiohttp.ClientSession, port: int) -> None:
    async def up() -> bool:
        try:
            async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                return resp.status == 200
        except aiohttp.ClientError:
            return False

    assert await eventually(up, timeout=20)


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def utc(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.t, dt.UTC)


async def test_cdr_lookups_follow_the_five_minute_schedule_and_give_up_after_20(
    dsn: str, store: Store
) -> None:
    """A webhook's CDR is asked 5 minutes later, then every 5 minutes (404 meanwhile) until it
    is processed; one never processed is asked exactly 20 times, then given up."""
    t0 = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC).timestamp()
    clock = Clock(t0)
    sim = VccSimulator(VccSimConfig(seed=8, backlog=0, live_per_minute=0), now=clock, t0=t0)
    server = await start_vcclive_server(sim)
    try:
        settings = vcc_settings(server.base_url, dsn, 0, lookup_delay="5m", lookup_interval="5m")
        account = settings.accounts[0]
        async with Transport.open() as transport:
            from cdrsync.app.streams import limiters_for

            limiters = limiters_for(account)
            name = f"{ACCOUNT}/lookup"
            source = VccLookups(account, transport, limiters, name)
            stream = LookupStream(name=name, account=account, source=source, store=store,
                                  locks=store.lock_session(), stop=asyncio.Event(),
                                  clock=clock.utc)  # fmt: skip
            late = dt.datetime(2026, 11, 23, 11, 58, tzinfo=dt.UTC)
            queued = [LookupRequest("vcclive.cdr", u, {"year": 2026, "month": 11},
                                    clock.utc() + dt.timedelta(minutes=5))
                      for u in ("never-processed",)]  # fmt: skip
            await store.queues.enqueue("vcclive", ACCOUNT, queued, now=clock.utc())
            for _ in range(24 * 5):  # two hours in one-minute steps
                await stream.cycle()
                clock.t += 60
            times = sim.stats.lookup_times["never-processed"]
            assert len(times) == 20
            assert [round((t - t0) / 60) for t in times] == list(range(5, 105, 5))
            state = await sql_value(
                dsn,
                "SELECT state || ':' || attempts FROM lookups WHERE call_key = $1",
                "never-processed",
            )
            assert state == "gave_up:20"
            assert late < clock.utc()
    finally:
        await server.close()


async def _insert_outbox(dsn: str, rows: list[dict[str, Any]], projectid: int = 3) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn, server_settings={"search_path": "cdrsync"})
    try:
        for payload in rows:
            await conn.execute(
                "INSERT INTO vcclive_outbox (account, projectid, payload) VALUES ($1, $2, $3)",
                ACCOUNT, projectid, orjson.dumps(payload).decode(),
            )  # fmt: skip
    finally:
        await conn.close()


async def test_outbox_rows_are_delivered_once_across_a_crash_mid_batch(
    dsn: str, store: Store
) -> None:
    """Rows whose request reached VCC Live before a crash, rows whose request never left, and
    rows whose answer was lost are each in VCC Live exactly once, with their numberid."""
    sim = VccSimulator(VccSimConfig(seed=9, backlog=0, live_per_minute=0))
    server = await start_vcclive_server(sim)
    try:
        settings = vcc_settings(server.base_url, dsn, 0, outbox_batch=4)
        account = settings.accounts[0]
        rows = [{"form": {"name": f"lead {i}", "city": "Budapest"}} for i in range(12)]
        await _insert_outbox(dsn, rows)
        async with Transport.open() as transport:
            from cdrsync.app.streams import limiters_for

            limiters = limiters_for(account)
            sink = VccOutbox(account, transport, limiters, f"{ACCOUNT}/outbox")
            now = dt.datetime.now(dt.UTC)
            # A process claimed two batches and died: the first after its request reached
            # VCC Live (the answer never written back), the second before sending anything.
            first = await store.queues.outbox_claim(ACCOUNT, now=now, limit=4, batch="dead-1")
            await sink.add_records(3, [r.payload for r in first])
            await store.queues.outbox_claim(ACCOUNT, now=now, limit=4, batch="dead-2")
            # The next answer is lost after VCC Live stored the records (a 503 afterwards).
            sim.set_faults(add_fault_next=1)

            later = [now]

            def stream() -> OutboxStream:
                return OutboxStream(name=f"{ACCOUNT}/outbox", account=account, sink=sink,
                                    store=store, locks=store.lock_session(),
                                    stop=asyncio.Event(), clock=lambda: later[0])  # fmt: skip

            for _ in range(2):
                await stream().cycle()  # a fresh process each time: it recovers first
                later[0] += dt.timedelta(minutes=10)  # past the request timeout, any backoff
            last = stream()  # it keeps its scan's place from cycle to cycle
            for _ in range(40):
                await last.cycle()
                later[0] += dt.timedelta(minutes=10)
                states = await store.queues.outbox_rows(ACCOUNT)
                if all(r["state"] == "delivered" for r in states):
                    break
        added = [payload for _, _, payload in sim.added_records()]
        assert sorted(p["form"]["name"] for p in added) == sorted(r["form"]["name"] for r in rows)
        delivered = await sql_value(
            dsn,
            "SELECT count(*) FROM vcclive_outbox WHERE state = 'delivered' "
            "AND numberid IS NOT NULL",
        )
        assert delivered == 12
        numberids = {n: p["form"]["name"] for _, n, p in sim.added_records()}
        import asyncpg

        conn = await asyncpg.connect(dsn, server_settings={"search_path": "cdrsync"})
        try:
            stored = await conn.fetch("SELECT numberid, payload FROM vcclive_outbox")
        finally:
            await conn.close()
        for row in stored:
            assert numberids[row["numberid"]] == orjson.loads(row["payload"])["form"]["name"]
    finally:
        await server.close()


async def test_a_refused_outbox_row_keeps_its_error_and_the_others_are_delivered(
    dsn: str, store: Store
) -> None:
    """A row VCC Live refuses fails alone with the vendor's error; the batch's others land."""
    sim = VccSimulator(VccSimConfig(seed=10, backlog=0, live_per_minute=0))
    server = await start_vcclive_server(sim)
    try:
        settings = vcc_settings(server.base_url, dsn, 0)
        account = settings.accounts[0]
        await _insert_outbox(dsn, [{"form": {"name": "ok 1"}}, {"no_form": True},
                                   {"form": {"name": "ok 2"}}])  # fmt: skip
        async with Transport.open() as transport:
            from cdrsync.app.streams import limiters_for

            sink = VccOutbox(account, transport, limiters_for(account), f"{ACCOUNT}/outbox")
            stream = OutboxStream(name=f"{ACCOUNT}/outbox", account=account, sink=sink,
                                  store=store, locks=store.lock_session(),
                                  stop=asyncio.Event())  # fmt: skip
            await stream.cycle()
            await stream.cycle()
        assert sorted(p["form"]["name"] for _, _, p in sim.added_records()) == ["ok 1", "ok 2"]
        failed = await sql_value(
            dsn,
            "SELECT state || ' ' || (error IS NOT NULL) FROM vcclive_outbox "
            "WHERE payload ? 'no_form'",
        )
        assert failed == "failed true"
    finally:
        await server.close()


async def _push_for(http: aiohttp.ClientSession, port: int, seconds: float, tag: str) -> list[Any]:
    """Post disposition webhooks (new uuids) for ``seconds``; their HTTP statuses (or the
    connection error once the server has closed)."""
    statuses: list[Any] = []
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        body = {
            "uuid": f"{tag}-{len(statuses)}", "direction": "in", "source": "3612345678",
            "call_start_time": "2026-11-23 10:00:00", "projectid": 3, "numberid": 9,
        }  # fmt: skip
        try:
            async with http.post(f"http://127.0.0.1:{port}/hooks/{ACCOUNT}?token={SECRET}",
                                 json=body) as resp:  # fmt: skip
                statuses.append(resp.status)
        except aiohttp.ClientConnectionError:
            statuses.append("closed")
            break
        await asyncio.sleep(0.05)
    return statuses


async def test_pushes_are_stored_while_the_account_restarts_and_while_the_daemon_drains(
    dsn: str, store: Store, served: list[RunningServer]
) -> None:
    """A reload that restarts the account, and a shutdown, wait for the batch in hand (here
    a slow Add record); pushes arriving meanwhile are stored, not refused with 404 (a vendor
    does not send a refused push again)."""
    sim = VccSimulator(VccSimConfig(seed=8, backlog=5, live_per_minute=0, add_delay_s=2.5))
    server = await start_vcclive_server(sim)
    served.append(server)
    port = free_port()
    await store.migrate()
    project = sim.config.projects[0]

    async def sending() -> bool:
        query = "SELECT count(*) FROM vcclive_outbox WHERE state = 'sending'"
        return bool(await sql_value(dsn, query))

    changed = vcc_settings(server.base_url, dsn, port, poll_interval="400ms")
    stop, reload = asyncio.Event(), asyncio.Event()
    daemon = asyncio.create_task(app.run(
        vcc_settings(server.base_url, dsn, port), stop=stop, reload=reload,
        reloader=lambda: changed,
    ))  # fmt: skip
    try:
        async with aiohttp.ClientSession() as http:
            await _ready(http, port)
            await store.queues.outbox_add(ACCOUNT, project, [{"form": {"name": "slow one"}}])
            assert await eventually(sending, timeout=10)
            reload.set()
            during_restart = await _push_for(http, port, 1.0, "restart")
            await store.queues.outbox_add(ACCOUNT, project, [{"form": {"name": "slow two"}}])
            assert await eventually(sending, timeout=10)
            stop.set()
            during_drain = await _push_for(http, port, 1.0, "drain")
        await asyncio.wait_for(daemon, timeout=15)
    finally:
        stop.set()
        if not daemon.done():
            daemon.cancel()
    assert during_restart and set(during_restart) == {200}, during_restart
    assert during_drain and set(during_drain) <= {200, "closed"}, during_drain
    assert during_drain[0] == 200
    stored = await sql_value(dsn, "SELECT count(*) FROM calls WHERE source = 'push'")
    assert stored == during_restart.count(200) + during_drain.count(200)


@pytest.mark.parametrize("start_time", [True, False])
@pytest.mark.parametrize("not_yet", ["404", "empty", "error200"])
async def test_webhook_lookups_at_a_months_end_end_equal_to_the_vendor(
    dsn: str, store: Store, not_yet: str, start_time: bool
) -> None:
    """Calls around midnight at a month's end, known only from their webhooks: whether VCC says
    "not yet" as a 404, an empty response or a 200 with an error, and whether the webhook
    carries the call's start, every CDR is fetched and calls ends equal to the vendor."""
    from cdrsync.app.streams import limiters_for
    from cdrsync.simulator.vcclive_server import due_webhooks
    from cdrsync.vendors.vcclive import parse_push

    t0 = dt.datetime(2026, 11, 30, 22, 45, tzinfo=dt.UTC).timestamp()  # 23:45 in Budapest
    clock = Clock(t0)
    config = VccSimConfig(
        seed=8, backlog=0, live_per_minute=3, webhook_fraction=1.0,
        processing_delay_s=(200.0, 900.0), dispose_delay_s=(60.0, 600.0),
        not_yet=not_yet, webhook_start_time=start_time,  # type: ignore[arg-type]
    )  # fmt: skip
    sim = VccSimulator(config, now=clock, t0=t0)
    server = await start_vcclive_server(sim)
    try:
        # Record lookups off: they bring other calls of the same record, which the list
        # would confirm; this test is about the CDR lookup alone.
        settings = vcc_settings(
            server.base_url, dsn, 0, lookup_delay="5m", lookup_interval="5m", record_details=False
        )
        account = settings.accounts[0]
        async with Transport.open() as transport:
            name = f"{ACCOUNT}/lookup"
            source = VccLookups(account, transport, limiters_for(account), name)
            stream = LookupStream(name=name, account=account, source=source, store=store,
                                  locks=store.lock_session(), stop=asyncio.Event(),
                                  clock=clock.utc)  # fmt: skip
            for minute in range(150):
                if minute == 30:
                    sim.stop_live()  # calls from 23:45 to 00:15
                for uuid, payload in due_webhooks(sim, clock.t):
                    pushed = parse_push(payload, account=account, received_at=clock.utc())
                    await store.queues.write_push(
                        f"{ACCOUNT}/push", pushed.records, pushed.rejects, pushed.lookups,
                        vendor="vcclive", account=ACCOUNT, now=clock.utc(),
                    )  # fmt: skip
                    sim.hooks_done.add(uuid)
                await stream.cycle()
                clock.t += 60
    finally:
        await server.close()
    # Calls no agent disposed (unanswered inbound) have no webhook: only the list finds them.
    disposed = [c for c in sim.calls() if c.dispose_at < math.inf]
    zone = sim.zone
    crossing = [
        c for c in disposed
        if dt.datetime.fromtimestamp(c.start, zone).month == 11
        and dt.datetime.fromtimestamp(c.dispose_at, zone).month == 12
    ]  # fmt: skip
    assert crossing, "no call started in November and was disposed in December"
    assert sim.hooks_done == {c.uuid for c in disposed}
    assert sim.stats.cdr_404 > 0  # "not yet" was answered, in the shape under test
    truth = {u: h for u, h in truth_hashes(sim).items() if u in sim.hooks_done}
    stored = await store.call_hashes("vcclive", ACCOUNT)
    assert len(truth) == len(disposed)
    assert differences(truth, stored) == {"missing": [], "extra": [], "stale": []}
    assert await sql_value(dsn, "SELECT count(*) FROM lookups WHERE state <> 'done'") == 0
