"""Ozonetel leg keys under both readings of monitorUCID (issue 9): the daemon against the
simulator over HTTP on 127.0.0.1 and real PostgreSQL, pushes, CallBacks lookups and the list."""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import socket
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from cdrsync.config import Settings, parse
from cdrsync.simulator.ozonetel import OzonetelSimConfig, OzonetelSimulator, SimLeg
from cdrsync.simulator.ozonetel_calls import callback_record
from cdrsync.simulator.ozonetel_server import run_pushes, start_ozonetel_server
from cdrsync.simulator.server import RunningServer
from cdrsync.store.store import Store
from cdrsync.vendors.acefone import digest
from cdrsync.vendors.ozonetel import IST, forget_tokens, scrub
from process_support import fetch
from support import differences, eventually, running_daemon

ACCOUNT = "oz-legs"
USER = "sim-user"
API_KEY = "oz-legs-key-5d1e"
SECRET = "oz-legs-hook"


def settings(base_url: str, dsn: str, port: int, settle: str) -> Settings:
    """The test account: lookups at once and again a second later, the list ``settle`` behind."""
    start = (dt.datetime.now(IST) - dt.timedelta(days=2)).date().isoformat()
    account = {
        "name": ACCOUNT, "vendor": "ozonetel", "base_url": base_url, "username": USER,
        "api_key": API_KEY, "webhook_secret": SECRET, "start": start, "poll_interval": "300ms",
        "settle": settle, "lookback": "1h", "window": "1h", "history_window": "1d",
        "page_size": 50, "lookup_delay": "0s", "lookup_retry": "1s",
        "rate_limits": {"bulk": "20/2s", "lookup": "1000/min", "token": "10/h"},
    }  # fmt: skip
    return parse(
        {
            "database": {"dsn": dsn, "schema": "cdrsync"},
            "daemon": {"state_dir": "/tmp", "http_listen": f"127.0.0.1:{port}"},
            "accounts": [account],
        },
        source="<test>",
        environ={},
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on (for the daemon's http_listen)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def served() -> AsyncIterator[list[RunningServer]]:
    """Simulator servers a test starts; closed at its end (and no token cached across)."""
    forget_tokens()
    servers: list[RunningServer] = []
    try:
        yield servers
    finally:
        for server in servers:
            await server.close()
        forget_tokens()


def live_legs(sim: OzonetelSimulator) -> list[SimLeg]:
    """The legs of live calls (the pushed ones), once live traffic has stopped."""
    return [leg for leg in sim.legs(math.inf) if leg.live]


def transfers(legs: list[SimLeg]) -> int:
    """How many calls among ``legs`` have more than one leg (a transfer)."""
    calls: dict[str, int] = {}
    for leg in legs:
        calls[leg.call_id] = calls.get(leg.call_id, 0) + 1
    return sum(n > 1 for n in calls.values())


def truth_hashes(sim: OzonetelSimulator) -> dict[str, bytes]:
    """UCID -> the content hash of the list's copy of the leg."""
    return {
        ucid: digest(orjson.dumps(scrub(record), option=orjson.OPT_SORT_KEYS))
        for ucid, record in sim.truth().items()
    }


async def lookups_settled(dsn: str) -> bool:
    """Every lookup done, or waiting for 03:00 IST (nothing due within the next minute)."""
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)
    rows = await fetch(
        dsn,
        "SELECT count(*) FROM lookups WHERE state = 'pending' AND next_attempt_at < $1",
        soon,
    )
    return bool(rows[0][0] == 0)


@pytest.mark.timeout(240)  # its bounded waits add up to more than the default 120 s
@pytest.mark.parametrize("transfer_legs", [False, True], ids=["own-monitor", "shared-monitor"])
async def test_each_legs_pushed_looked_up_and_listed_copies_end_as_one_row(
    dsn: str, store: Store, served: list[RunningServer], transfer_legs: bool
) -> None:
    """Whether monitorUCID is the leg's own UCID or the first leg's, shared by a transferred
    call's legs: each leg ends as one row holding its own push and lookup, calls = truth."""
    sim = OzonetelSimulator(
        OzonetelSimConfig(
            seed=23, backlog=40, backlog_days=1.0, live_per_minute=120.0, legs_fraction=0.7,
            answered_fraction=1.0, username=USER, api_key=API_KEY, visible_delay_s=(0.0, 0.3),
            push_delay_s=0.5, bulk_rate_limit=20, bulk_rate_period_s=2.0,
            lookup_rate_limit=1000, transfer_legs=transfer_legs,
        )
    )  # fmt: skip
    server = await start_ozonetel_server(sim)
    served.append(server)
    port = free_port()
    hook = f"http://127.0.0.1:{port}/hooks/{ACCOUNT}?token={SECRET}"

    # 1. Pushes and CallBacks lookups only: the list stays 15 minutes behind the live calls.
    stop_pushes = asyncio.Event()
    async with running_daemon(settings(server.base_url, dsn, port, settle="15m")) as daemon:
        pushes = asyncio.create_task(run_pushes(sim, hook, stop_pushes))

        async def transfers_ended() -> bool:
            return transfers([leg for leg in sim.legs() if leg.live]) >= 3

        assert await eventually(transfers_ended, timeout=30)
        sim.stop_live()
        pushed = live_legs(sim)

        async def all_pushed() -> bool:
            return sim.stats.pushes_sent == len(pushed)

        assert await eventually(all_pushed, timeout=30)
        stop_pushes.set()
        await pushes
        assert await eventually(lambda: lookups_settled(dsn), timeout=30)
        assert not daemon.done()
    assert transfers(pushed) >= 3
    # The reading served: later legs name the first leg (shared) or themselves.
    assert any(leg.ucid != leg.monitor for leg in pushed) is transfer_legs
    rows = await fetch(dsn, "SELECT call_key, source FROM calls WHERE source <> 'list'")
    assert sorted(r["call_key"] for r in rows) == sorted(leg.ucid for leg in pushed)
    lookups = await fetch(dsn, "SELECT call_key, state FROM lookups")
    assert sorted(r["call_key"] for r in lookups) == sorted(leg.ucid for leg in pushed)
    looked_up = {r["call_key"] for r in lookups if r["state"] == "done"}
    assert looked_up or dt.datetime.now(IST).time() < dt.time(0, 15), "no lookup was answered"

    # 2. The list reads them too: every leg once, its own push and lookup kept beside it.
    async with running_daemon(settings(server.base_url, dsn, port, settle="1s")) as daemon:

        async def equal() -> bool:
            stored = await store.call_hashes("ozonetel", ACCOUNT)
            return not any(differences(truth_hashes(sim), stored).values())

        assert await eventually(equal, timeout=60), differences(
            truth_hashes(sim), await store.call_hashes("ozonetel", ACCOUNT)
        )
        assert not daemon.done()
    calls = {r["call_key"]: r for r in await fetch(dsn, "SELECT * FROM calls")}
    assert set(calls) == set(sim.truth())
    pushed_ucids = {leg.ucid for leg in pushed}
    for leg in pushed:
        row = calls[leg.ucid]
        own: dict[str, Any] = callback_record(leg, sim.config)
        other = orjson.loads(row["raw_other"])
        assert row["source"] == "list"
        assert other["push"]["StartTime"] == own["StartTime"], leg.ucid
        assert other["push"]["AgentPhoneNumber"] == own["AgentPhoneNumber"], leg.ucid
        assert row["agent_number"] == own["AgentPhoneNumber"], leg.ucid  # only the push has it
        if leg.ucid in looked_up:
            assert other["lookup"]["StartTime"] == own["StartTime"], leg.ucid
        else:
            assert set(other) == {"push"}
    for key, row in calls.items():
        if key not in pushed_ucids:
            assert orjson.loads(row["raw_other"]) == {}, key
