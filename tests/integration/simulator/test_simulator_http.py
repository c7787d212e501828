"""The Acefone simulator over real HTTP on 127.0.0.1: auth, paging, drift, limits, faults."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest

from cdrsync.simulator.acefone import AcefoneSimConfig, AcefoneSimulator
from cdrsync.simulator.server import RunningServer, start_server

IST = ZoneInfo("Asia/Kolkata")
T0 = 1_714_657_800.0  # 2024-05-02 19:20:00 IST
AUTH = {"Authorization": "Bearer sim-token"}


class Clock:
    """A fake clock the simulator reads; tests move it by hand."""

    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def ist(epoch: float) -> str:
    """The vendor's naive IST string of an instant."""
    return dt.datetime.fromtimestamp(epoch, IST).strftime("%Y-%m-%d %H:%M:%S")


def start_of(payload: dict[str, Any]) -> float:
    """A record's start instant from its IST date and time."""
    naive = dt.datetime.fromisoformat(f"{payload['date']} {payload['time']}")
    return naive.replace(tzinfo=IST).timestamp()


class Reply:
    """What a client saw of one response: status, headers, content type and raw body."""

    def __init__(self, resp: aiohttp.ClientResponse, body: bytes) -> None:
        self.status, self.headers, self.content_type = resp.status, resp.headers, resp.content_type
        self.body = body

    def json(self) -> object:
        """The body decoded as JSON."""
        return json.loads(self.body)


class Harness:
    """A simulator on a fake clock, served on 127.0.0.1, with a client session."""

    def __init__(self, sim: AcefoneSimulator, clock: Clock, server: RunningServer,
                 http: aiohttp.ClientSession) -> None:  # fmt: skip
        self.sim, self.clock, self.server, self.http = sim, clock, server, http

    async def records(self, first: float, last: float, page: int = 1, limit: int = 100,
                      headers: dict[str, str] | None = None) -> Reply:  # fmt: skip
        """GET /v1/call/records for [first, last] (epochs, sent as IST strings); body read."""
        params: dict[str, str | int] = {
            "from_date": ist(first),
            "to_date": ist(last),
            "page": page,
            "limit": limit,
        }
        async with self.http.get("/v1/call/records", params=params,
                                 headers=AUTH if headers is None else headers) as resp:  # fmt: skip
            return Reply(resp, await resp.read())

    async def page(
        self, first: float, last: float, page: int = 1, limit: int = 100
    ) -> dict[str, Any]:
        """One decoded 200 page."""
        resp = await self.records(first, last, page, limit)
        assert resp.status == 200, resp.body
        assert resp.content_type == "application/json"
        return json.loads(resp.body)


@pytest.fixture
async def make() -> AsyncIterator[Callable[..., Awaitable[Harness]]]:
    """Factory: a served simulator for a config; everything is closed after the test."""
    opened: list[tuple[RunningServer, aiohttp.ClientSession]] = []

    async def factory(**overrides: object) -> Harness:
        clock = Clock(float(overrides.pop("at", T0 + 3600)))  # type: ignore[arg-type]
        settings: dict[str, Any] = {
            "backlog": 500,
            "backlog_days": 0.2,
            "live_per_minute": 0,
            **overrides,
        }
        sim = AcefoneSimulator(AcefoneSimConfig(**settings), now=clock, t0=T0)
        server = await start_server(sim)
        http = aiohttp.ClientSession(base_url=server.base_url)
        opened.append((server, http))
        return Harness(sim, clock, server, http)

    yield factory
    for server, http in opened:
        await http.close()
        await server.close()


async def test_missing_or_wrong_token_is_401(make):
    """Without a valid Bearer token the list answers 401 {"success": false, ...}."""
    h = await make()
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic sim-token"}):
        resp = await h.records(T0 - 3600, T0, headers=headers)
        assert resp.status == 401
        assert resp.json() == {"success": False, "message": "Unauthenticated"}
    assert (await h.records(T0 - 3600, T0)).status == 200
    assert h.sim.stats.responses == {401: 3, 200: 1}


async def test_login_and_refresh_issue_tokens_that_expire(make):
    """Login (email or login_id) and refresh issue one-hour tokens the list accepts."""
    h = await make(token="long-life")
    wrong = {"email": "demo@example.com", "password": "x"}
    async with h.http.post("/v1/auth/login", json=wrong) as resp:
        assert resp.status == 401
        assert await resp.json() == {"success": False, "message": "Invalid credentials"}
    body = {"login_id": "demo@example.com", "password": "sim-password"}
    async with h.http.post("/v1/auth/login", json=body) as resp:
        grant = await resp.json()
    assert resp.status == 200
    assert grant["success"] is True
    assert (grant["token_type"], grant["expires_in"]) == ("bearer", 3600)
    bearer = {"Authorization": f"Bearer {grant['access_token']}"}
    assert (await h.records(T0 - 3600, T0, headers=bearer)).status == 200
    async with h.http.post("/v1/auth/refresh", headers=bearer) as resp:
        fresh = await resp.json()
    assert resp.status == 200
    assert fresh["access_token"] != grant["access_token"]
    fresh_bearer = {"Authorization": f"Bearer {fresh['access_token']}"}
    assert (await h.records(T0 - 3600, T0, headers=fresh_bearer)).status == 200
    h.clock.t += 3600  # the first token dies; the refreshed one too (issued at the same time)
    assert (await h.records(T0 - 3600, T0, headers=bearer)).status == 401
    assert (await h.records(T0 - 3600, T0, headers=fresh_bearer)).status == 401
    async with h.http.post("/v1/auth/refresh", headers=bearer) as resp:
        assert resp.status == 401
    assert (
        await h.records(T0 - 3600, T0, headers={"Authorization": "Bearer long-life"})
    ).status == 200


async def test_paging_a_still_window_returns_exactly_its_truth(make):
    """Paging a window where nothing changes yields exactly the truth's records started in it."""
    h = await make(backlog=1200, malformed_fraction=0.0)
    first, last = T0 - 3 * 3600, T0 - 1800
    rows: list[dict[str, Any]] = []
    for n in range(1, 100):
        body = await h.page(first, last, n, 100)
        rows += body["results"]
        if body["size"] < 100:
            break
    truth = h.sim.truth()
    expected = {k: p for k, p in truth.items() if first <= start_of(p) <= last}
    assert len(rows) == len({r["id"] for r in rows}) == body["count"]
    assert {r["id"]: r for r in rows} == expected
    assert len(expected) > 300


async def test_rows_appearing_between_pages_shift_the_pages(make):
    """Records that become visible between two page reads push rows down: page 2 is computed
    afresh at its own instant and repeats rows already read on page 1."""
    h = await make(at=T0, backlog=600, backlog_days=0.01, late_fraction=1.0,
                   late_delay_s=(30.0, 40.0), change_fraction=0.0)  # fmt: skip
    first, last = T0 - 86400, T0
    one = [r["id"] for r in (await h.page(first, last, 1, 50))["results"]]
    assert one == [k for _, k in sorted(((start_of(p), k) for k, p in h.sim.truth().items()),
                                        reverse=True)][:50]  # fmt: skip
    h.clock.t += 60  # late records (the newest calls) appear
    two = await h.page(first, last, 2, 50)
    now_order = sorted(((start_of(p), k) for k, p in h.sim.truth().items()), reverse=True)
    assert [r["id"] for r in two["results"]] == [k for _, k in now_order[50:100]]
    assert two["count"] == len(now_order) == 600
    repeated = [r["id"] for r in two["results"] if r["id"] in one]
    assert repeated
    assert repeated == one[-len(repeated) :]


async def test_rate_limit_answers_429_with_retry_after_and_never_exceeds_the_window(make):
    """Over the limit the list answers 429 ("success": "false", Retry-After); accepted request
    times never exceed the limit in any sliding period; rejected ones do not count."""
    h = await make(rate_limit=3, rate_period_s=60.0)
    statuses = [(await h.records(T0 - 600, T0)).status for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]
    resp = await h.records(T0 - 600, T0)
    assert resp.headers["Retry-After"] == "60"
    assert resp.json() == {"success": "false", "message": "Too Many Attempts."}
    h.clock.t += 30
    resp = await h.records(T0 - 600, T0)
    assert (resp.status, resp.headers["Retry-After"]) == (429, "30")
    h.clock.t += 30  # a slot frees exactly one period after the first accepted request
    for _ in range(6):
        await h.records(T0 - 600, T0)
        h.clock.t += 7
    times = h.sim.stats.request_times
    assert len(times) > 4
    for t in times:
        assert sum(t - 60.0 < u <= t for u in times) <= 3
    assert h.sim.stats.rate_limited == h.sim.stats.responses[429]
    h.sim.set_faults(send_retry_after=False)
    for _ in range(4):
        resp = await h.records(T0 - 600, T0)
    assert resp.status == 429
    assert "Retry-After" not in resp.headers


async def test_faults_503_html_and_truncated_json(make):
    """Injected faults: a 503 with an HTML body, and a 200 whose JSON stops mid-way."""
    h = await make()
    h.sim.set_faults(fault_5xx=1.0)
    resp = await h.records(T0 - 600, T0)
    assert (resp.status, resp.content_type) == (503, "text/html")
    assert b"<html>" in resp.body
    h.sim.set_faults(fault_5xx=0.0, fault_truncated=1.0)
    resp = await h.records(T0 - 3600, T0)
    assert resp.status == 200
    with pytest.raises(json.JSONDecodeError):
        resp.json()
    h.sim.set_faults(fault_truncated=0.0)
    assert (await h.page(T0 - 3600, T0))["size"] > 0


async def test_unknown_routes_are_403_like_the_api_gateway(make):
    """Unknown paths and wrong methods answer 403 {"message": "Forbidden"}, never 404."""
    h = await make()
    for method, path in (("GET", "/v1/call-report"), ("POST", "/v1/call/records"),
                         ("GET", "/v1/auth/login")):  # fmt: skip
        async with h.http.request(method, path, headers=AUTH) as resp:
            assert resp.status == 403
            assert await resp.json() == {"message": "Forbidden"}


async def test_limit_is_clamped_and_bad_dates_are_400(make):
    """limit=500 is served as 100 rows; a malformed or missing date answers 400."""
    h = await make()
    body = await h.page(T0 - 86400, T0, 1, 500)
    assert (body["limit"], body["size"]) == (100, 100)
    params: dict[str, str | int] = {"from_date": "2024-05-02", "to_date": ist(T0)}
    async with h.http.get("/v1/call/records", params=params, headers=AUTH) as resp:
        assert resp.status == 400
        assert (await resp.json())["success"] is False
    async with h.http.get("/v1/call/records", headers=AUTH) as resp:
        assert resp.status == 400


async def test_control_routes_expose_truth_stats_and_settings(make):
    """/_sim/ routes: truth as JSON, stats with accepted times, faults and stop_live by POST."""
    h = await make(live_per_minute=30)
    async with h.http.get("/_sim/truth") as resp:
        truth = await resp.json()
    assert truth == h.sim.truth()
    async with h.http.post("/_sim/faults", json={"rate_limit": 7, "fault_slow": 0.0}) as resp:
        assert (await resp.json())["rate_limit"] == 7
    assert h.sim.faults.rate_limit == 7
    async with h.http.post("/_sim/faults", json={"bogus": 1}) as resp:
        assert resp.status == 400
    await h.records(T0 - 600, T0)
    async with h.http.get("/_sim/stats") as resp:
        stats = await resp.json()
    assert (stats["list_requests"], stats["request_times"]) == (1, [h.clock.t])
    async with h.http.post("/_sim/stop_live", json={}) as resp:
        assert (await resp.json())["last_visible_time"] < h.clock.t + 1000
    assert h.sim.last_visible_time() < float("inf")
