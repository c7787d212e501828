"""The simulated Acefone API over HTTP (aiohttp.web), plus ``/_sim/`` control routes.

Vendor routes: ``POST /v1/auth/login``, ``POST /v1/auth/refresh``, ``GET /v1/call/records``.
Control routes (no auth; for a simulator in another process): ``GET /_sim/truth``,
``GET /_sim/stats``, ``POST /_sim/stop_live``, ``POST /_sim/faults``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass

import orjson
from aiohttp import web

from cdrsync.simulator.acefone import AcefoneSimulator, QueryError

_SIM_KEY = web.AppKey("acefone_sim", AcefoneSimulator)
_TENANTS_KEY = web.AppKey("acefone_tenants", dict)
_JSON = "application/json"
_HTML_503 = (
    "<html>\r\n<head><title>503 Service Temporarily Unavailable</title></head>\r\n<body>\r\n"
    "<center><h1>503 Service Temporarily Unavailable</h1></center>\r\n</body>\r\n</html>\r\n"
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(data: object, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type=_JSON, headers=headers)


@web.middleware
async def _gateway_403(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer unknown routes like Acefone's AWS API Gateway does: 403, never 404 or 405."""
    try:
        return await handler(request)
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed):
        return _json({"message": "Forbidden"}, status=403)


async def _read_json(request: web.Request) -> dict[str, object]:
    try:
        data = await request.json(loads=orjson.loads)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _token_body(token: str, sim: AcefoneSimulator) -> web.Response:
    return _json(
        {
            "success": True,
            "access_token": token,
            "token_type": "bearer",
            "expires_in": int(sim.config.token_ttl_s),
        }
    )


async def _login(request: web.Request) -> web.Response:
    """POST /v1/auth/login: email (or login_id) and password for a one-hour token."""
    sim = request.app[_SIM_KEY]
    body = await _read_json(request)
    login = body.get("email", body.get("login_id"))
    password = body.get("password")
    token = sim.login(
        login if isinstance(login, str) else None,
        password if isinstance(password, str) else None,
    )
    if token is None:
        return _json({"success": False, "message": "Invalid credentials"}, status=401)
    return _token_body(token, sim)


async def _refresh(request: web.Request) -> web.Response:
    """POST /v1/auth/refresh: a valid Bearer buys a fresh token."""
    sim = request.app[_SIM_KEY]
    token = sim.refresh(request.headers.get("Authorization"))
    if token is None:
        return _json({"success": False, "message": "Unauthenticated"}, status=401)
    return _token_body(token, sim)


def _sim_of(request: web.Request) -> AcefoneSimulator:
    """The account a list request reads: told apart by its token when the app serves several
    (``build_app(..., tenants=...)``); an unknown token goes to ``sim``, which answers 401."""
    tenants = request.app.get(_TENANTS_KEY)
    if tenants:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        found = tenants.get(token.strip()) if scheme.lower() == "bearer" else None
        if found is not None:
            return found  # type: ignore[no-any-return]
    return request.app[_SIM_KEY]


async def _records(request: web.Request) -> web.Response:
    """GET /v1/call/records: auth, rate limit, faults, then one page as seen right now."""
    sim = _sim_of(request)
    admission = sim.admit_list_request(request.headers.get("Authorization"))
    if admission.status == 200:
        response = await _serve_records(request, sim, admission.slow_s, admission.truncate)
    elif admission.status == 429:
        # The vendor sends success as the STRING "false" here (seen by integrators).
        headers = None
        if admission.retry_after is not None:
            headers = {"Retry-After": str(admission.retry_after)}
        response = _json(
            {"success": "false", "message": "Too Many Attempts."}, status=429, headers=headers
        )
    elif admission.status == 503:
        response = web.Response(text=_HTML_503, status=503, content_type="text/html")
    else:
        response = _json({"success": False, "message": "Unauthenticated"}, status=401)
    sim.record_response(response.status)
    return response


async def _serve_records(
    request: web.Request, sim: AcefoneSimulator, slow_s: float, truncate: bool
) -> web.Response:
    if slow_s:
        await asyncio.sleep(slow_s)
    q = request.query
    try:
        body = sim.list_page(q.get("from_date"), q.get("to_date"), q.get("page"), q.get("limit"))
    except QueryError as exc:
        return _json({"success": False, "message": str(exc)}, status=400)
    if truncate:
        body = body[: max(len(body) // 2, 1)]  # a connection cut mid-body, framed as complete
    return web.Response(body=body, content_type=_JSON)


async def _sim_truth(request: web.Request) -> web.StreamResponse:
    """GET /_sim/truth[?at=epoch]: {id: payload} of every visible record, streamed."""
    sim = request.app[_SIM_KEY]
    at = _float_param(request, "at")
    response = web.StreamResponse(headers={"Content-Type": _JSON})
    await response.prepare(request)
    chunk: list[str] = []
    sep = "{"
    for rid, text in sim.iter_truth_json(at):
        chunk.append(f'{sep}"{rid}":{text}')
        sep = ","
        if len(chunk) >= 500:
            await response.write("".join(chunk).encode())
            chunk.clear()
    chunk.append("}" if sep == "," else "{}")
    await response.write("".join(chunk).encode())
    await response.write_eof()
    return response


def _float_param(request: web.Request, name: str) -> float | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        raise web.HTTPBadRequest(text=f"{name} must be epoch seconds") from None


async def _sim_stats(request: web.Request) -> web.Response:
    """GET /_sim/stats: request counters, responses by status, accepted request times."""
    sim = request.app[_SIM_KEY]
    return _json({**sim.stats.as_dict(), "faults": asdict(sim.faults)})


async def _sim_stop_live(request: web.Request) -> web.Response:
    """POST /_sim/stop_live (optional JSON {"at": epoch}): make the truth finite."""
    sim = request.app[_SIM_KEY]
    at = (await _read_json(request)).get("at")
    sim.stop_live(float(at) if isinstance(at, int | float) else None)
    return _json({"last_visible_time": sim.last_visible_time()})


async def _sim_faults(request: web.Request) -> web.Response:
    """POST /_sim/faults: JSON with any of the fault fields or rate_limit; returns them all."""
    sim = request.app[_SIM_KEY]
    try:
        faults = sim.set_faults(**(await _read_json(request)))
    except ValueError as exc:
        return _json({"success": False, "message": str(exc)}, status=400)
    return _json(asdict(faults))


def build_app(
    sim: AcefoneSimulator, *, tenants: dict[str, AcefoneSimulator] | None = None
) -> web.Application:
    """Return the aiohttp application serving ``sim``; with ``tenants`` (static token to
    account), the list endpoint serves each token's own account (the accounts benchmark runs
    a thousand accounts behind one port: a ``base_url`` is scheme and host only). The control
    and token routes serve ``sim``."""
    app = web.Application(middlewares=[_gateway_403])
    app[_SIM_KEY] = sim
    app[_TENANTS_KEY] = dict(tenants or {})
    app.router.add_post("/v1/auth/login", _login)
    app.router.add_post("/v1/auth/refresh", _refresh)
    app.router.add_get("/v1/call/records", _records)
    app.router.add_get("/_sim/truth", _sim_truth)
    app.router.add_get("/_sim/stats", _sim_stats)
    app.router.add_post("/_sim/stop_live", _sim_stop_live)
    app.router.add_post("/_sim/faults", _sim_faults)
    return app


@dataclass(slots=True)
class RunningServer:
    """A simulator listening on a socket; ``close()`` stops it."""

    runner: web.AppRunner
    host: str
    port: int

    @property
    def base_url(self) -> str:
        """The URL to give the daemon as the vendor's base, e.g. "http://127.0.0.1:8085"."""
        return f"http://{self.host}:{self.port}"

    async def close(self) -> None:
        """Stop listening and release the socket."""
        await self.runner.cleanup()


async def start_server(
    sim: AcefoneSimulator, host: str = "127.0.0.1", port: int = 0
) -> RunningServer:
    """Serve ``sim`` on host:port (0 picks a free port) and return once it accepts connections."""
    return await serve_app(build_app(sim), host, port)


async def serve_app(app: web.Application, host: str = "127.0.0.1", port: int = 0) -> RunningServer:
    """Serve any simulator's ``app`` on host:port (0 picks a free port) once it accepts."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = port
    for address in runner.addresses:
        if isinstance(address, tuple):
            bound = int(address[1])
            break
    return RunningServer(runner=runner, host=host, port=bound)


async def serve_forever(sim: AcefoneSimulator, host: str, port: int, stop: asyncio.Event) -> None:
    """Serve ``sim`` until ``stop`` is set (``cdrsync simulate``), then close cleanly."""
    server = await start_server(sim, host, port)
    try:
        await stop.wait()
    finally:
        await server.close()
