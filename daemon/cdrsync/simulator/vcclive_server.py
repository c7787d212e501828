"""The simulated VCC Live API over HTTP, its Call Disposition webhooks, and ``/_sim/`` routes.

Vendor routes (HTTP Basic auth; every answer is ``{"response": ..., "errors": [...]}`` served
as ``text/plain; charset=utf-8``, as VCC does): ``GET /v2/cdrs/{y}/{m}[/{d}]``,
``GET /v2/cdr/{y}/{m}/{uuid}``, ``GET /v2/projects/{p}/records/{n}`` and
``POST /v2/projects/{p}/records``. Wire choices where VCC documents nothing:
- a refusal of a well-formed request (a record without ``form``) is HTTP 200 with ``errors``
  filled (the documented envelope); an unknown CDR, record or project is HTTP 404 and a
  malformed path or query HTTP 400, both with the envelope; wrong credentials HTTP 401;
- errors are objects ``{"code": N, "message": "..."}``;
- over a group's rate limit (list, lookup, records) HTTP 429 with ``Retry-After`` (seconds);
  the ``fault_5xx`` fault answers an HTML 503; ``add_fault`` answers 503 AFTER storing.

Control routes (no auth): ``GET /_sim/truth[?at=epoch]``, ``GET /_sim/stats``,
``POST /_sim/faults``, ``POST /_sim/stop_live``, ``GET /_sim/added``.

Webhooks (``run_webhooks``) are posted through cdrsync's own ``Transport`` (the one module
allowed an HTTP client), a few attempts each.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import datetime as dt
import hmac
import math
import random
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any

import orjson
from aiohttp import web

from cdrsync.errors import CdrsyncError
from cdrsync.http.limiter import SlidingWindowLimiter
from cdrsync.http.transport import Response, RetryPolicy, Transport
from cdrsync.simulator.server import RunningServer, serve_app
from cdrsync.simulator.vcclive import AGENTS, FMT, Call, VccSimulator

__all__ = [
    "build_vcclive_app",
    "disposition_payload",
    "due_webhooks",
    "run_webhooks",
    "serve_vcclive_forever",
    "start_vcclive_server",
]

Handler = Callable[[web.Request], Awaitable[web.Response]]
_HTML_503 = "<html><head><title>503 Service Unavailable</title></head><body></body></html>"
_WEBHOOK_POLICY = RetryPolicy(
    attempts=4, timeout_s=30.0, wait_initial_s=0.1, wait_max_s=1.0, wait_jitter_s=0.0
)


class Gate:
    """Admission of vendor requests: Basic auth, a sliding window per group, 5xx faults."""

    def __init__(self, sim: VccSimulator) -> None:
        self.sim = sim
        self._windows: dict[str, deque[float]] = {}
        self._rng = random.Random(sim.config.seed * 104_729 + 3)

    def authorized(self, header: str | None) -> bool:
        """Whether an ``Authorization: Basic`` header carries the account's credentials."""
        scheme, _, token = (header or "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, sep, password = (
                base64.b64decode(token.strip(), validate=True).decode().partition(":")
            )
        except (binascii.Error, UnicodeDecodeError):
            return False
        cfg = self.sim.config
        return bool(sep) and all(
            hmac.compare_digest(given.encode(), want.encode())
            for given, want in ((user, cfg.username), (password, cfg.api_key))
        )

    def admit(self, group: str) -> tuple[int, int | None]:
        """(status, Retry-After): 200, 429 over the group's sliding window, or a 503 fault.

        Only admitted requests enter the window, as a vendor counts what it served."""
        faults, t = self.sim.faults, self.sim.now()
        limit = faults.rate(group)
        if limit is not None:
            count, period = limit
            window = self._windows.setdefault(group, deque())
            while window and window[0] <= t - period:
                window.popleft()
            if len(window) >= count:
                self.sim.stats.rate_limited += 1
                wait = math.ceil(window[0] + period - t) if faults.send_retry_after else None
                return 429, wait
            window.append(t)
        if faults.fault_5xx and self._rng.random() < faults.fault_5xx:
            return 503, None
        return 200, None


_SIM_KEY = web.AppKey("vcclive_sim", VccSimulator)
_GATE_KEY = web.AppKey("vcclive_gate", Gate)


def _envelope(
    response: Any,
    errors: list[Any] | None = None,
    *,
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> web.Response:
    # VCC serves its JSON as text/plain; charset=utf-8 (the documented example's header).
    return web.Response(
        body=orjson.dumps({"response": response, "errors": errors or []}),
        status=status,
        content_type="text/plain",
        charset="utf-8",
        headers=headers,
    )


def _error(status: int, message: str) -> web.Response:
    return _envelope(None, [{"code": status, "message": message}], status=status)


def _count(counter: dict[Any, int], key: Any) -> None:
    counter[key] = counter.get(key, 0) + 1


def _vendor(route: str, group: str, handler: Handler) -> Handler:
    """Wrap a vendor route: count it, check auth, rate limit and faults, count the answer."""

    async def wrapped(request: web.Request) -> web.Response:
        sim, gate = request.app[_SIM_KEY], request.app[_GATE_KEY]
        _count(sim.stats.requests, route)
        if not gate.authorized(request.headers.get("Authorization")):
            response = _error(401, "Authentication failed")
        else:
            status, retry_after = gate.admit(group)
            if status == 429:
                headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
                response = _envelope(
                    None, [{"code": 429, "message": "Too many requests"}], status=429,
                    headers=headers,
                )  # fmt: skip
            elif status == 503:
                response = web.Response(text=_HTML_503, status=503, content_type="text/html")
            else:
                try:
                    response = await handler(request)
                except ValueError as exc:
                    response = _error(400, str(exc))
        _count(sim.stats.responses, response.status)
        return response

    return wrapped


def _int(text: str | None, name: str, default: int | None = None) -> int:
    if text is None or text == "":
        if default is None:
            raise ValueError(f"{name} is required")
        return default
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{name} must be an integer") from None


async def _cdrs(request: web.Request) -> web.Response:
    """GET /v2/cdrs/{year}/{month}[/{day}]?start&num[&projectid]."""
    m, q = request.match_info, request.query
    day = m.get("day")
    project = q.get("projectid")
    try:
        response = request.app[_SIM_KEY].list_cdrs(
            _int(m["year"], "year"),
            _int(m["month"], "month"),
            _int(day, "day") if day is not None else None,
            start=_int(q.get("start"), "start", 0),
            # Documented: "Without populating this parameter, the resource works with a
            # limit of 10".
            num=_int(q.get("num"), "num", 10),
            projectid=_int(project, "projectid") if project is not None else None,
        )
    except ValueError as exc:
        return _error(400, f"invalid request: {exc}")
    return _envelope(response)


async def _cdr(request: web.Request) -> web.Response:
    """GET /v2/cdr/{year}/{month}/{uuid}: 404 until the call is processed."""
    sim, m = request.app[_SIM_KEY], request.match_info
    if sim.faults.cdr_errors:
        return _envelope(None, list(sim.faults.cdr_errors))
    cdr = sim.lookup_cdr(_int(m["year"], "year"), _int(m["month"], "month"), m["uuid"])
    if cdr is None:
        sim.stats.cdr_404 += 1  # "not yet", whichever way not_yet says it
        if sim.config.not_yet == "empty":
            return _envelope([])
        if sim.config.not_yet == "error200":
            return _envelope(None, [{"code": 404, "message": "CDR not found"}])
        return _error(404, "CDR not found")
    return _envelope(cdr)


async def _record(request: web.Request) -> web.Response:
    """GET /v2/projects/{projectid}/records/{numberid}."""
    m = request.match_info
    detail = request.app[_SIM_KEY].record_detail(
        _int(m["projectid"], "projectid"), _int(m["numberid"], "numberid")
    )
    if detail is None:
        return _error(404, "Record not found")
    return _envelope(detail)


async def _add(request: web.Request) -> web.Response:
    """POST /v2/projects/{projectid}/records with one record object or an array of them."""
    sim = request.app[_SIM_KEY]
    try:
        doc = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return _error(400, "Request body is not valid JSON")
    payloads = doc if isinstance(doc, list) else [doc]
    result = sim.add_records(_int(request.match_info["projectid"], "projectid"), payloads)
    if result is None:
        return _error(404, "Project not found")
    if result.errors:
        return _envelope(None, list(result.errors))
    if result.delay_s:
        await asyncio.sleep(result.delay_s)
    if result.fail_after_store:
        # The records exist now; the caller only learns that the answer was lost.
        return web.Response(text=_HTML_503, status=503, content_type="text/html")
    return _envelope(list(result.numberids))


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


async def _read_json(request: web.Request) -> dict[str, Any]:
    with contextlib.suppress(ValueError):
        data = orjson.loads(await request.read() or b"{}")
        if isinstance(data, dict):
            return data
    return {}


async def _sim_truth(request: web.Request) -> web.Response:
    """GET /_sim/truth[?at=epoch]: {uuid: CDR} of every processed call."""
    raw = request.query.get("at")
    try:
        at = float(raw) if raw is not None else None
    except ValueError:
        return _json({"message": "at must be epoch seconds"}, status=400)
    return _json(request.app[_SIM_KEY].truth(at))


async def _sim_stats(request: web.Request) -> web.Response:
    """GET /_sim/stats: counters, per-uuid lookup times, faults."""
    sim = request.app[_SIM_KEY]
    return _json({**sim.stats.as_dict(), "faults": asdict(sim.faults)})


async def _sim_faults(request: web.Request) -> web.Response:
    """POST /_sim/faults: JSON with any VccFaults fields; returns them all."""
    try:
        faults = request.app[_SIM_KEY].set_faults(**(await _read_json(request)))
    except (ValueError, TypeError) as exc:
        return _json({"message": str(exc)}, status=400)
    return _json(asdict(faults))


async def _sim_stop_live(request: web.Request) -> web.Response:
    """POST /_sim/stop_live (optional JSON {"at": epoch}): make the truth finite."""
    sim = request.app[_SIM_KEY]
    at = (await _read_json(request)).get("at")
    sim.stop_live(float(at) if isinstance(at, int | float) else None)
    return _json({"last_visible_time": sim.last_visible_time()})


async def _sim_added(request: web.Request) -> web.Response:
    """GET /_sim/added: every added record with its projectid and numberid, in order."""
    added = request.app[_SIM_KEY].added_records()
    return _json([{"projectid": p, "numberid": n, "payload": body} for p, n, body in added])


def build_vcclive_app(sim: VccSimulator) -> web.Application:
    """The aiohttp application serving ``sim``."""
    app = web.Application()
    app[_SIM_KEY] = sim
    app[_GATE_KEY] = Gate(sim)
    routes = app.router
    cdrs = _vendor("cdrs", "list", _cdrs)
    routes.add_get("/v2/cdrs/{year}/{month}", cdrs)
    routes.add_get("/v2/cdrs/{year}/{month}/{day}", cdrs)
    routes.add_get("/v2/cdr/{year}/{month}/{uuid}", _vendor("cdr", "lookup", _cdr))
    routes.add_get(
        "/v2/projects/{projectid}/records/{numberid}", _vendor("record", "records", _record)
    )
    routes.add_post("/v2/projects/{projectid}/records", _vendor("add_record", "records", _add))
    routes.add_get("/_sim/truth", _sim_truth)
    routes.add_get("/_sim/stats", _sim_stats)
    routes.add_post("/_sim/faults", _sim_faults)
    routes.add_post("/_sim/stop_live", _sim_stop_live)
    routes.add_get("/_sim/added", _sim_added)
    return app


async def start_vcclive_server(
    sim: VccSimulator, host: str = "127.0.0.1", port: int = 0
) -> RunningServer:
    """Serve ``sim`` on host:port (0 picks a free port); returns once it accepts."""
    return await serve_app(build_vcclive_app(sim), host, port)


# ---------------------------------------------------------------------------- webhooks


def disposition_payload(sim: VccSimulator, call: Call) -> dict[str, Any]:
    """The Call Disposition webhook body of a call (the documented top-level fields)."""
    disposed = dt.datetime.fromtimestamp(call.dispose_at, sim.zone).replace(microsecond=0)
    source, destination = (call.customer, call.line) if call.inbound else (call.line, call.customer)
    name = AGENTS[(call.userid - 1) % len(AGENTS)]
    payload = {
        "uuid": call.uuid, "direction": "in" if call.inbound else "out",
        "source": source, "destination": destination,
        "call_start_time": sim.local(call.start), "create_time": disposed.strftime(FMT),
        "timestamp": disposed.isoformat(), "userid": call.userid,
        "username": name.split()[0].lower(), "agentName": name,
        "projectid": call.projectid, "projectName": f"Project {call.projectid}",
        "numberid": call.numberid, "phone_id": "phone1", "closed": 1,
        "disposition": {"id": call.dispositionid, "name": f"Disposition {call.dispositionid}",
                        "assesment": "success" if call.reach == 3 else "failed", "callback": 0},
        "agent_description": "", "next_calldate": None, "nextContactId": None,
        "first_outbound_call_attempt": None, "sum_attempted_calls": 1, "teamids": [1],
        "client_data": {"contacts": {"1": {"phone": call.customer}}},
    }  # fmt: skip
    if not sim.config.webhook_start_time:
        del payload["call_start_time"]
    return payload


def due_webhooks(sim: VccSimulator, at: float | None = None) -> list[tuple[str, dict[str, Any]]]:
    """(uuid, payload) of calls with a webhook, disposed after ``t0`` and by ``at``, not yet
    done. Dispositions before ``t0`` were delivered before the simulation began."""
    t = sim.now() if at is None else at
    return [
        (call.uuid, disposition_payload(sim, call))
        for call in sim.calls(t)
        if call.hook and sim.t0 < call.dispose_at <= t and call.uuid not in sim.hooks_done
    ]


class _Responses:
    """A RequestObserver that counts the receiver's answers in the simulator's stats."""

    def __init__(self, sim: VccSimulator) -> None:
        self._sim = sim

    def on_response(self, endpoint: str, status: int, elapsed_s: float) -> None:
        _count(self._sim.stats.webhook_responses, status)

    def on_error(self, endpoint: str, error: CdrsyncError) -> None:
        """Failures are counted per webhook, not per attempt."""

    def on_retry(self, endpoint: str, attempt: int, wait_s: float, error: CdrsyncError) -> None:
        """Retries show as several responses for one webhook."""


async def run_webhooks(
    sim: VccSimulator, url: str, stop: asyncio.Event, *, poll_s: float = 0.05
) -> None:
    """POST Call Disposition webhooks to ``url`` as calls are disposed, until ``stop``.

    Each is tried a few times (VCC "retries until it succeeds or reaches a limit"; the
    count is UNKNOWN, 4 here); a 4xx answer is final. ``sim.stats`` counts delivered and
    failed webhooks and the receiver's answers by status.
    """
    limiter = SlidingWindowLimiter(10_000, 1.0, margin=0.0, name="vcclive-sim/webhooks")

    async def deliver(transport: Transport, call_uuid: str, payload: dict[str, Any]) -> None:
        def accept(response: Response) -> int:
            return response.status

        try:
            await transport.request(
                "POST", url, limiter=limiter, endpoint="vcclive-sim.webhook", parse=accept,
                json_body=orjson.dumps(payload),
            )  # fmt: skip
        except CdrsyncError:
            sim.stats.webhooks_failed += 1
        else:
            sim.stats.webhooks_sent += 1

    async with Transport.open(policy=_WEBHOOK_POLICY, observer=_Responses(sim)) as transport:
        while not stop.is_set():
            due = due_webhooks(sim)
            # Claimed before sending: the next poll must not send them again meanwhile.
            sim.hooks_done.update(call_uuid for call_uuid, _ in due)
            await asyncio.gather(*(deliver(transport, u, p) for u, p in due))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=poll_s)


async def serve_vcclive_forever(
    sim: VccSimulator, host: str, port: int, stop: asyncio.Event
) -> None:
    """Serve ``sim`` (and send its webhooks to ``config.webhook_url``, if set) until ``stop``."""
    server = await start_vcclive_server(sim, host, port)
    try:
        if sim.config.webhook_url:
            await run_webhooks(sim, sim.config.webhook_url, stop)
        else:
            await stop.wait()
    finally:
        await server.close()
