"""VCC Live refusing the API token the CDR lookup altogether (a 403 "permission denied"): the
lookup stream holds that kind for the account instead of ending every pending lookup one by one.
The simulator over real HTTP on a hand-driven clock, the real lookup stream and PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt

from structlog.testing import capture_logs
from test_vcclive_http import Vcc, vcc  # type: ignore[import-not-found]  # a sibling pytest puts on sys.path

from cdrsync.app import daemon as app
from cdrsync.engine.lookup import LookupStream
from cdrsync.model import LookupRequest
from cdrsync.simulator.vcclive import VccSimConfig, VccSimulator
from cdrsync.simulator.vcclive_server import start_vcclive_server
from cdrsync.store.store import Store
from cdrsync.vendors.vcclive import VccLookups
from support import eventually, sql_value
from vcclive_support import ACCOUNT, vcc_settings

__all__ = ["vcc"]  # the fixture, imported for this module's tests

DENIED = ({"code": 403, "message": "Permission denied"},)
PENDING = 12


async def test_a_denied_cdr_lookup_holds_the_kind_and_keeps_every_lookup_pending(
    vcc: Vcc, store: Store, dsn: str
) -> None:
    """A 403 costs one request and one warning; all lookups stay pending, resumed after the hold."""
    account = vcc.account(permission_hold="15m")
    name = f"{account.name}/lookup"
    source: VccLookups = vcc.client(VccLookups, permission_hold="15m")
    stream = LookupStream(
        name=name, account=account, source=source, store=store, locks=store.lock_session(),
        stop=asyncio.Event(), clock=vcc.clock.utc,
    )  # fmt: skip
    queued_at = vcc.clock.utc() - dt.timedelta(minutes=10)  # due now (5 min after the push)
    month = {"year": queued_at.year, "month": queued_at.month}
    await store.queues.enqueue(
        "vcclive", account.name,
        [LookupRequest("vcclive.cdr", f"uuid-{n}", month, queued_at) for n in range(PENDING)],
        now=queued_at,
    )  # fmt: skip
    vcc.sim.set_faults(cdr_errors=DENIED)

    async def states() -> str:
        return await sql_value(dsn, "SELECT string_agg(DISTINCT state, ',') FROM lookups")

    with capture_logs() as logs:
        await stream.cycle()
        vcc.clock.t += 60
        await stream.cycle()  # within the hold: nothing is asked
    assert vcc.sim.stats.requests == {"cdr": 1}
    held = [e for e in logs if e["event"] == "lookup.kind_held"]
    assert [(e["log_level"], e["kind"]) for e in held] == [("warning", "vcclive.cdr")]
    assert "permission" in held[0]["action"]
    assert not [e for e in logs if e["event"] == "lookup.attempt_failed"]
    assert await states() == "pending"

    vcc.sim.set_faults(cdr_errors=())  # the permission was granted in VCC Live
    vcc.clock.t += 15 * 60
    await stream.cycle()
    assert vcc.sim.stats.requests["cdr"] == 1 + PENDING
    assert await states() == "pending"  # asked again: the CDRs are "not yet" (404)
    untried = "SELECT count(*) FROM lookups WHERE attempts = 0"
    assert await sql_value(dsn, untried) == 0


async def test_lifting_the_hold_asks_again_at_the_next_cycle(vcc: Vcc, store: Store) -> None:
    """A reload's lift_holds ends a permission hold: the next cycle asks VCC Live again, the
    refused lookup itself too (it was the only one pending)."""
    account = vcc.account()
    stream = LookupStream(
        name=f"{account.name}/lookup", account=account, source=vcc.client(VccLookups),
        store=store, locks=store.lock_session(), stop=asyncio.Event(), clock=vcc.clock.utc,
    )  # fmt: skip
    queued_at = vcc.clock.utc() - dt.timedelta(minutes=10)
    month = {"year": queued_at.year, "month": queued_at.month}
    await store.queues.enqueue(
        "vcclive", account.name, [LookupRequest("vcclive.cdr", "uuid-1", month, queued_at)],
        now=queued_at,
    )  # fmt: skip
    vcc.sim.set_faults(cdr_errors=DENIED)
    await stream.cycle()
    assert vcc.sim.stats.requests == {"cdr": 1}
    vcc.sim.set_faults(cdr_errors=())
    assert stream.lift_holds() == ["vcclive.cdr"]
    await stream.cycle()
    assert vcc.sim.stats.requests == {"cdr": 2}  # uuid-1 again, without waiting out the hold


async def test_a_reload_with_the_same_settings_lifts_the_daemons_hold(
    dsn: str, store: Store
) -> None:
    """In the daemon, a reload that changes nothing asks a held lookup kind again at once."""
    sim = VccSimulator(VccSimConfig(seed=9, backlog=5, live_per_minute=0))
    sim.set_faults(cdr_errors=DENIED)
    server = await start_vcclive_server(sim)
    queued_at = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10)
    month = {"year": queued_at.year, "month": queued_at.month}
    requests = [LookupRequest("vcclive.cdr", f"uuid-{n}", month, queued_at) for n in range(3)]
    await store.queues.enqueue("vcclive", ACCOUNT, requests, now=queued_at)
    settings = vcc_settings(server.base_url, dsn, 0, permission_hold="1h")
    stop, reload = asyncio.Event(), asyncio.Event()
    daemon = asyncio.create_task(
        app.run(settings, stop=stop, reload=reload, reloader=lambda: settings)
    )

    async def asked(times: int) -> bool:
        return sim.stats.requests.get("cdr", 0) >= times

    try:
        assert await eventually(lambda: asked(1), timeout=60)
        held = "SELECT count(*) FROM lookups WHERE state = 'pending' AND attempts = 1"
        assert await eventually(lambda: _equals(dsn, held, 1), timeout=30)
        assert sim.stats.requests["cdr"] == 1
        sim.set_faults(cdr_errors=())  # the permission was granted in VCC Live
        reload.set()
        assert await eventually(lambda: asked(2), timeout=60), sim.stats.requests
    finally:
        stop.set()
        await asyncio.wait_for(daemon, timeout=30)
        await server.close()


async def _equals(dsn: str, query: str, value: int) -> bool:
    return await sql_value(dsn, query) == value
