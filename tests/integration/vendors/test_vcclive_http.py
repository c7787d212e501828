"""VCC Live clients against the simulator over real HTTP on 127.0.0.1 (real Transport, limiters).

The simulator runs on a hand-driven clock, so "the CDR is processed five minutes later" is a
clock step, not a sleep.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest
from aiohttp import web

from cdrsync.config import AccountSettings
from cdrsync.engine.lookup import on_error
from cdrsync.errors import (
    AuthError,
    CdrsyncError,
    PermanentError,
    PermissionRefused,
    RateLimited,
    TransientError,
)
from cdrsync.http.limiter import LimiterSet
from cdrsync.http.transport import Response, RetryPolicy, Transport
from cdrsync.model import LookupItem
from cdrsync.simulator.server import RunningServer, serve_app
from cdrsync.simulator.vcclive import VccSimConfig, VccSimulator, local_day
from cdrsync.simulator.vcclive_server import run_webhooks, start_vcclive_server
from cdrsync.vendors.vcclive import (
    VccDaySource,
    VccLookups,
    VccOutbox,
    parse_add_result,
    parse_push,
    records_path,
)
from support import one_account

T0 = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC).timestamp()
FAST = RetryPolicy(attempts=2, timeout_s=10.0, wait_initial_s=0.01, wait_max_s=0.05)


class Clock:
    """A hand-driven clock in epoch seconds."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def utc(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.t, dt.UTC)


@dataclass
class Vcc:
    """A simulator on a socket, and an account of it with its transport and limiters."""

    sim: VccSimulator
    clock: Clock
    server: RunningServer
    transport: Transport

    def account(self, **extra: Any) -> AccountSettings:
        acc = {
            "name": "cc-hu", "vendor": "vcclive", "base_url": self.server.base_url,
            "username": "sim-cc", "api_key": "sim-vcc-token", "start": "2026-11-01",
            "page_size": 37, "retry_attempts": 1,
            "rate_limits": {"list": "100000/min", "lookup": "100000/min",
                            "records": "100000/min"},
            **extra,
        }  # fmt: skip
        return one_account(acc)

    def client(self, kind: type[Any], **extra: Any) -> Any:
        account = self.account(**extra)
        limiters = LimiterSet(account.name, account.rate_limits, margin=0.0)
        return kind(account, self.transport, limiters, f"{account.name}/test")


@pytest.fixture
async def vcc() -> AsyncIterator[Vcc]:
    """A simulated call centre with two days of backlog, on a free port."""
    clock = Clock(T0)
    sim = VccSimulator(
        VccSimConfig(backlog=600, backlog_days=2.0, live_per_minute=6, max_page_size=100),
        now=clock,
        t0=T0,
    )
    server = await start_vcclive_server(sim)
    async with Transport.open(request_timeout_s=5.0, policy=FAST) as transport:
        yield Vcc(sim, clock, server, transport)
    await server.close()


def cdr_item(call_uuid: str, start: float, attempts: int, created_at: dt.datetime) -> LookupItem:
    """A queued CDR lookup as a push would have queued it (month of the local start)."""
    local = dt.datetime.fromtimestamp(start, ZoneInfo("Europe/Budapest"))
    return LookupItem(
        id=1, vendor="vcclive", account="cc-hu", kind="vcclive.cdr", call_key=call_uuid,
        context={"year": local.year, "month": local.month}, attempts=attempts,
        created_at=created_at, next_attempt_at=created_at,
    )  # fmt: skip


async def test_pages_of_a_day_add_up_to_its_truth(vcc: Vcc) -> None:
    """Reading a local day page by page (start/num) yields exactly the day's processed CDRs."""
    vcc.clock.t = T0 + 1800
    source: VccDaySource = vcc.client(VccDaySource)
    truth = vcc.sim.truth()
    for day in sorted({local_day(c.start, vcc.sim.zone) for c in vcc.sim.calls()}):
        keys: list[str] = []
        while True:
            page = await source.fetch_day(day, len(keys), source.page_size)
            assert page.rejects == ()
            assert {r.local_date for r in page.records} <= {day}
            keys += page.keys
            if len(keys) >= page.total or not page.keys:
                break
        expected = {u for u, row in truth.items() if row["start_ts"].startswith(day.isoformat())}
        assert len(keys) == len(set(keys)) == page.total
        assert set(keys) == expected
    assert await source.count_day(day) == page.total


async def test_num_is_capped_by_the_vendor(vcc: Vcc) -> None:
    """Asking for more rows than the cap returns a capped page; totalCount is the whole day."""
    source: VccDaySource = vcc.client(VccDaySource)
    day = max(
        {local_day(c.start, vcc.sim.zone) for c in vcc.sim.calls()},
        key=lambda d: sum(1 for c in vcc.sim.calls() if local_day(c.start, vcc.sim.zone) == d),
    )
    page = await source.fetch_day(day, 0, 1000)
    assert page.size == 100 < page.total


async def test_cdr_lookup_is_404_then_found(vcc: Vcc) -> None:
    """Before processing the lookup retries 5 minutes later (a normal 404); after, it is done."""
    lookups: VccLookups = vcc.client(VccLookups)
    vcc.clock.t = T0 + 600
    call = next(c for c in vcc.sim.calls() if c.processed_at > vcc.clock.t)
    created = vcc.clock.utc() - dt.timedelta(minutes=5)
    first = await lookups.perform(cdr_item(call.uuid, call.start, 0, created), vcc.clock.utc())
    assert (first.state, first.counted, first.note) == (
        "retry", True, "CDR not processed yet (404)"
    )  # fmt: skip
    assert first.next_attempt_at == vcc.clock.utc() + dt.timedelta(minutes=5)
    vcc.clock.t = max(call.processed_at, first.next_attempt_at.timestamp())
    done = await lookups.perform(cdr_item(call.uuid, call.start, 1, created), vcc.clock.utc())
    assert done.state == "done"
    (record,) = done.records
    assert (record.call_key, record.source) == (call.uuid, "lookup")
    assert vcc.sim.stats.lookup_times[call.uuid] == [T0 + 600, vcc.clock.t]
    assert vcc.sim.stats.cdr_404 == 1


async def test_a_refusal_in_the_wrong_month_does_not_end_a_two_month_lookup(
    vcc: Vcc, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Asked in two months (a push near a month's start without the call's start time), a
    refusal of the month the call is not in still lets the other month find it."""
    lookups: VccLookups = vcc.client(VccLookups)
    vcc.clock.t = T0 + 7200
    call = next(c for c in vcc.sim.calls() if c.processed_at <= vcc.clock.t)
    local = dt.datetime.fromtimestamp(call.start, ZoneInfo("Europe/Budapest"))
    wrong = (local.year + 1, local.month)  # a month VCC refuses (the fault below)
    real = lookups._get_cdr

    async def refusing(year: int, month: int, uuid: str) -> Any:
        if (year, month) == wrong:  # fault injection: the wrong month is refused
            raise PermanentError("VCC Live called the request malformed")
        return await real(year, month, uuid)

    monkeypatch.setattr(lookups, "_get_cdr", refusing)
    created = vcc.clock.utc() - dt.timedelta(minutes=5)
    item = dataclasses.replace(
        cdr_item(call.uuid, call.start, 0, created),
        context={"months": [list(wrong), [local.year, local.month]]},
    )
    done = await lookups.perform(item, vcc.clock.utc())
    assert done.state == "done"
    assert [r.call_key for r in done.records] == [call.uuid]
    only_wrong = dataclasses.replace(item, context={"months": [list(wrong)]})
    with pytest.raises(PermanentError, match="malformed"):
        await lookups.perform(only_wrong, vcc.clock.utc())


async def test_a_permission_refusal_in_either_month_is_raised_at_once(
    vcc: Vcc, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 403 "permission denied" in the first of two months asked is the token's, not the
    month's: it reaches the lookup stream (which holds the account's lookups) without asking
    the other month, and is never taken for "not yet"."""
    lookups: VccLookups = vcc.client(VccLookups)
    vcc.clock.t = T0 + 7200
    call = next(c for c in vcc.sim.calls() if c.processed_at <= vcc.clock.t)
    local = dt.datetime.fromtimestamp(call.start, ZoneInfo("Europe/Budapest"))
    asked: list[tuple[int, int]] = []

    async def denying(year: int, month: int, uuid: str) -> Any:
        asked.append((year, month))  # fault injection: the token lacks the permission
        raise PermissionRefused("VCC Live refused the token: permission denied", hold_s=900)

    monkeypatch.setattr(lookups, "_get_cdr", denying)
    created = vcc.clock.utc() - dt.timedelta(minutes=5)
    item = dataclasses.replace(
        cdr_item(call.uuid, call.start, 0, created),
        context={"months": [[local.year, local.month], [local.year + 1, local.month]]},
    )
    with pytest.raises(PermissionRefused):
        await lookups.perform(item, vcc.clock.utc())
    assert asked == [(local.year, local.month)]


async def test_cdr_lookup_gives_up_after_the_last_attempt(vcc: Vcc) -> None:
    """A 404 on the 20th attempt ends the lookup (VCC's advice: 20 attempts in all)."""
    lookups: VccLookups = vcc.client(VccLookups)
    created = vcc.clock.utc() - dt.timedelta(hours=3)
    outcome = await lookups.perform(cdr_item("no-such-call", T0, 19, created), vcc.clock.utc())
    assert (outcome.state, outcome.counted) == ("gave_up", True)
    assert outcome.note == "no CDR after 20 attempts"


async def test_record_lookup_returns_its_events(vcc: Vcc) -> None:
    """A record lookup brings the record's disposition events and its CDRs."""
    vcc.clock.t = T0 + 3600
    call = next(c for c in vcc.sim.calls() if T0 < c.dispose_at < vcc.clock.t - 300)
    lookups: VccLookups = vcc.client(VccLookups)
    item = LookupItem(
        id=2, vendor="vcclive", account="cc-hu", kind="vcclive.record",
        call_key=f"{call.projectid}/{call.numberid}/{call.uuid}",
        context={"projectid": call.projectid, "numberid": call.numberid}, attempts=0,
        created_at=vcc.clock.utc(), next_attempt_at=vcc.clock.utc(),
    )  # fmt: skip
    outcome = await lookups.perform(item, vcc.clock.utc())
    assert outcome.state == "done"
    assert call.uuid in {e.call_uuid for e in outcome.events}
    assert len(outcome.events) == len(vcc.sim.events_of(call.projectid, call.numberid))
    assert call.uuid in {r.call_key for r in outcome.records}
    # No context: the ids come from the key "projectid/numberid/uuid".
    missing = dataclasses.replace(item, call_key="3/999999/u-1", context={})
    retry = await lookups.perform(missing, vcc.clock.utc())
    assert (retry.state, retry.note) == ("retry", "record not found yet (404)")


async def test_add_records_delivers_each_payload_once(vcc: Vcc) -> None:
    """Add record returns numberids in order; the simulator holds each payload once."""
    outbox: VccOutbox = vcc.client(VccOutbox)
    payloads = [{"form": {"name": f"Customer {i}", "city": "Budapest"}} for i in range(3)]
    ids = await outbox.add_records(134, payloads)
    assert ids == [201, 202, 203]
    assert vcc.sim.added_records() == [(134, n, p) for n, p in zip(ids, payloads, strict=True)]
    data = await outbox.record_data(134, 202)
    assert data == payloads[1]["form"]
    assert await outbox.record_data(134, 999) is None
    assert await outbox.add_records(134, []) == []


async def test_vendor_refusal_names_its_errors(vcc: Vcc) -> None:
    """A record without form is refused under HTTP 200 with errors: a PermanentError saying so."""
    outbox: VccOutbox = vcc.client(VccOutbox)
    account = outbox._account
    auth = base64.b64encode(b"sim-cc:sim-vcc-token").decode()

    def parse_result(response: Response) -> list[int]:
        assert response.status == 200
        return parse_add_result(response.body, 1)

    with pytest.raises(PermanentError, match="form is required"):
        await vcc.transport.request(
            "POST", f"{account.base_url}{records_path(3)}",
            limiter=outbox._limiters["records"], endpoint="test.add", parse=parse_result,
            headers={"Authorization": f"Basic {auth}"}, json_body=b'[{"contacts": {}}]',
        )  # fmt: skip
    assert vcc.sim.added_records() == []


async def test_lost_add_answer_is_not_retried(vcc: Vcc) -> None:
    """A 5xx after the records were stored surfaces as TransientError after ONE request."""
    vcc.sim.set_faults(add_fault_next=1)
    outbox: VccOutbox = vcc.client(VccOutbox, retry_attempts=5)
    with pytest.raises(TransientError):
        await outbox.add_records(3, [{"form": {"name": "Once"}}])
    assert vcc.sim.stats.requests["add_record"] == 1
    assert [payload for _, _, payload in vcc.sim.added_records()] == [{"form": {"name": "Once"}}]


async def test_wrong_credentials_are_an_auth_error(vcc: Vcc) -> None:
    """A wrong API token is rejected with 401: AuthError, not retried, token not in the text."""
    source: VccDaySource = vcc.client(VccDaySource, api_key="wrong-token-123", retry_attempts=3)
    with pytest.raises(AuthError) as info:
        await source.fetch_day(dt.date(2026, 11, 22), 0, 10)
    assert "wrong-token-123" not in str(info.value)
    assert vcc.sim.stats.responses == {401: 1}


async def test_bodies_are_text_plain_and_still_parse(vcc: Vcc) -> None:
    """The simulator serves JSON as text/plain like VCC; the client parses it anyway."""
    auth = base64.b64encode(b"sim-cc:sim-vcc-token").decode()
    source: VccDaySource = vcc.client(VccDaySource)

    def content_type(response: Response) -> str:
        return response.headers["Content-Type"]

    kind = await vcc.transport.request(
        "GET", f"{vcc.server.base_url}/v2/cdrs/2026/11/22",
        limiter=source._limiters["list"], endpoint="test.cdrs", parse=content_type,
        headers={"Authorization": f"Basic {auth}"},
    )  # fmt: skip
    assert kind == "text/plain; charset=utf-8"
    page = await source.fetch_day(dt.date(2026, 11, 22), 0, 5)
    assert page.size == 5 and page.total > 5


async def test_rate_limit_answers_429(vcc: Vcc) -> None:
    """Over the simulated limit the vendor answers 429 with Retry-After: RateLimited."""
    vcc.sim.set_faults(rate_list=(1, 60.0))
    source: VccDaySource = vcc.client(VccDaySource)
    await source.fetch_day(dt.date(2026, 11, 22), 0, 5)
    with pytest.raises(RateLimited) as info:
        await source.fetch_day(dt.date(2026, 11, 22), 5, 5)
    assert info.value.retry_after == 60.0
    assert vcc.sim.stats.rate_limited == 1


async def test_webhooks_reach_the_receiver(vcc: Vcc) -> None:
    """Disposition webhooks are posted as JSON, a failed one is retried, each counted once."""
    received: list[dict[str, Any]] = []
    failed_once: set[str] = set()

    async def hook(request: web.Request) -> web.Response:
        assert request.query["token"] == "s3cret"
        doc = orjson.loads(await request.read())
        if not failed_once:
            failed_once.add(doc["uuid"])
            return web.Response(status=500)
        received.append(doc)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hooks/cc-hu", hook)
    receiver = await serve_app(app)
    vcc.clock.t = T0 + 1800
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_webhooks(vcc.sim, f"{receiver.base_url}/hooks/cc-hu?token=s3cret", stop)
    )
    try:
        async with asyncio.timeout(30):
            while not (vcc.sim.stats.webhooks_sent and len(received) == vcc.sim.stats.webhooks_sent
                       and len(vcc.sim.hooks_done) == vcc.sim.stats.webhooks_sent):  # fmt: skip
                await asyncio.sleep(0.02)
    finally:
        stop.set()
        await task
        await receiver.close()
    assert len({doc["uuid"] for doc in received}) == len(received) > 3
    assert failed_once <= {doc["uuid"] for doc in received}
    assert vcc.sim.stats.webhook_responses[500] == 1
    account = vcc.account()
    for doc in received:
        result = parse_push(doc, account=account, received_at=vcc.clock.utc())
        assert result.records[0].call_key == doc["uuid"]


@pytest.mark.parametrize(
    ("not_yet", "note"),
    [
        ("404", "CDR not processed yet (404)"),
        ("empty", "CDR not processed yet (empty answer)"),
        ("error200", 'CDR not processed yet (vendor says "404: CDR not found")'),
    ],
)
async def test_every_not_yet_answer_keeps_the_schedule_going(
    vcc: Vcc, not_yet: Any, note: str
) -> None:
    """A 404, an empty response and a 200 with a not-found error each mean "not yet": the
    lookup is retried 5 minutes later and given up only after the 20th attempt."""
    vcc.sim.config = dataclasses.replace(vcc.sim.config, not_yet=not_yet)
    lookups: VccLookups = vcc.client(VccLookups)
    created = vcc.clock.utc() - dt.timedelta(minutes=5)
    first = await lookups.perform(cdr_item("no-such-call", T0, 0, created), vcc.clock.utc())
    assert (first.state, first.counted, first.note) == ("retry", True, note)
    assert first.next_attempt_at == vcc.clock.utc() + dt.timedelta(minutes=5)
    late = vcc.clock.utc() + dt.timedelta(hours=2)
    last = await lookups.perform(cdr_item("no-such-call", T0, 19, created), late)
    assert (last.state, last.note) == ("gave_up", "no CDR after 20 attempts")


@pytest.mark.parametrize(
    ("errors", "raised", "words"),
    [
        ([{"code": 401, "message": "Authentication failed"}], AuthError, "username and api_key"),
        ([{"code": 403, "message": "Permission denied"}], PermissionRefused, "give the API token"),
        ([{"code": 400, "message": "invalid month"}], PermanentError, "malformed"),
    ],
)
async def test_cdr_refusal_ends_the_lookup_at_once(
    vcc: Vcc, errors: list[Any], raised: type[CdrsyncError], words: str
) -> None:
    """A 200 whose errors refuse credentials, permission or the request is not "not yet": the
    first answer ends the lookup (or, for credentials or a permission, the lookups wait)."""
    vcc.sim.set_faults(cdr_errors=tuple(errors))
    lookups: VccLookups = vcc.client(VccLookups)
    created = vcc.clock.utc() - dt.timedelta(minutes=5)
    with pytest.raises(raised, match=words) as caught:
        await lookups.perform(cdr_item("some-call", T0, 0, created), vcc.clock.utc())
    assert not isinstance(caught.value, TransientError)
    assert vcc.sim.stats.requests == {"cdr": 1}
    if raised is PermanentError:  # the lookup stream ends the lookup, saying why
        outcome = on_error(caught.value, vcc.clock.utc())
        assert outcome.state == "gave_up"
        assert outcome.note is not None and words in outcome.note
