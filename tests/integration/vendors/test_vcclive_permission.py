"""VCC Live refusing the API token the CDR lookup altogether (a 403 "permission denied"): the
lookup stream holds that kind for the account instead of ending every pending lookup one by one.
The simulator over real HTTP on a hand-driven clock, the real lookup stream and PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt

from structlog.testing import capture_logs
from test_vcclive_http import Vcc, vcc  # type: ignore[import-not-found]  # a sibling pytest puts on sys.path

from cdrsync.engine.lookup import LookupStream
from cdrsync.model import LookupRequest
from cdrsync.store.store import Store
from cdrsync.vendors.vcclive import VccLookups
from support import sql_value

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
    """A reload's lift_holds ends a permission hold: the next cycle asks VCC Live again."""
    account = vcc.account()
    stream = LookupStream(
        name=f"{account.name}/lookup", account=account, source=vcc.client(VccLookups),
        store=store, locks=store.lock_session(), stop=asyncio.Event(), clock=vcc.clock.utc,
    )  # fmt: skip
    queued_at = vcc.clock.utc() - dt.timedelta(minutes=10)
    month = {"year": queued_at.year, "month": queued_at.month}
    await store.queues.enqueue(
        "vcclive", account.name, [LookupRequest("vcclive.cdr", "uuid-1", month, queued_at),
                                  LookupRequest("vcclive.cdr", "uuid-2", month, queued_at)],
        now=queued_at,
    )  # fmt: skip
    vcc.sim.set_faults(cdr_errors=DENIED)
    await stream.cycle()
    assert vcc.sim.stats.requests == {"cdr": 1}
    vcc.sim.set_faults(cdr_errors=())
    assert stream.lift_holds() == ["vcclive.cdr"]
    await stream.cycle()
    assert vcc.sim.stats.requests == {"cdr": 2}  # uuid-2; uuid-1 waits for its own next attempt
