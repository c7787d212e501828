"""A reload lifts Ozonetel's generateToken refusal hold, even with the same credentials: the
operator may have fixed the account on Ozonetel's side. The daemon runs in this process against
the Ozonetel simulator over HTTP on 127.0.0.1 and real PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses

from test_ozonetel_daemon import (  # type: ignore[import-not-found]  # a sibling pytest puts on sys.path
    ACCOUNT,
    HISTORY,
    USER,
    oz_settings,
    serve,
    served,
    sim_config,
)

from cdrsync.app import daemon as app
from cdrsync.simulator.ozonetel import OzonetelSimulator
from cdrsync.simulator.server import RunningServer
from process_support import fetch
from support import eventually

__all__ = ["served"]  # the fixture, imported for this module's tests


async def held_errors(dsn: str) -> set[str]:
    """The account's window streams whose last failed cycle was the refusal hold."""
    rows = await fetch(dsn, "SELECT stream, last_error FROM sync_state")
    return {r["stream"] for r in rows if "token_refusal_hold" in (r["last_error"] or "")}


async def test_a_reload_with_the_same_credentials_asks_generate_token_again(
    dsn: str, served: list[RunningServer]
) -> None:
    """After a refused generateToken both streams wait out the hold; a reload asks again."""
    # The account's username is not yet enabled on Ozonetel's side: generateToken refuses it.
    sim = OzonetelSimulator(sim_config(auth="token", username="not-yet", live_per_minute=0))
    settings = oz_settings(await serve(served, sim), dsn, auth="token")
    stop, reload = asyncio.Event(), asyncio.Event()
    daemon = asyncio.create_task(
        app.run(settings, stop=stop, reload=reload, reloader=lambda: settings)
    )
    try:

        async def held() -> bool:
            return await held_errors(dsn) == {f"{ACCOUNT}/list", HISTORY}

        assert await eventually(held, timeout=60)
        assert (sim.stats.requests["token"], sim.stats.tokens_issued) == (1, 0)
        sim.config = dataclasses.replace(sim.config, username=USER)  # fixed in the portal
        reload.set()

        async def issued() -> bool:
            return sim.stats.tokens_issued == 1

        assert await eventually(issued, timeout=90), sim.stats.requests
    finally:
        stop.set()
        await asyncio.wait_for(daemon, timeout=30)
    assert sim.stats.requests["token"] == 2
