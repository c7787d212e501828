"""Ozonetel over real HTTP on 127.0.0.1: the vendor module's clients against the simulator.

The simulator's clock starts at a fixed IST noon and runs at real speed, so dates are
deterministic while rate limits are measured in real seconds.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest
import stamina
from aiohttp import web
from structlog.testing import capture_logs

from cdrsync.config import AccountSettings, parse
from cdrsync.engine.lookup import LookupStream
from cdrsync.errors import (
    AuthError,
    EndpointError,
    PermanentError,
    RateLimited,
    UnexpectedAnswer,
)
from cdrsync.http.limiter import SlidingWindowLimiter
from cdrsync.http.transport import RetryPolicy, Transport
from cdrsync.model import LookupItem, LookupRequest, Window
from cdrsync.simulator.ozonetel import OzonetelSimConfig, OzonetelSimulator
from cdrsync.simulator.ozonetel_server import run_pushes, start_ozonetel_server
from cdrsync.simulator.server import RunningServer, serve_app
from cdrsync.store.store import Store
from cdrsync.vendors.acefone import digest
from cdrsync.vendors.ozonetel import IST, OzonetelSource, forget_tokens, parse_push
from cdrsync.vendors.ozonetel_lookup import OzonetelLookups
from support import sql_value

KEY = "sim-ozonetel-key"
NOON = dt.datetime(2026, 11, 20, 12, 0, tzinfo=IST)


def ist(*args: int) -> dt.datetime:
    """An IST wall-clock time as a UTC instant."""
    return dt.datetime(*args, tzinfo=IST).astimezone(dt.UTC)  # type: ignore[misc,arg-type]  # (year, month, day, ...)


class Clock:
    """Fixed start (IST noon), real-time pace: dates are stable, rates are real."""

    def __init__(self, start: dt.datetime = NOON) -> None:
        self.base = start.timestamp()
        self.began = time.monotonic()

    def __call__(self) -> float:
        return self.base + time.monotonic() - self.began


def account(base_url: str, **settings: Any) -> AccountSettings:
    """An Ozonetel account for the simulator at ``base_url``."""
    acc = {
        "name": "oz",
        "vendor": "ozonetel",
        "start": "2026-11-01",
        "base_url": base_url,
        "username": "sim-user",
        "api_key": KEY,
        "page_size": 50,
        "retry_attempts": 1,
        **settings,
    }
    settings_ = parse(
        {
            "database": {"dsn": "postgresql://x/y"},
            "daemon": {"state_dir": "/tmp"},
            "accounts": [acc],
        },
        source="<test>",
        environ={},
    )
    return settings_.accounts[0]


def limiters(bulk: tuple[int, float] = (1000, 1.0)) -> dict[str, SlidingWindowLimiter]:
    """The account's limiter groups; the bulk one as given (the vendor's is 2 per 60 s)."""
    return {
        # The margin absorbs the gap between our grant and the vendor's arrival time.
        "bulk": SlidingWindowLimiter(bulk[0], bulk[1], margin=0.15, name="oz/bulk"),
        "lookup": SlidingWindowLimiter(50, 60.0, margin=0.0, name="oz/lookup"),
        "token": SlidingWindowLimiter(10, 3600.0, margin=0.0, name="oz/token"),
    }


Served = Callable[..., Awaitable[tuple[OzonetelSimulator, RunningServer]]]


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    """Factory: a simulator (fixed-noon clock) served on 127.0.0.1; closed after the test."""
    forget_tokens()
    servers: list[RunningServer] = []

    async def make(**config: Any) -> tuple[OzonetelSimulator, RunningServer]:
        options: dict[str, Any] = {"backlog": 400, "backlog_days": 1.0, "bulk_rate_limit": 1000}
        options.update(config)
        sim = OzonetelSimulator(OzonetelSimConfig(**options), now=Clock())
        server = await start_ozonetel_server(sim)
        servers.append(server)
        return sim, server

    yield make
    for server in servers:
        await server.close()
    forget_tokens()


@pytest.fixture
async def transport() -> AsyncIterator[Transport]:
    """A transport with quick retries."""
    policy = RetryPolicy(attempts=2, wait_initial_s=0.01, wait_max_s=0.05, wait_jitter_s=0)
    async with Transport.open(request_timeout_s=5.0, policy=policy) as opened:
        yield opened


MORNING = Window(ist(2026, 11, 20, 9, 0), ist(2026, 11, 20, 11, 0))


def in_window(sim: OzonetelSimulator, window: Window) -> dict[str, dict[str, Any]]:
    """The simulator's records whose IST StartTime lies inside ``window``."""
    first = window.start.astimezone(IST).strftime("%Y-%m-%d %H:%M:%S")
    last = (window.end - dt.timedelta(seconds=1)).astimezone(IST).strftime("%Y-%m-%d %H:%M:%S")
    return {k: r for k, r in sim.truth().items() if first <= r["StartTime"] <= last}


# ---------------------------------------------------------------------------- bulk


async def test_pages_of_a_window_add_up_to_the_truth(served: Served, transport: Transport):
    """Counting and paging a window returns every record of it, as the simulator holds it."""
    sim, server = await served()
    source = OzonetelSource(
        account(server.base_url, page_size=15), transport, limiters(), "oz/list"
    )
    total = await source.count(MORNING)
    expected = in_window(sim, MORNING)
    assert total == len(expected) > source.page_size
    records: list[Any] = []
    for page in range(1, total // source.page_size + 2):
        fetched = await source.fetch_page(MORNING, page)
        assert fetched.total == total and not fetched.rejects
        records += fetched.records
    assert [r.call_key for r in records] == list(expected)
    for record in records:
        truth = orjson.dumps(expected[record.call_key], option=orjson.OPT_SORT_KEYS)
        assert (record.source, record.content_hash) == ("list", digest(truth))


async def test_a_window_across_ist_midnight_is_never_sent(served: Served, transport: Transport):
    """A window spanning two IST days is refused before any request is made."""
    sim, server = await served()
    source = OzonetelSource(account(server.base_url), transport, limiters(), "oz/list")
    crossing = Window(ist(2026, 11, 19, 23, 30), ist(2026, 11, 20, 0, 30))
    with pytest.raises(PermanentError, match="same calendar day"):
        await source.fetch_page(crossing, 1)
    assert sim.stats.requests == {}


async def test_bulk_limiter_never_lets_three_requests_into_one_period(
    served: Served, transport: Transport
):
    """At 2 per period, concurrent pages are spaced so the vendor never sees 3 in one period."""
    period = 0.4
    sim, server = await served(bulk_rate_limit=2, bulk_rate_period_s=period)
    source = OzonetelSource(account(server.base_url), transport, limiters((2, period)), "oz/list")
    pages = await asyncio.gather(*(source.fetch_page(MORNING, p) for p in range(1, 7)))
    assert all(page.total > 0 for page in pages)
    times = sim.stats.bulk_times
    assert len(times) == 6 and sim.stats.rate_limited == {}
    assert all(later - earlier >= period for earlier, later in zip(times, times[2:], strict=False))


@pytest.mark.parametrize("expired_status", [401, 200])
async def test_token_is_fetched_once_and_renewed_on_token_expired(
    served: Served, transport: Transport, expired_status: int
):
    """Token mode: one token serves every stream; "Token Expired" renews it once and repeats."""
    sim, server = await served(auth="token", token_expired_status=expired_status)
    acc = account(server.base_url, auth="token")
    shared = limiters()
    live = OzonetelSource(acc, transport, shared, "oz/list")
    history = OzonetelSource(acc, transport, shared, "oz/history")
    await asyncio.gather(live.count(MORNING), history.count(MORNING), live.count(MORNING))
    assert sim.stats.tokens_issued == 1
    sim.expire_tokens()
    assert await history.fetch_page(MORNING, 1)
    assert sim.stats.tokens_issued == 2
    statuses = sim.stats.responses["bulk"]
    assert (statuses.get(401, 0), sum(statuses.values())) == (expired_status == 401, 5)


@pytest.mark.parametrize(
    ("status", "answer"),
    [
        (200, {"status": "error", "message": "max limit exceeded"}),
        (200, {"status": "false", "message": "Too Many Requests"}),
        (429, {"status": "false", "message": "Too Many Requests"}),
    ],
)
async def test_token_rate_limit_is_asked_once_and_pauses_its_whole_hour(
    transport: Transport, status: int, answer: dict[str, str]
):
    """generateToken's rate limit (10 an hour) is not retried: the token limiter pauses for its
    whole period and, meanwhile, the bulk reports fail at once without asking again."""
    asked: list[float] = []

    async def generate(request: web.Request) -> web.Response:
        asked.append(time.monotonic())
        return web.json_response(answer, status=status)

    app = web.Application()
    app.router.add_post("/ca_apis/CAToken/generateToken", generate)
    server = await serve_app(app)
    forget_tokens()
    groups = limiters()
    acc = account(server.base_url, auth="token", retry_attempts=4)
    source = OzonetelSource(acc, transport, groups, "oz/list")
    try:
        # Retries without their waits (before the fix: 4 requests, each refused).
        with stamina.set_testing(True, attempts=4, cap=True), capture_logs() as logs:
            with pytest.raises(RateLimited, match="no token is asked for before") as first:
                await source.count(MORNING)
            with pytest.raises(RateLimited, match="no token is asked for before") as later:
                await source.count(MORNING)
    finally:
        await server.close()
        forget_tokens()
    assert len(asked) == 1
    assert groups["token"].paused_until() >= time.monotonic() + 3590
    assert (later.value.retry_after or 0) > 3590
    assert "nothing else generates tokens" in str(first.value)
    paused = [e for e in logs if e["event"] == "ozonetel.token_rate_limited"]
    assert [(e["log_level"], e["pause_s"]) for e in paused] == [("warning", 3600.0)]


@pytest.mark.parametrize(
    "answer",
    [
        {"status": "success", "message": "ok", "details": []},  # no totalCount
        {"status": "success", "message": "ok", "totalCount": 3},  # no details list
        ["not", "an", "object"],
    ],
)
async def test_an_answer_of_an_unexpected_shape_costs_one_request_not_six(
    transport: Transport, answer: Any
):
    """Well-formed JSON without the documented fields would most likely come back the same:
    it is not asked again at once (2 bulk requests a minute), only at the next cycle."""
    asked: list[float] = []

    async def bulk(request: web.Request) -> web.Response:
        asked.append(time.monotonic())
        return web.json_response(answer)

    app = web.Application()
    app.router.add_get("/ca_reports/fetchCdrByPagination", bulk)
    server = await serve_app(app)
    source = OzonetelSource(account(server.base_url), transport, limiters(), "oz/list")
    try:
        with (
            stamina.set_testing(True, attempts=6, cap=True),
            pytest.raises(UnexpectedAnswer, match="next cycle"),
        ):
            await source.fetch_page(MORNING, 1)
    finally:
        await server.close()
    assert len(asked) == 1


async def test_api_key_mode_against_a_token_account_is_an_auth_error(
    served: Served, transport: Transport
):
    """Without the Bearer a TOKEN account refuses: an AuthError, not retried."""
    sim, server = await served(auth="token")
    acc = account(server.base_url, auth="apikey")  # "auto" (the default) would try a token
    source = OzonetelSource(acc, transport, limiters(), "oz/list")
    with pytest.raises(AuthError, match="Missing userName or apiKey"):
        await source.count(MORNING)
    assert sim.stats.requests == {"bulk": 1}


@pytest.mark.parametrize("mode", ["apikey", "token"])
async def test_auto_auth_finds_the_accounts_mode_and_every_stream_keeps_it(
    served: Served, transport: Transport, mode: str
):
    """With auth = "auto" a BASIC_AUTH or a TOKEN account both answer; a refusal costs one
    request once per account (not per stream or per request), and the mode that worked is
    logged."""
    sim, server = await served(auth=mode)
    acc = account(server.base_url)
    shared = limiters()
    live = OzonetelSource(acc, transport, shared, "oz/list")
    history = OzonetelSource(acc, transport, shared, "oz/history")
    with capture_logs() as logs:
        assert (await live.fetch_page(MORNING, 1)).size > 0
        assert (await history.fetch_page(MORNING, 1)).size > 0
        assert (await live.fetch_page(MORNING, 1)).size > 0
    statuses = sim.stats.responses["bulk"]
    assert (statuses.get(401, 0), statuses.get(200, 0)) == (int(mode == "token"), 3)
    assert sim.stats.tokens_issued == int(mode == "token")
    worked = [(e["mode"], e["refused"]) for e in logs if e["event"] == "ozonetel.auth_mode"]
    assert worked == [(mode, "apikey" if mode == "token" else None)]


@pytest.mark.parametrize("mode", ["apikey", "token"])
async def test_auto_auth_refused_in_both_modes_names_the_setting(
    served: Served, transport: Transport, mode: str
):
    """When neither the apiKey header nor a token is accepted, the error says so and names
    the auth setting (and the credentials), without the key."""
    _, server = await served(auth=mode)
    wrong = "wrong-key-7654321"
    acc = account(server.base_url, api_key=wrong)
    source = OzonetelSource(acc, transport, limiters(), "oz/list")
    with pytest.raises(AuthError, match="refused both auth modes") as caught:
        await source.count(MORNING)
    assert 'set auth = "apikey" or "token"' in str(caught.value)
    assert "api_key" in str(caught.value)
    assert wrong not in str(caught.value)


async def test_refused_generate_token_is_not_asked_again_until_new_credentials(
    served: Served, transport: Transport
):
    """With auth = "auto" and a wrong key, generateToken is asked once, not every cycle, the
    refusal is logged once with what to do, and new credentials ask again at once."""
    sim, server = await served(auth="token")
    wrong = account(server.base_url, api_key="wrong-key-7654321")
    with capture_logs() as logs:
        for _ in range(3):  # three cycles of the stream
            source = OzonetelSource(wrong, transport, limiters(), "oz/list")
            with pytest.raises(AuthError, match="refused both auth modes"):
                await source.count(MORNING)
    assert sim.stats.requests["token"] == 1
    refused = [e for e in logs if e["event"] == "ozonetel.token_refused"]
    assert len(refused) == 1
    assert "fix username or api_key and reload" in refused[0]["error"]
    fixed = OzonetelSource(account(server.base_url), transport, limiters(), "oz/list")
    assert await fixed.count(MORNING) > 0
    assert (sim.stats.requests["token"], sim.stats.tokens_issued) == (2, 1)


async def test_wrong_api_key_never_reaches_errors_or_logs(served: Served, transport: Transport):
    """A refused key is an AuthError; neither it nor the message nor any log line shows the key."""
    _, server = await served()
    wrong = "wrong-key-1234567"
    source = OzonetelSource(
        account(server.base_url, api_key=wrong), transport, limiters(), "oz/list"
    )
    lookups = OzonetelLookups(
        account(server.base_url, api_key=wrong), transport, limiters(), "oz/lookup"
    )
    item = lookup_item("1", NOON)
    with capture_logs() as logs:
        with pytest.raises(AuthError) as bulk_error:
            await source.count(MORNING)
        with pytest.raises(AuthError, match="API Authentication") as lookup_error:
            await lookups.perform(item, NOON.astimezone(dt.UTC))
    for text in (str(bulk_error.value), str(lookup_error.value), repr(logs)):
        assert wrong not in text


# ---------------------------------------------------------------------------- raw routes


async def test_vendor_routes_answer_with_the_documented_strings(served: Served):
    """The raw routes: POST is 405, query dates are Invalid Json, CallBacks errors verbatim."""
    _, server = await served()
    async with aiohttp.ClientSession(base_url=server.base_url) as http:
        async with http.post("/ca_reports/fetchCdrByPagination") as resp:
            assert resp.status == 405
        query = {"fromDate": "2026-11-20 00:00:00", "toDate": "2026-11-20 01:00:00"}
        async with http.get(
            "/ca_reports/fetchCdrByPagination", params=query, headers={"apiKey": KEY}
        ) as resp:
            assert await resp.json() == {
                "status": "false",
                "message": "Invalid Json Pass Valid Json",
            }
        async with http.get("/ca_reports/fetchCDRDetails") as resp:
            assert resp.status == 401
            assert await resp.json() == {"status": "false", "message": "Missing userName or apiKey"}
        base = {"userName": "sim-user", "apiKey": KEY, "ucid": "77", "reportType": "currentday"}
        cases = [
            ({k: v for k, v in base.items() if k != "userName"}, "userName should not be empty"),
            ({**base, "apiKey": ""}, "apiKey should not be empty"),
            ({k: v for k, v in base.items() if k != "ucid"}, "ucid should not be empty"),
            ({**base, "reportType": ""}, "reportType should not be empty"),
            ({**base, "reportType": "weekly"}, "Invalid reportType"),
            ({**base, "ucid": "77a"}, "ucid should be numeric only"),
            ({**base, "apiKey": "nope"}, "userName or apiKey is Invalid"),
        ]
        for params, message in cases:
            async with http.get("/CAServices/CDR/callbacks.php", params=params) as resp:
                assert (resp.status, await resp.json()) == (
                    200,
                    {"message": message, "status": "error"},
                )
        async with http.get("/CAServices/CDR/callbacks.php", params=base) as resp:
            assert await resp.json() == {
                "status": "success",
                "message": "No Data Found with UCID 77",
            }


async def test_control_routes(served: Served):
    """/_sim/ routes expose the truth and stats, take faults, and stop live traffic."""
    sim, server = await served(backlog=30)
    async with aiohttp.ClientSession(base_url=server.base_url) as http:
        async with http.get("/_sim/truth", params={"at": str(NOON.timestamp())}) as resp:
            assert await resp.json() == sim.truth(NOON.timestamp())
        async with http.post("/_sim/faults", json={"fault_5xx": 3}) as resp:
            assert resp.status == 400
        async with http.post("/_sim/faults", json={"push_drop": 0.5}) as resp:
            assert (await resp.json())["push_drop"] == 0.5
        async with http.post("/_sim/stop_live", json={}) as resp:
            assert (await resp.json())["last_visible_time"] < NOON.timestamp() + 60
        async with http.get("/_sim/stats") as resp:
            stats = await resp.json()
    assert stats["faults"]["push_drop"] == 0.5
    assert "bulk_times" in stats and "tokens_issued" in stats


# ---------------------------------------------------------------------------- lookups


def lookup_item(ucid: str, started: dt.datetime) -> LookupItem:
    """A queued ozonetel.cdr lookup as the lookup stream claims it."""
    now = dt.datetime.now(dt.UTC)
    return LookupItem(
        id=1,
        vendor="ozonetel",
        account="oz",
        kind="ozonetel.cdr",
        call_key=ucid,
        context={"started_at": started.astimezone(dt.UTC).isoformat()},
        attempts=0,
        created_at=now,
        next_attempt_at=now,
    )


async def test_lookup_finds_todays_call(served: Served, transport: Transport):
    """A call from today is found in currentday and stored as a lookup copy without Apikey."""
    sim, server = await served()
    leg = sim.legs()[-1]
    lookups = OzonetelLookups(account(server.base_url), transport, limiters(), "oz/lookup")
    started = dt.datetime.fromtimestamp(leg.start, dt.UTC)
    outcome = await lookups.perform(lookup_item(leg.ucid, started), NOON.astimezone(dt.UTC))
    assert outcome.state == "done"
    assert [(r.call_key, r.source) for r in outcome.records] == [(leg.ucid, "lookup")]
    assert KEY not in outcome.records[0].raw
    assert lookups.limiter_group("ozonetel.cdr") == "lookup"


async def test_lookup_not_found_retries_later(served: Served, transport: Transport):
    """ "No Data Found" retries after lookup_retry, counted as an attempt."""
    _, server = await served()
    lookups = OzonetelLookups(
        account(server.base_url, lookup_retry="7m"), transport, limiters(), "oz/lookup"
    )
    now = NOON.astimezone(dt.UTC)
    outcome = await lookups.perform(lookup_item("123456", ist(2026, 11, 20, 11, 0)), now)
    assert (outcome.state, outcome.counted) == ("retry", True)
    assert outcome.next_attempt_at == now + dt.timedelta(minutes=7)


async def test_yesterdays_call_at_one_am_sends_no_request(served: Served, transport: Transport):
    """Between 00:00 and 03:00 IST a lookup of yesterday's call waits for 03:00, asking nothing."""
    sim, server = await served()
    lookups = OzonetelLookups(account(server.base_url), transport, limiters(), "oz/lookup")
    item = lookup_item("123456", ist(2026, 11, 19, 23, 50))
    outcome = await lookups.perform(item, ist(2026, 11, 20, 1, 0))
    assert (outcome.state, outcome.counted) == ("retry", False)
    assert outcome.next_attempt_at == ist(2026, 11, 20, 3, 0)
    gave_up = await lookups.perform(item, ist(2026, 12, 10, 12, 0))
    assert gave_up.state == "gave_up" and "horizon" in (gave_up.note or "")
    assert sim.stats.requests == {}


async def test_max_limit_exceeded_pauses_the_lookup_limiter(served: Served, transport: Transport):
    """CallBacks' 200 "max limit exceeded" is a RateLimited that pauses the limiter a minute."""
    _, server = await served(lookup_rate_limit=1)
    groups = limiters()
    lookups = OzonetelLookups(account(server.base_url), transport, groups, "oz/lookup")
    item = lookup_item("123456", ist(2026, 11, 20, 11, 0))
    await lookups.perform(item, NOON.astimezone(dt.UTC))
    with pytest.raises(RateLimited, match="max limit exceeded"):
        await lookups.perform(item, NOON.astimezone(dt.UTC))
    assert groups["lookup"].paused_until() >= time.monotonic() + 55


async def test_a_lookup_whose_turn_comes_after_ist_midnight_is_not_sent(
    served: Served, transport: Transport
):
    """A "currentday" lookup decided at 23:59:59.5 IST whose limiter grant comes after midnight
    is decided again: it waits for 03:00 uncounted and nothing is sent."""
    sim, server = await served()
    groups = limiters()
    groups["lookup"] = SlidingWindowLimiter(1, 1.0, margin=0.0, name="oz/lookup")
    groups["lookup"].record(time.monotonic())  # the next grant comes a second from now
    lookups = OzonetelLookups(account(server.base_url), transport, groups, "oz/lookup")
    item = lookup_item("123456", ist(2026, 11, 19, 23, 50))
    before_midnight = ist(2026, 11, 19, 23, 59, 59) + dt.timedelta(milliseconds=500)
    outcome = await lookups.perform(item, before_midnight)
    assert (outcome.state, outcome.counted) == ("retry", False)
    assert outcome.next_attempt_at == ist(2026, 11, 20, 3, 0)
    assert sim.stats.requests == {}


WRONG_PATH = "/CAServices/CDR/Callbacks.php"  # a casing the (simulated) account does not serve


async def test_a_refused_callbacks_path_is_an_endpoint_error_naming_the_setting(
    served: Served, transport: Transport
):
    """An HTTP 404 from the CallBacks path refuses the endpoint, not the call: an EndpointError
    that names the setting to check; Ozonetel's refusal in a 200 body stays about the call."""
    _, server = await served()
    wrong = account(server.base_url, endpoints={"lookup": WRONG_PATH})
    lookups = OzonetelLookups(wrong, transport, limiters(), "oz/lookup")
    item = lookup_item("123456", ist(2026, 11, 20, 11, 0))
    with pytest.raises(EndpointError, match="HTTP 404") as refused:
        await lookups.perform(item, NOON.astimezone(dt.UTC))
    assert f'[accounts.endpoints] lookup = "{WRONG_PATH}"' in str(refused.value)
    assert KEY not in str(refused.value)

    async def refuse(request: web.Request) -> web.Response:
        return web.json_response({"status": "error", "message": "Invalid reportType"})

    app = web.Application()
    app.router.add_get("/CAServices/CDR/callbacks.php", refuse)
    stub = await serve_app(app)
    try:
        answering = OzonetelLookups(account(stub.base_url), transport, limiters(), "oz/lookup")
        with pytest.raises(PermanentError, match="Invalid reportType") as answered:
            await answering.perform(item, NOON.astimezone(dt.UTC))
    finally:
        await stub.close()
    assert not isinstance(answered.value, EndpointError)


async def test_a_refused_callbacks_path_keeps_every_lookup_pending(
    served: Served, transport: Transport, store: Store, dsn: str
):
    """The lookup stream meeting a refused endpoint gives up on no item: they stay pending and
    uncounted, the cycle fails (the stream backs off) and an error names the setting."""
    _, server = await served()
    acc = account(server.base_url, endpoints={"lookup": WRONG_PATH})
    name = "oz/lookup"
    source = OzonetelLookups(acc, transport, limiters(), name)
    stream = LookupStream(name=name, account=acc, source=source, store=store,
                          locks=store.lock_session(), stop=asyncio.Event(),
                          clock=lambda: NOON.astimezone(dt.UTC))  # fmt: skip
    started = {"started_at": ist(2026, 11, 20, 11, 0).isoformat()}
    queued = [LookupRequest("ozonetel.cdr", ucid, started, ist(2026, 11, 20, 11, 30))
              for ucid in ("101", "102", "103")]  # fmt: skip
    await store.queues.enqueue("ozonetel", "oz", queued, now=NOON.astimezone(dt.UTC))
    with capture_logs() as logs, pytest.raises(EndpointError):
        await stream.cycle()
    states = await sql_value(
        dsn, "SELECT string_agg(state || ':' || attempts, ',' ORDER BY call_key) FROM lookups"
    )
    assert states == "pending:0,pending:0,pending:0"
    refused = [e for e in logs if e["event"] == "lookup.endpoint_refused"]
    assert [e["log_level"] for e in refused] == ["error"]
    assert "[accounts.endpoints] lookup" in refused[0]["error"]


# ---------------------------------------------------------------------------- pushes


async def test_pushes_arrive_as_form_data_the_receiver_can_parse(served: Served):
    """Each ended live call is POSTed as form field `data`; failed pushes are tried again."""
    sim, _ = await served(backlog=0, live_per_minute=1200.0, push_delay_s=0.0)
    received: list[Any] = []
    refusals = [500]  # the first push meets a hiccup and is tried again

    async def hook(request: web.Request) -> web.Response:
        form = await request.post()
        if refusals:
            return web.Response(status=refusals.pop())
        received.append(orjson.loads(str(form["data"])))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hooks/oz", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/hooks/oz?token=s3cret"
    stop = asyncio.Event()
    task = asyncio.create_task(run_pushes(sim, url, stop, poll_s=0.02, retry_wait_s=0.01))
    try:
        while len(received) < 5:
            await asyncio.sleep(0.02)
    finally:
        stop.set()
        await task
        await runner.cleanup()
    assert sim.stats.pushes_sent == len(received) and sim.stats.pushes_failed == 0
    assert sim.stats.push_attempts == len(received) + 1
    acc = account("http://127.0.0.1:9")
    for record in received:
        assert record["Apikey"] == KEY  # Ozonetel echoes the key; parse_push drops it
        result = parse_push({"data": orjson.dumps(record).decode()}, account=acc,
                            received_at=dt.datetime.now(dt.UTC))  # fmt: skip
        assert [r.call_key for r in result.records] == [record["monitorUCID"]]
        assert KEY not in result.records[0].raw
