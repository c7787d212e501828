"""The simulated Ozonetel CloudAgent over HTTP (aiohttp.web), its push sender, and /_sim/ routes.

Vendor routes: ``POST /ca_apis/CAToken/generateToken``, ``GET /ca_reports/fetchCdrByPagination``
and ``GET /ca_reports/fetchCDRDetails`` (GETs with a JSON body; a POST gets aiohttp's 405),
``GET /CAServices/CDR/callbacks.php``. Control routes (no auth): ``GET /_sim/truth[?at=]``,
``GET /_sim/stats``, ``POST /_sim/faults``, ``POST /_sim/stop_live``.

``run_pushes`` is the simulator's only background task: it POSTs each live call's callback
record, once the call has ended (+ ``push_delay_s``), as form data with one field ``data``
holding the JSON, the way Ozonetel's "URL to Push" delivers it; a failed push is tried again
``push_attempts`` times in all ("Call back hit tries").
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from cdrsync.simulator.ozonetel import OzonetelSimulator, SimReply
from cdrsync.simulator.server import RunningServer, serve_app

__all__ = [
    "build_ozonetel_app",
    "run_pushes",
    "serve_ozonetel_forever",
    "start_ozonetel_server",
]

_SIM_KEY = web.AppKey("ozonetel_sim", OzonetelSimulator)
_JSON = "application/json"


def _reply(reply: SimReply) -> web.Response:
    if isinstance(reply.body, bytes):
        # A drawn fault: a 5xx page from the gateway, or a JSON body cut short.
        kind = "text/html" if reply.status >= 500 else _JSON
        return web.Response(body=reply.body, status=reply.status, content_type=kind)
    return web.Response(body=orjson.dumps(reply.body), status=reply.status, content_type=_JSON)


async def _token(request: web.Request) -> web.Response:
    """POST generateToken: header apiKey, JSON body {"userName"} -> {"token"}."""
    sim = request.app[_SIM_KEY]
    return _reply(sim.handle_token(request.headers.get("apiKey"), await request.read()))


def _bulk(endpoint: str) -> Callable[[web.Request], Any]:
    async def handler(request: web.Request) -> web.Response:
        sim = request.app[_SIM_KEY]
        reply = sim.handle_bulk(
            endpoint,
            request.headers.get("apiKey"),
            request.headers.get("Authorization"),
            await request.read(),
            request.query,
        )
        return _reply(reply)

    handler.__doc__ = f"GET the bulk report ({endpoint}): a JSON body with the dates."
    return handler


async def _callbacks(request: web.Request) -> web.Response:
    """GET callbacks.php?userName&apiKey&ucid&reportType: one leg's callback record."""
    return _reply(request.app[_SIM_KEY].handle_callbacks(request.query))


async def _read_json(request: web.Request) -> dict[str, Any]:
    with contextlib.suppress(ValueError):
        data = orjson.loads(await request.read())
        if isinstance(data, dict):
            return data
    return {}


def _at(request: web.Request) -> float | None:
    raw = request.query.get("at")
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        raise web.HTTPBadRequest(text="at must be epoch seconds") from None


async def _sim_truth(request: web.Request) -> web.Response:
    """GET /_sim/truth[?at=epoch]: {UCID: bulk record} of every visible leg."""
    sim = request.app[_SIM_KEY]
    return web.Response(body=orjson.dumps(sim.truth(_at(request))), content_type=_JSON)


async def _sim_stats(request: web.Request) -> web.Response:
    """GET /_sim/stats: requests and responses per endpoint, accepted times, tokens, pushes."""
    sim = request.app[_SIM_KEY]
    doc = {**sim.stats.as_dict(), "faults": sim.faults}
    return web.Response(body=orjson.dumps(doc), content_type=_JSON)


async def _sim_faults(request: web.Request) -> web.Response:
    """POST /_sim/faults: JSON with fault fields (and "expire_tokens": true); returns them."""
    sim = request.app[_SIM_KEY]
    try:
        faults = sim.set_faults(**(await _read_json(request)))
    except (TypeError, ValueError) as exc:
        return web.json_response({"status": "false", "message": str(exc)}, status=400)
    return web.json_response(faults)


async def _sim_stop_live(request: web.Request) -> web.Response:
    """POST /_sim/stop_live (optional JSON {"at": epoch}): make the truth finite."""
    sim = request.app[_SIM_KEY]
    at = (await _read_json(request)).get("at")
    sim.stop_live(float(at) if isinstance(at, int | float) else None)
    body = orjson.dumps({"last_visible_time": sim.last_visible_time()})  # inf -> null
    return web.Response(body=body, content_type=_JSON)


def build_ozonetel_app(sim: OzonetelSimulator) -> web.Application:
    """The aiohttp application serving ``sim``."""
    app = web.Application()
    app[_SIM_KEY] = sim
    app.router.add_post("/ca_apis/CAToken/generateToken", _token)
    app.router.add_get("/ca_reports/fetchCdrByPagination", _bulk("bulk"))
    app.router.add_get("/ca_reports/fetchCDRDetails", _bulk("details"))
    app.router.add_get("/CAServices/CDR/callbacks.php", _callbacks)
    app.router.add_get("/_sim/truth", _sim_truth)
    app.router.add_get("/_sim/stats", _sim_stats)
    app.router.add_post("/_sim/faults", _sim_faults)
    app.router.add_post("/_sim/stop_live", _sim_stop_live)
    return app


async def start_ozonetel_server(
    sim: OzonetelSimulator, host: str = "127.0.0.1", port: int = 0
) -> RunningServer:
    """Serve ``sim`` on host:port (0 picks a free port) once it accepts connections."""
    return await serve_app(build_ozonetel_app(sim), host, port)


def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))


async def _deliver(
    session: aiohttp.ClientSession, url: str, payload: bytes, attempts: int, wait_s: float
) -> tuple[bool, int]:
    """POST one push as form data ``data=<json>``; (delivered, attempts made)."""
    for attempt in range(1, attempts + 1):
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
            async with session.post(url, data={"data": payload.decode()}) as resp:
                await resp.read()
                if 200 <= resp.status <= 299:
                    return True, attempt
        if attempt < attempts:
            await asyncio.sleep(wait_s * attempt)
    return False, attempts


async def run_pushes(
    sim: OzonetelSimulator,
    url: str,
    stop: asyncio.Event,
    *,
    session_factory: Callable[[], aiohttp.ClientSession] = _session,
    poll_s: float = 0.05,
    retry_wait_s: float = 0.2,
) -> None:
    """Push every live call to ``url`` (the daemon's ``/hooks/{account}?token=...``) once it
    has ended + ``push_delay_s``, until ``stop`` is set. Pushes already taken when ``stop``
    is set are still delivered; ``sim.stats`` counts them."""
    async with session_factory() as session:
        while not stop.is_set():
            for _, payload in sim.due_pushes():
                delivered, attempts = await _deliver(
                    session, url, payload, sim.config.push_attempts, retry_wait_s
                )
                sim.record_push(delivered=delivered, attempts=attempts)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), poll_s)


async def serve_ozonetel_forever(
    sim: OzonetelSimulator, host: str, port: int, stop: asyncio.Event
) -> None:
    """Serve ``sim`` until ``stop`` is set, pushing to ``config.push_url`` when one is set."""
    server = await start_ozonetel_server(sim, host, port)
    try:
        if sim.config.push_url:
            await run_pushes(sim, sim.config.push_url, stop)
        else:
            await stop.wait()
    finally:
        await server.close()
