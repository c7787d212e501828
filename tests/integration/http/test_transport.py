"""The HTTP transport against a real, scripted aiohttp server on 127.0.0.1.

The server answers each request with the next step of a script (a status, a truncated body, a
dropped connection, a stall) and records when every request arrived, so the tests assert on what
the vendor would see: how many requests, how far apart, and what they carried.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import email.utils
import itertools
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from cdrsync import __version__
from cdrsync.errors import (
    AuthError,
    BadPageError,
    CdrsyncError,
    PermanentError,
    RateLimited,
    TransientError,
)
from cdrsync.http.limiter import SlidingWindowLimiter
from cdrsync.http.transport import Response, RetryPolicy, Transport, parse_retry_after

FAST = RetryPolicy(
    attempts=3, timeout_s=20.0, wait_initial_s=0.01, wait_max_s=0.05, wait_jitter_s=0
)

Step = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Arrival:
    """One request as the server saw it."""

    at: float
    method: str
    path_qs: str
    headers: dict[str, str]
    body: bytes


@dataclass
class ScriptedServer:
    """Answers requests with scripted steps, in order; then with `default`."""

    base: str = ""
    script: list[Step] = field(default_factory=list)
    default: Step | None = None
    arrivals: list[Arrival] = field(default_factory=list)
    closing: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.arrivals.append(
            Arrival(time.monotonic(), request.method, request.path_qs, dict(request.headers), body)
        )
        step = self.script.pop(0) if self.script else self.default
        if step is None:
            return web.json_response({"message": "script exhausted"}, status=599)
        return await step(request)

    # Steps -------------------------------------------------------------------------------

    @staticmethod
    def status(code: int, doc: object = None, headers: dict[str, str] | None = None) -> Step:
        async def step(request: web.Request) -> web.StreamResponse:
            return web.json_response(doc if doc is not None else {}, status=code, headers=headers)

        return step

    @staticmethod
    def raw(body: bytes) -> Step:
        async def step(request: web.Request) -> web.StreamResponse:
            return web.Response(body=body, content_type="application/json")

        return step

    @staticmethod
    def drop_mid_body() -> Step:
        async def step(request: web.Request) -> web.StreamResponse:
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            response.content_length = 10_000
            await response.prepare(request)
            await response.write(b'{"rows": [1, 2, 3')
            await response.drain()
            assert request.transport is not None
            request.transport.close()
            return response

        return step

    def stall(self, seconds: float) -> Step:
        async def step(request: web.Request) -> web.StreamResponse:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.closing.wait(), seconds)
            return web.json_response({"late": True})

        return step


@pytest.fixture
async def server() -> AsyncIterator[ScriptedServer]:
    """A scripted vendor on 127.0.0.1 with a free port."""
    srv = ScriptedServer()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", srv.handle)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    srv.base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield srv
    srv.closing.set()
    await runner.cleanup()


@dataclass
class Observed:
    """A RequestObserver that remembers every call."""

    responses: list[int] = field(default_factory=list)
    errors: list[CdrsyncError] = field(default_factory=list)
    retries: list[tuple[int, float]] = field(default_factory=list)

    def on_response(self, endpoint: str, status: int, elapsed_s: float) -> None:
        self.responses.append(status)

    def on_error(self, endpoint: str, error: CdrsyncError) -> None:
        self.errors.append(error)

    def on_retry(self, endpoint: str, attempt: int, wait_s: float, error: CdrsyncError) -> None:
        self.retries.append((attempt, wait_s))


@pytest.fixture
def observed() -> Observed:
    """Observer calls of one test."""
    return Observed()


@pytest.fixture
async def transport(observed: Observed) -> AsyncIterator[Transport]:
    """A transport with a fast retry policy and a short request timeout."""
    async with Transport.open(request_timeout_s=5.0, policy=FAST, observer=observed) as t:
        yield t


def roomy() -> SlidingWindowLimiter:
    """A limiter that never gets in the way."""
    return SlidingWindowLimiter(1000, 1.0, margin=0.0, name="test/list")


def as_json(response: Response) -> Any:
    """The parse used by vendor modules: the body as JSON, or a BadPageError."""
    return response.json()


async def get(transport: Transport, server: ScriptedServer, **kwargs: Any) -> Any:
    """GET /records through the transport with the defaults of these tests."""
    kwargs.setdefault("limiter", roomy())
    kwargs.setdefault("parse", as_json)
    return await transport.request("GET", f"{server.base}/records", endpoint="test.list", **kwargs)


def max_in_any_window(times: list[float], period: float) -> int:
    """The most times inside any half-open window ``[t, t + period)``."""
    return max((sum(1 for x in times if t <= x < t + period) for t in times), default=0)


async def test_200_json_is_parsed_once(transport: Transport, server: ScriptedServer) -> None:
    """A 200 JSON answer is parsed and returned after exactly one request with our User-Agent."""
    server.script = [server.status(200, {"rows": [1, 2]}, headers={"X-Total": "2"})]
    seen: list[Response] = []

    def parse(response: Response) -> Any:
        seen.append(response)
        return response.json()

    assert await get(transport, server, parse=parse) == {"rows": [1, 2]}
    assert len(server.arrivals) == 1
    assert server.arrivals[0].headers["User-Agent"] == f"cdrsync/{__version__}"
    assert seen[0].headers["x-total"] == "2"
    assert seen[0].elapsed_s > 0


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408])
async def test_transient_status_is_retried_until_success(
    transport: Transport, server: ScriptedServer, observed: Observed, status: int
) -> None:
    """A 5xx or 408 is retried, and the next 200 is returned; the observer sees both attempts."""
    server.script = [server.status(status), server.status(200, {"ok": True})]
    assert await get(transport, server) == {"ok": True}
    assert len(server.arrivals) == 2
    assert observed.responses == [status, 200]
    assert [type(e) for e in observed.errors] == [TransientError]
    assert [attempt for attempt, _ in observed.retries] == [1]


async def test_429_with_retry_after_waits_before_the_next_request(
    transport: Transport, server: ScriptedServer
) -> None:
    """After a 429 with Retry-After: 1 the next request reaches the vendor at least 1 s later."""
    server.script = [
        server.status(429, {"message": "slow down"}, headers={"Retry-After": "1"}),
        server.status(200, {"ok": True}),
    ]
    limiter = roomy()
    with capture_logs() as logs:
        assert await get(transport, server, limiter=limiter) == {"ok": True}
    first, second = server.arrivals
    assert second.at - first.at >= 1.0
    assert [e["retry_after"] for e in logs if e["event"] == "http.rate_limited"] == [1.0]
    assert limiter.effective_limit(time.monotonic()) == 500  # slowed down after the 429


async def test_429_without_retry_after_pauses_for_one_window(
    transport: Transport, server: ScriptedServer
) -> None:
    """A 429 without Retry-After pauses the limiter for a whole window before trying again."""
    server.script = [server.status(429), server.status(200, {"ok": True})]
    limiter = SlidingWindowLimiter(4, 0.4, margin=0.1)
    assert await get(transport, server, limiter=limiter) == {"ok": True}
    first, second = server.arrivals
    assert second.at - first.at >= 0.5
    assert limiter.effective_limit(time.monotonic()) == 2


async def test_429_given_up_carries_no_retry_after_and_leaves_the_limiter_paused(
    transport: Transport, server: ScriptedServer
) -> None:
    """A final 429 with a garbage Retry-After raises RateLimited(None); the limiter stays paused."""
    server.default = server.status(429, headers={"Retry-After": "soon"})
    limiter = SlidingWindowLimiter(10, 30.0, margin=0.0)
    with pytest.raises(RateLimited) as caught:
        await get(transport, server, limiter=limiter, policy=RetryPolicy(attempts=1))
    assert caught.value.retry_after is None
    assert len(server.arrivals) == 1
    assert limiter.delay(time.monotonic()) > 29.0
    assert "will retry" in str(caught.value)


@pytest.mark.parametrize("status", [401, 403])
async def test_auth_failure_is_not_retried(
    transport: Transport, server: ScriptedServer, observed: Observed, status: int
) -> None:
    """A 401 or 403 raises AuthError after exactly one request, telling to check the token."""
    server.default = server.status(status, {"message": "Invalid credentials"})
    with pytest.raises(AuthError) as caught:
        await get(transport, server)
    assert len(server.arrivals) == 1
    assert observed.retries == []
    message = str(caught.value)
    assert "test.list" in message
    assert str(status) in message
    assert "Invalid credentials" in message
    assert "check the account's token" in message


@pytest.mark.parametrize("status", [400, 404, 422])
async def test_other_client_errors_are_permanent(
    transport: Transport, server: ScriptedServer, status: int
) -> None:
    """Other 4xx raise PermanentError after one request, quoting at most 200 chars of `message`."""
    server.default = server.status(status, {"message": "x" * 500, "detail": "OTHERFIELD"})
    with pytest.raises(PermanentError) as caught:
        await get(transport, server)
    assert not isinstance(caught.value, AuthError)
    assert len(server.arrivals) == 1
    message = str(caught.value)
    assert "x" * 150 in message
    assert "x" * 200 not in message
    assert "OTHERFIELD" not in message


async def test_truncated_json_is_fetched_again(
    transport: Transport, server: ScriptedServer
) -> None:
    """A 200 whose JSON is cut short is a bad page: fetched again, then parsed."""
    server.script = [server.raw(b'{"rows": [1, 2'), server.raw(b'{"rows": [1, 2]}')]
    assert await get(transport, server) == {"rows": [1, 2]}
    assert len(server.arrivals) == 2


async def test_truncated_json_every_time_raises_bad_page(
    transport: Transport, server: ScriptedServer
) -> None:
    """A page that never parses raises BadPageError after the policy's attempts."""
    server.default = server.raw(b'{"rows": [')
    with pytest.raises(BadPageError, match=r"^test\.list: .*not complete JSON; will fetch"):
        await get(transport, server)
    assert len(server.arrivals) == FAST.attempts


async def test_connection_dropped_mid_body_is_retried(
    transport: Transport, server: ScriptedServer
) -> None:
    """A connection closed in the middle of the body is retried and the next answer returned."""
    server.script = [server.drop_mid_body(), server.status(200, {"ok": True})]
    assert await get(transport, server) == {"ok": True}
    assert len(server.arrivals) == 2


async def test_slow_response_times_out_after_bounded_attempts(
    transport: Transport, server: ScriptedServer
) -> None:
    """A vendor slower than the request timeout yields TransientError after the attempts."""
    server.default = server.stall(10.0)
    started = time.monotonic()
    with pytest.raises(TransientError, match="timed out"):
        await get(transport, server, timeout_s=0.3, policy=RetryPolicy(attempts=2, wait_jitter_s=0))
    assert len(server.arrivals) == 2
    # Well under one stall of the vendor (10 s): the attempts were cut, however slow the machine.
    assert time.monotonic() - started < 8.0


async def test_retries_exhausted_propagate_the_last_error(
    transport: Transport, server: ScriptedServer, observed: Observed
) -> None:
    """When every attempt fails, the last error propagates after exactly `attempts` requests."""
    server.default = server.status(503, {"message": "maintenance"})
    with capture_logs() as logs, pytest.raises(TransientError, match=r"503.*maintenance"):
        await get(transport, server)
    assert len(server.arrivals) == FAST.attempts
    assert observed.responses == [503] * FAST.attempts
    assert len(observed.errors) == FAST.attempts
    assert [attempt for attempt, _ in observed.retries] == [1, 2]
    events = [e["event"] for e in logs if e["event"].startswith("http.")]
    assert events == ["http.retry", "http.retry", "http.failed"]
    assert {e["endpoint"] for e in logs if e["event"].startswith("http.")} == {"test.list"}


async def test_limiter_is_honoured_across_concurrent_requests(
    transport: Transport, server: ScriptedServer
) -> None:
    """Ten concurrent requests under a 3-per-0.4 s limit never arrive 4 in one 0.4 s window."""
    server.default = server.status(200, {"ok": True})
    limiter = SlidingWindowLimiter(3, 0.4, margin=0.1)
    results = await asyncio.gather(*(get(transport, server, limiter=limiter) for _ in range(10)))
    assert results == [{"ok": True}] * 10
    arrivals = [a.at for a in server.arrivals]
    assert len(arrivals) == 10
    assert max_in_any_window(arrivals, 0.4) <= 3
    assert max_in_any_window(arrivals, 0.4) == 3  # the budget is used, not wasted


async def test_retries_count_against_the_rate_limit(
    transport: Transport, server: ScriptedServer
) -> None:
    """A retry waits for the limiter like any request: 1 per 0.3 s keeps 3 attempts 0.3 s apart."""
    server.default = server.status(500)
    limiter = SlidingWindowLimiter(1, 0.3, margin=0.05)
    with pytest.raises(TransientError):
        await get(transport, server, limiter=limiter)
    times = [a.at for a in server.arrivals]
    assert len(times) == 3
    assert all(b - a >= 0.3 for a, b in itertools.pairwise(times))


SECRET_SCRIPTS: dict[str, Callable[[ScriptedServer], list[Step]]] = {
    "5xx exhausted": lambda s: [s.status(500, {"message": "bad token=SEKRET"})] * 3,
    "dropped": lambda s: [s.drop_mid_body()] * 3,
    "auth echo": lambda s: [s.status(401, {"message": "token SEKRET / Bearer SEKRET2 invalid"})],
    "not found echo": lambda s: [s.status(404, {"message": "no route /secret?token=SEKRET"})],
    "timeout": lambda s: [s.stall(10.0)] * 3,
    "rate limited": lambda s: [s.status(429, {"message": "api_key SEKRET3 over limit"})] * 3,
}


@pytest.mark.parametrize("script", sorted(SECRET_SCRIPTS))
async def test_secrets_never_reach_errors_or_logs(
    transport: Transport, server: ScriptedServer, script: str
) -> None:
    """Tokens in the query, in params and in headers appear in no error, traceback or log line."""
    server.script = SECRET_SCRIPTS[script](server)
    limiter = SlidingWindowLimiter(100, 0.05, margin=0.0)
    with capture_logs() as logs, pytest.raises(CdrsyncError) as caught:
        await transport.request(
            "GET",
            f"{server.base}/secret?token=SEKRET",
            limiter=limiter,
            endpoint="test.secret",
            parse=as_json,
            params={"api_key": "SEKRET3"},
            headers={"Authorization": "Bearer SEKRET2"},
            timeout_s=0.3,
        )
    assert "SEKRET" in server.arrivals[0].path_qs  # the secret was really sent
    assert "test.secret" in str(caught.value)
    rendered = "".join(traceback.format_exception(caught.value))
    assert "SEKRET" not in rendered
    assert "SEKRET" not in repr(logs)
    assert logs  # something was logged, and it was checked


async def test_get_with_json_body_delivers_the_body(
    transport: Transport, server: ScriptedServer
) -> None:
    """A GET with json_body sends the bytes as an application/json body (Ozonetel's bulk API)."""
    server.default = server.status(200, {"ok": True})
    body = orjson.dumps({"fromDate": "2024-01-01 00:00:00", "pageNo": 1})
    await get(transport, server, json_body=body, headers={"apiKey": "k"})
    (arrival,) = server.arrivals
    assert arrival.method == "GET"
    assert arrival.body == body
    assert arrival.headers["Content-Type"] == "application/json"
    assert arrival.headers["apiKey"] == "k"


async def test_cancellation_propagates_promptly_and_keeps_the_limiter_usable(
    transport: Transport, server: ScriptedServer
) -> None:
    """Cancelling an in-flight request raises CancelledError at once; the limiter still works."""
    server.script = [server.stall(10.0), server.status(200, {"ok": True})]
    limiter = SlidingWindowLimiter(2, 5.0, margin=0.0)
    task = asyncio.create_task(get(transport, server, limiter=limiter))
    for _ in range(3000):  # until the request is in flight (up to 30 s on a loaded machine)
        if server.arrivals:
            break
        await asyncio.sleep(0.01)
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Well under the vendor's 10 s stall: the cancellation did not wait for its answer.
    assert time.monotonic() - started < 5.0
    assert limiter.used(time.monotonic()) == 1
    assert await asyncio.wait_for(get(transport, server, limiter=limiter), 2.0) == {"ok": True}


async def test_waiting_for_the_limiter_is_cancellable(
    transport: Transport, server: ScriptedServer
) -> None:
    """A request queued on an exhausted limiter is cancelled promptly and takes no slot."""
    server.default = server.status(200, {"ok": True})
    limiter = SlidingWindowLimiter(1, 30.0, margin=0.0)
    await get(transport, server, limiter=limiter)
    task = asyncio.create_task(get(transport, server, limiter=limiter))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(server.arrivals) == 1
    assert limiter.used(time.monotonic()) == 1


NOW = dt.datetime(2024, 5, 1, 12, 0, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("soon", None),
        ("-5", None),
        ("nan", None),
        ("0", 0.0),
        ("1", 1.0),
        (" 120 ", 120.0),
        ("2.5", 2.5),
        ("99999999", 3600.0),
        (email.utils.format_datetime(NOW + dt.timedelta(seconds=30), usegmt=True), 30.0),
        (email.utils.format_datetime(NOW - dt.timedelta(seconds=30), usegmt=True), 0.0),
        ("Wed, 01 May 2024 12:01:00 GMT", 60.0),
    ],
)
def test_parse_retry_after(header: str | None, expected: float | None) -> None:
    """Retry-After is read as delta-seconds or an HTTP-date; garbage means None."""
    assert parse_retry_after(header, now=NOW) == expected
