"""`cdrsync doctor` against the simulators, in each reading of the vendors' docs they serve."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

import pytest

from cdrsync.app.doctor import diagnose
from cdrsync.app.runtime import runtime
from cdrsync.config import Settings, parse
from cdrsync.ops.diagnosis import FAIL, OK, UNKNOWN, AccountReport
from cdrsync.simulator.acefone import AcefoneSimConfig, AcefoneSimulator
from cdrsync.simulator.ozonetel import OzonetelSimConfig, OzonetelSimulator
from cdrsync.simulator.ozonetel_server import start_ozonetel_server
from cdrsync.simulator.server import RunningServer, start_server
from cdrsync.simulator.vcclive import VccSimConfig, VccSimulator
from cdrsync.simulator.vcclive_server import start_vcclive_server
from cdrsync.vendors.ozonetel import forget_tokens
from process_support import to_toml
from support import eventually, running_daemon

OZ_USER, OZ_KEY = "sim-user", "oz-Key-7Hq2-9c4e1b8d0a6f"


@pytest.fixture
async def served() -> AsyncIterator[list[RunningServer]]:
    """Simulator servers a test starts; closed at its end."""
    servers: list[RunningServer] = []
    forget_tokens()
    yield servers
    for server in servers:
        await server.close()
    forget_tokens()


def settings_for(dsn: str, account: dict[str, Any], *, http_listen: str = "") -> Settings:
    """Validated settings of one account on the test database."""
    start = (dt.datetime.now(dt.UTC) - dt.timedelta(days=2)).date().isoformat()
    return parse(
        {
            "database": {"dsn": dsn, "schema": "cdrsync"},
            "daemon": {"state_dir": "/tmp", "http_listen": http_listen},
            "accounts": [{"name": "acct", "start": start, **account}],
        },
        source="<test>",
        environ={},
    )


async def doctor(settings: Settings) -> AccountReport:
    """Doctor's report for the one account, in process (as `cdrsync doctor` builds it)."""
    async with runtime(settings, asyncio.Event(), own_database=False) as rt:
        assert rt is not None
        return await diagnose(rt, settings.accounts[0], now=dt.datetime.now(dt.UTC))


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on (for a running daemon's http_listen)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def check(report: AccountReport, name: str) -> tuple[str, str]:
    """(verdict, observed) of the named check."""
    (found,) = [c for c in report.checks if c.name == name]
    return found.verdict, found.observed


async def acefone(served: list[RunningServer], **sim: Any) -> tuple[AcefoneSimulator, str]:
    """An Acefone simulator with about 80 calls an hour over the last day, served on HTTP."""
    simulator = AcefoneSimulator(AcefoneSimConfig(backlog=2000, backlog_days=1.0, **sim))
    server = await start_server(simulator)
    served.append(server)
    return simulator, server.base_url


def acefone_account(base_url: str, **changes: Any) -> dict[str, Any]:
    return {
        "vendor": "acefone", "base_url": base_url, "token": AcefoneSimConfig().token,
        "page_size": 50, "rate_limits": {"list": "100000/min"}, **changes,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("count_mode", "limit_cap", "count_seen", "cap_seen"),
    [
        ("total", None, "the window's total", "50 rows served when 50 were asked"),
        ("page", None, "per page", "50 rows served when 50 were asked"),
        ("total", 20, "the window's total", "capped: 20 rows a page"),
        ("page", 20, "per page", "capped: 20 rows a page"),
    ],
)
async def test_acefone_doctor_reports_the_count_reading_and_the_real_page_cap(
    dsn: str, served: list[RunningServer], count_mode, limit_cap, count_seen, cap_seen
) -> None:
    """Doctor names which reading of `count` the vendor serves and its real page cap, with at
    most three list requests."""
    sim, url = await acefone(served, count_mode=count_mode, limit_cap=limit_cap)
    report = await doctor(settings_for(dsn, acefone_account(url)))

    assert check(report, "auth")[0] == OK
    assert check(report, "list")[0] == OK
    verdict, observed = check(report, "count")
    assert verdict == OK
    assert count_seen in observed
    assert cap_seen in check(report, "page cap")[1]
    assert check(report, "time zone")[0] == OK
    assert check(report, "fields")[0] == OK
    assert not report.failing
    assert sim.stats.list_requests <= 3


async def test_acefone_doctor_fails_a_time_zone_west_of_the_vendors(
    dsn: str, served: list[RunningServer]
) -> None:
    """IST times read as UTC put the newest calls hours in the future: ✗, the sync will not work."""
    _, url = await acefone(served)
    report = await doctor(settings_for(dsn, acefone_account(url, timezone="UTC")))
    verdict, observed = check(report, "time zone")
    assert verdict == FAIL
    assert "in the future" in observed
    assert report.failing


async def test_acefone_doctor_fails_a_refused_token(dsn: str, served: list[RunningServer]) -> None:
    """A token the vendor refuses is ✗ auth after one request, and nothing else is probed."""
    sim, url = await acefone(served)
    report = await doctor(settings_for(dsn, acefone_account(url, token="not-the-token")))
    assert check(report, "auth")[0] == FAIL
    assert [c.name for c in report.checks] == ["auth"]
    assert report.failing
    assert sim.stats.list_requests == 1


async def ozonetel(served: list[RunningServer], **sim: Any) -> tuple[OzonetelSimulator, str]:
    options: dict[str, Any] = {
        "seed": 5, "backlog": 2000, "backlog_days": 1.0, "live_per_minute": 0.0,
        "legs_fraction": 0.5, "username": OZ_USER, "api_key": OZ_KEY,
        "bulk_rate_limit": 100, "bulk_rate_period_s": 1.0, **sim,
    }  # fmt: skip
    config = OzonetelSimConfig(**options)
    simulator = OzonetelSimulator(config)
    server = await start_ozonetel_server(simulator)
    served.append(server)
    return simulator, server.base_url


def ozonetel_account(base_url: str, bulk: str = "100/s", **changes: Any) -> dict[str, Any]:
    return {
        "vendor": "ozonetel", "base_url": base_url, "username": OZ_USER, "api_key": OZ_KEY,
        "webhook_secret": "hook-secret", "page_size": 50,
        "rate_limits": {"bulk": bulk, "lookup": "1000/min", "token": "10/h"}, **changes,
    }  # fmt: skip


async def test_ozonetel_doctor_fails_a_time_zone_west_of_the_vendors(
    dsn: str, served: list[RunningServer]
) -> None:
    """Ozonetel's IST times read as UTC: the newest call starts hours in the future, ✗."""
    _, url = await ozonetel(served)
    account = ozonetel_account(url, timezone="UTC", page_size=500)
    report = await doctor(settings_for(dsn, account))
    verdict, observed = check(report, "time zone")
    assert verdict == FAIL, observed
    assert report.failing


@pytest.mark.parametrize(
    ("served_mode", "configured", "observed"),
    [
        ("apikey", "apikey", "accepted in apikey mode"),
        ("token", "token", "accepted in token mode"),
        ("apikey", "auto", 'accepted in apikey mode (auth = "auto")'),
        ("token", "auto", 'accepted in token mode (auth = "auto")'),
    ],
)
async def test_ozonetel_doctor_names_the_auth_mode_that_works(
    dsn: str, served: list[RunningServer], served_mode: str, configured: str, observed: str
) -> None:
    """The mode the account uses on Ozonetel's side is named, also when auth = "auto" found it."""
    _, url = await ozonetel(served, auth=served_mode)
    report = await doctor(settings_for(dsn, ozonetel_account(url, auth=configured)))
    assert check(report, "auth") == (OK, observed)


async def test_ozonetel_doctor_finds_the_auth_mode_the_account_uses(
    dsn: str, served: list[RunningServer]
) -> None:
    """An account that is TOKEN on Ozonetel's side, configured as apikey: ✗ auth, naming the
    mode that works and the setting to change."""
    _, url = await ozonetel(served, auth="token")
    report = await doctor(settings_for(dsn, ozonetel_account(url, auth="apikey")))
    verdict, observed = check(report, "auth")
    assert verdict == FAIL
    assert observed == "refused in apikey mode, accepted in token mode"
    assert report.checks[0].change == 'set auth = "token" for this account'
    assert report.failing


@pytest.mark.timeout(180)
async def test_doctor_beside_a_running_daemon_stays_within_the_shared_budget(
    dsn: str, served: list[RunningServer]
) -> None:
    """With the daemon spending an Ozonetel bulk budget of 4 per 8 s, doctor takes its two
    requests from the same budget (rate_grants): the vendor never answers 429."""
    sim, url = await ozonetel(served, bulk_rate_limit=4, bulk_rate_period_s=8.0)
    account = {
        **ozonetel_account(url, bulk="4/8s"), "poll_interval": "300ms", "settle": "1s",
        "window": "1h", "history_window": "1d", "lookback": "1h",
    }  # fmt: skip
    # The daemon binds http_listen: a free port, not a fixed one another run (or, below 1024,
    # the lack of root) could refuse it.
    settings = settings_for(dsn, account, http_listen=f"127.0.0.1:{free_port()}")
    async with running_daemon(settings):

        async def spending() -> bool:
            return len(sim.stats.bulk_times) >= 4

        assert await eventually(spending, timeout=60)  # the daemon has spent a whole window
        report = await doctor(settings)
    assert check(report, "list")[0] == OK
    assert sim.stats.rate_limited.get("bulk", 0) == 0


@pytest.mark.parametrize("shape", ["details", "no_data", "string_total"])
async def test_ozonetel_doctor_names_the_empty_window_answer(
    dsn: str, served: list[RunningServer], shape: str
) -> None:
    """Doctor names the shape of a quiet window's answer and sees the client read it as empty,
    in two bulk requests."""
    sim, url = await ozonetel(served, empty_shape=shape)
    report = await doctor(settings_for(dsn, ozonetel_account(url), http_listen="127.0.0.1:9"))
    assert check(report, "auth")[0] == OK
    verdict, observed = check(report, "empty window")
    assert f"answered as {shape!r}, read as an empty window" in observed
    assert verdict == OK
    assert len(sim.stats.bulk_times) <= 2
    assert len(sim.stats.lookup_times) <= 1


@pytest.mark.parametrize(("transfer_legs", "differ"), [(False, False), (True, True)])
async def test_ozonetel_doctor_reports_whether_monitorucid_differs_from_ucid(
    dsn: str, served: list[RunningServer], transfer_legs: bool, differ: bool
) -> None:
    """Doctor looks up a transferred call's later leg in CallBacks and reports whether its
    monitorUCID is its own UCID or the call's shared one; and which URL to push to."""
    _, url = await ozonetel(served, transfer_legs=transfer_legs)
    report = await doctor(settings_for(dsn, ozonetel_account(url), http_listen="127.0.0.1:9"))
    verdict, observed = check(report, "leg ids")
    assert verdict == OK
    # Every call of today's first page (50 by mid-day; fewer just after IST midnight).
    assert re.search(r"bulk: UCID in (\d+) of \1\b", observed), observed
    assert ("monitorUCID differs from UCID" in observed) == differ, observed
    assert check(report, "push")[0] == UNKNOWN
    assert "/hooks/acct?token=<webhook_secret>" in check(report, "push")[1]


@pytest.mark.parametrize("not_yet", ["404", "empty", "error200"])
async def test_vcclive_doctor_names_the_not_yet_answer(
    dsn: str, served: list[RunningServer], not_yet: Literal["404", "empty", "error200"]
) -> None:
    """Doctor asks for an unknown uuid and names how VCC Live answers "not processed yet"."""
    sim = VccSimulator(VccSimConfig(backlog=200, backlog_days=1.0, not_yet=not_yet))
    server = await start_vcclive_server(sim)
    served.append(server)
    account = {
        "vendor": "vcclive", "base_url": server.base_url, "username": "sim-cc",
        "api_key": "sim-vcc-token", "webhook_secret": "hook-secret", "page_size": 50,
        "rate_limits": {"list": "1000/min", "lookup": "1000/min", "records": "1000/min"},
    }  # fmt: skip
    report = await doctor(settings_for(dsn, account, http_listen="127.0.0.1:9"))
    assert check(report, "auth")[0] == OK
    verdict, observed = check(report, "not yet")
    assert f"answered {not_yet!r}: retried later" in observed
    assert verdict == OK
    assert check(report, "day partition")[0] in (OK, UNKNOWN)  # UNKNOWN just after midnight
    assert sum(sim.stats.requests.values()) <= 2


async def test_doctor_command_prints_a_table_or_json_and_exits_by_the_verdict(
    dsn: str, served: list[RunningServer], tmp_path: Path
) -> None:
    """`cdrsync doctor` exits 0 with a ✓ table when the sync will work, 1 with a ✗ when it
    will not, and --json gives scripts the same verdicts."""
    _, url = await acefone(served)
    good, bad = dict(acefone_account(url), name="good"), dict(acefone_account(url), name="bad")
    bad["token"] = "not-the-token"
    start = (dt.datetime.now(dt.UTC) - dt.timedelta(days=2)).date().isoformat()
    config = tmp_path / "cdrsync.toml"
    config.write_text(
        to_toml(
            {
                "database": {"dsn": dsn, "schema": "cdrsync"},
                "daemon": {"state_dir": str(tmp_path), "http_listen": ""},
                "accounts": [{**good, "start": start}, {**bad, "start": start}],
            }
        ),
        encoding="utf-8",
    )

    async def run(*args: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cdrsync", "doctor", "--config", str(config), *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout=90)
        finally:
            if proc.returncode is None:  # timed out or interrupted: not left running
                proc.kill()
                await proc.wait()
        assert proc.returncode is not None, err.decode()
        return proc.returncode, out.decode()

    code, table = await run("--account", "good")
    assert code == 0, table
    assert "✓ count" in table
    assert "the sync will work" in table
    code, table = await run()
    assert code == 1
    assert "✗ auth" in table
    code, text = await run("--json")
    doc = json.loads(text)
    assert code == 1
    assert doc["ok"] is False
    assert {a["account"]: a["failing"] for a in doc["accounts"]} == {"good": False, "bad": True}
