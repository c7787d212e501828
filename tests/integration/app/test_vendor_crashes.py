"""SIGKILL at random instants, for the vendors with more than one stream: a cdrsync process
syncing the Ozonetel or the VCC Live simulator (served by the test, pushes included) is killed
and restarted several times, and the last run still converges to the vendor's truth."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from zoneinfo import ZoneInfo

import orjson
import pytest

from cdrsync.simulator.ozonetel import OzonetelSimConfig, OzonetelSimulator
from cdrsync.simulator.ozonetel_server import run_pushes, start_ozonetel_server
from cdrsync.simulator.server import RunningServer
from cdrsync.simulator.vcclive import VccSimConfig, VccSimulator
from cdrsync.simulator.vcclive_server import run_webhooks, start_vcclive_server
from cdrsync.store.store import Store
from cdrsync.vendors.acefone import digest
from cdrsync.vendors.ozonetel import IST, forget_tokens, scrub
from process_support import Children, children, duplicate_keys, fetch, write_config
from support import differences, eventually

IN_STEP: dict[str, list[str]] = {"missing": [], "extra": [], "stale": []}
SECRET = "crash-hook-secret-7"
Marks = dict[str, dt.datetime | None]


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on (for the child's http_listen)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def watermarks(dsn: str, streams: tuple[str, ...]) -> Marks:
    """The committed watermark of each stream (None before its first window)."""
    rows = await fetch(dsn, "SELECT stream, watermark FROM sync_state")
    found = {r["stream"]: r["watermark"] for r in rows}
    return {stream: found.get(stream) for stream in streams}


async def call_count(dsn: str) -> int:
    """How many rows ``calls`` holds."""
    return int((await fetch(dsn, "SELECT count(*) AS n FROM calls"))[0]["n"])


def moved_back(history: list[Marks]) -> list[str]:
    """Streams whose watermark went backwards (or was lost) between two observations."""
    bad = []
    for stream in history[0]:
        seen = [marks[stream] for marks in history]
        set_at = next((i for i, m in enumerate(seen) if m is not None), len(seen))
        known = [m for m in seen if m is not None]
        if None in seen[set_at:] or known != sorted(known):
            bad.append(stream)
    return bad


async def kill_at_random(
    kids: Children,
    config: Path,
    dsn: str,
    streams: tuple[str, ...],
    *,
    seed: int,
    runs: int,
    late: float = 2.5,
) -> list[tuple[str, float, int, Marks]]:
    """Start the daemon and SIGKILL it ``runs`` times: the first during start-up, the others
    a random 0.3 to ``late`` s after ``daemon.started``. Where each kill landed: (run, delay, rows,
    watermarks)."""
    rng = random.Random(seed)
    kills = []
    for run in range(runs):
        child = await kids.daemon(config, label=f"run{run}")
        if run == 0:
            delay = rng.uniform(0.05, 0.35)  # imports, connect, migrations, locks
        else:
            assert await child.wait_event("daemon.started", within=30), kids.tails()
            delay = rng.uniform(0.3, late)
        await asyncio.sleep(delay)
        await child.kill()
        kills.append((f"run{run}", delay, await call_count(dsn), await watermarks(dsn, streams)))
    return kills


def report(kills: list[tuple[str, float, int, Marks]]) -> str:
    """Where the kills landed, one line each (printed, and quoted by failed assertions)."""
    return "\n".join(f"{label}: +{d:.2f}s rows={n} {marks}" for label, d, n, marks in kills)


async def converge(
    check: Callable[[], Awaitable[dict[str, list[str]]]],
    settled: Callable[[], bool],
    within: float,
) -> dict[str, list[str]]:
    """Wait (bounded) until ``check()`` finds no difference once ``settled()``; the last one."""
    deadline = time.monotonic() + within
    while True:
        diff = await check()
        if (diff == IN_STEP and settled()) or time.monotonic() > deadline:
            return diff
        await asyncio.sleep(0.3)


@pytest.fixture
async def served() -> AsyncIterator[list[RunningServer]]:
    """Simulator servers a test starts; closed at its end."""
    forget_tokens()
    servers: list[RunningServer] = []
    try:
        yield servers
    finally:
        for server in servers:
            await server.close()


# ---------------------------------------------------------------------------- Ozonetel

OZ_ACCOUNT = "acme-oz"
OZ_KEY = "oz-crash-key-5d1f"
OZ_STREAMS = (f"{OZ_ACCOUNT}/list", f"{OZ_ACCOUNT}/history")


def oz_truth(sim: OzonetelSimulator) -> dict[str, bytes]:
    """UCID -> content hash of the scrubbed bulk record, as the list stream stores it."""
    return {
        ucid: digest(orjson.dumps(scrub(record), option=orjson.OPT_SORT_KEYS))
        for ucid, record in sim.truth().items()
    }


@pytest.mark.slow
async def test_ozonetel_sigkill_at_random_instants_then_resume_loses_and_duplicates_nothing(
    dsn: str, store: Store, tmp_path: Path, served: list[RunningServer]
) -> None:
    """An Ozonetel daemon (live stream, backlog stream, pushes, lookups) SIGKILLed at random
    instants five times, then run again: calls equals the vendor's, every UCID once, and no
    stream's watermark ever moved back."""
    sim = OzonetelSimulator(
        OzonetelSimConfig(
            seed=31, backlog=3000, backlog_days=3.0, live_per_minute=60, legs_fraction=0.2,
            api_key=OZ_KEY, visible_delay_s=(0.5, 2.0), push_delay_s=0.5,
            bulk_rate_limit=20, bulk_rate_period_s=2.0, lookup_rate_limit=1000,
        )
    )  # fmt: skip
    server = await start_ozonetel_server(sim)
    served.append(server)
    port = free_port()
    table = {
        "name": OZ_ACCOUNT, "vendor": "ozonetel", "base_url": server.base_url,
        "username": "sim-user", "api_key": OZ_KEY, "webhook_secret": SECRET,
        "start": (dt.datetime.now(IST) - dt.timedelta(days=4)).date().isoformat(),
        "poll_interval": "1s", "settle": "1s", "lookback": "1h", "window": "1h",
        "history_window": "1d", "page_size": 100, "lookup_delay": "1s", "lookup_retry": "1s",
        "rate_limits": {"bulk": "20/2s", "lookup": "1000/min", "token": "10/h"},
    }  # fmt: skip
    config = write_config(tmp_path / "oz.toml", dsn, [table], http_listen=f"127.0.0.1:{port}")
    stop_pushes = asyncio.Event()
    url = f"http://127.0.0.1:{port}/hooks/{OZ_ACCOUNT}?token={SECRET}"
    pushes = asyncio.create_task(run_pushes(sim, url, stop_pushes))
    try:
        async with children(tmp_path) as kids:
            kills = await kill_at_random(kids, config, dsn, OZ_STREAMS, seed=310, runs=5, late=4)
            last = await kids.daemon(config, label="final")
            assert await last.wait_event("daemon.started", within=30), kids.tails()
            await asyncio.sleep(2)
            sim.stop_live()

            async def check() -> dict[str, list[str]]:
                return differences(oz_truth(sim), await store.call_hashes("ozonetel", OZ_ACCOUNT))

            diff = await converge(check, lambda: time.time() > sim.last_visible_time(), 45)
            stop_pushes.set()
            await pushes
            code = await last.terminate(10)
            final = await watermarks(dsn, OZ_STREAMS)
            tails = kids.tails()
    finally:
        stop_pushes.set()
        await pushes
    where = report(kills)
    # Shown with -rP: where the kills landed, and the 429s a fresh process's empty limiter
    # may draw right after a restart (answered by a pause, so not an error here).
    print(where, f"rate limited: {sim.stats.rate_limited}", sep="\n")
    assert diff == IN_STEP, f"{where}\n{tails}"
    assert await duplicate_keys(dsn) == 0
    assert code == 0, tails
    assert any(0 < n < len(sim.truth()) for _, _, n, _ in kills), where
    assert moved_back([m for *_, m in kills] + [final]) == [], where
    sources = await fetch(dsn, "SELECT DISTINCT source FROM calls")
    assert [r["source"] for r in sources] == ["list"]
    assert sim.stats.pushes_sent > 0


# ---------------------------------------------------------------------------- VCC Live

VCC_ACCOUNT = "acme-eu"
VCC_STREAMS = (f"{VCC_ACCOUNT}/list",)


def vcc_truth(sim: VccSimulator) -> dict[str, bytes]:
    """uuid -> content hash of the CDR row the list serves."""
    return {
        key: digest(orjson.dumps(row, option=orjson.OPT_SORT_KEYS))
        for key, row in sim.truth().items()
    }


@pytest.mark.slow
async def test_vcclive_sigkill_at_random_instants_then_resume_loses_and_duplicates_nothing(
    dsn: str, store: Store, tmp_path: Path, served: list[RunningServer]
) -> None:
    """A VCC Live daemon (day stream, disposition webhooks, lookups, outbox) SIGKILLed at
    random instants five times, then run again: calls equals the vendor's, every uuid once, the
    watermark never moved back, and every outbox row is in VCC Live exactly once."""
    sim = VccSimulator(
        VccSimConfig(
            seed=41, backlog=5000, backlog_days=2.5, live_per_minute=120,
            processing_delay_s=(0.5, 2.0), dispose_delay_s=(0.1, 0.5), max_page_size=60,
            add_delay_s=0.3,  # a slow Add record: kills land while a batch is in flight
        )
    )  # fmt: skip
    outbox = [{"form": {"name": f"lead {i}", "city": "Szeged"}} for i in range(60)]
    await store.migrate()
    await store.queues.outbox_add(VCC_ACCOUNT, sim.config.projects[0], outbox)
    server = await start_vcclive_server(sim)
    served.append(server)
    port = free_port()
    zone = ZoneInfo(sim.config.timezone)
    table = {
        "name": VCC_ACCOUNT, "vendor": "vcclive", "base_url": server.base_url,
        "username": "sim-cc", "api_key": "sim-vcc-token", "webhook_secret": SECRET,
        "start": (dt.datetime.now(zone) - dt.timedelta(days=3)).date().isoformat(),
        "poll_interval": "300ms", "settle": "1s", "page_size": 50,
        "lookup_delay": "0s", "lookup_interval": "1s", "outbox_interval": "300ms",
        "outbox_batch": 4,
        # Rows a kill left in flight are looked for a request timeout later, one claimed but
        # never sent is ruled absent a probe delay later and sent again an outbox_retry after
        # that: all short here, as is the test.
        "request_timeout": "5s", "outbox_probe_delay": "2s", "outbox_retry": "1s",
        # A list budget that spreads the backlog over several runs, so kills land mid-write.
        "rate_limits": {"list": "15/s", "lookup": "100000/min", "records": "100000/min"},
    }  # fmt: skip
    config = write_config(tmp_path / "vcc.toml", dsn, [table], http_listen=f"127.0.0.1:{port}")
    stop_hooks = asyncio.Event()
    url = f"http://127.0.0.1:{port}/hooks/{VCC_ACCOUNT}?token={SECRET}"
    hooks = asyncio.create_task(run_webhooks(sim, url, stop_hooks))
    try:
        async with children(tmp_path) as kids:
            kills = await kill_at_random(kids, config, dsn, VCC_STREAMS, seed=410, runs=5)
            last = await kids.daemon(config, label="final")
            assert await last.wait_event("daemon.started", within=30), kids.tails()
            await asyncio.sleep(2)
            sim.stop_live()

            async def check() -> dict[str, list[str]]:
                diff = differences(vcc_truth(sim), await store.call_hashes("vcclive", VCC_ACCOUNT))
                # A CDR lookup's copy has the list row's content: equal hashes, but the day
                # stream (the source of truth) has not read it yet. In step means read by it.
                rows = await fetch(dsn, "SELECT call_key FROM calls WHERE source <> 'list'")
                return {**diff, "stale": diff["stale"] + [r["call_key"] for r in rows]}

            diff = await converge(check, lambda: time.time() > sim.last_visible_time(), 45)

            async def delivered() -> dict[str, list[str]]:
                rows = await store.queues.outbox_rows(VCC_ACCOUNT)
                late = [str(r["id"]) for r in rows if r["state"] != "delivered"]
                return {"missing": late, "extra": [], "stale": []}

            undelivered = await converge(delivered, lambda: True, 45)
            stop_hooks.set()
            await hooks
            code = await last.terminate(10)
            final = await watermarks(dsn, VCC_STREAMS)
            rows = await store.queues.outbox_rows(VCC_ACCOUNT)
            doubts = sum(len(child.named("outbox.resolved")) for child in kids.started)
            tails = kids.tails()
    finally:
        stop_hooks.set()
        await hooks
    where = report(kills)
    print(where)  # shown with -rP: where the kills landed
    assert diff == IN_STEP, f"{where}\n{tails}"
    assert await duplicate_keys(dsn) == 0
    assert code == 0, tails
    assert any(0 < n < len(sim.truth()) for _, _, n, _ in kills), where
    assert moved_back([m for *_, m in kills] + [final]) == [], where
    sources = await fetch(dsn, "SELECT DISTINCT source FROM calls")
    assert [r["source"] for r in sources] == ["list"]
    assert sim.stats.webhooks_sent > 0
    assert undelivered == IN_STEP, tails
    added = sim.added_records()
    assert sorted(p["form"]["name"] for _, _, p in added) == sorted(
        p["form"]["name"] for p in outbox
    )
    by_numberid = {numberid: p for _, numberid, p in added}
    assert all(by_numberid[r["numberid"]] == r["payload"] for r in rows)
    # Kills landed while a batch was in flight: those rows were found in VCC Live, not resent.
    assert doubts > 0, tails


# ---------------------------------------------------------------------------- rate budget


def most_in_any_window(times: list[float], period: float) -> int:
    """The most request times that fall inside one sliding window of ``period`` seconds."""
    ordered = sorted(times)
    return max(
        (sum(1 for t in ordered[i:] if t - start < period) for i, start in enumerate(ordered)),
        default=0,
    )


async def test_a_restart_does_not_spend_the_vendors_window_twice(
    dsn: str, tmp_path: Path, served: list[RunningServer]
) -> None:
    """A daemon killed right after spending Ozonetel's bulk budget and started again at once
    waits for the window to pass: the vendor never counts more than its limit, no 429."""
    forget_tokens()
    sim = OzonetelSimulator(
        OzonetelSimConfig(seed=33, backlog=400, backlog_days=2.0, live_per_minute=0,
                          api_key=OZ_KEY, bulk_rate_limit=3, bulk_rate_period_s=4.0)
    )  # fmt: skip
    server = await start_ozonetel_server(sim)
    served.append(server)
    table = {
        "name": OZ_ACCOUNT, "vendor": "ozonetel", "base_url": server.base_url,
        "username": "sim-user", "api_key": OZ_KEY,
        "start": (dt.datetime.now(IST) - dt.timedelta(days=2)).date().isoformat(),
        "poll_interval": "1s", "settle": "1s", "page_size": 100,
        "rate_limits": {"bulk": "3/4s"},
    }  # fmt: skip
    config = write_config(tmp_path / "oz.toml", dsn, [table])
    async with children(tmp_path) as kids:
        for run in range(3):
            child = await kids.daemon(config, label=f"run{run}")
            spent = len(sim.stats.bulk_times) + 3
            deadline = time.monotonic() + 30
            while len(sim.stats.bulk_times) < spent and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert len(sim.stats.bulk_times) >= spent, kids.tails()
            await child.kill()  # the window's budget was just spent
        before_last = len(sim.stats.bulk_times)
        last = await kids.daemon(config, label="last")

        async def spent_past_a_window() -> bool:
            # More than one window's budget: the last instance ran across windows (counted,
            # not timed: on a loaded machine it may take seconds just to start).
            return len(sim.stats.bulk_times) >= before_last + 4

        assert await eventually(spent_past_a_window, timeout=60), kids.tails()
        await last.terminate(10)
    assert len(sim.stats.bulk_times) >= 10
    assert sum(sim.stats.rate_limited.values()) == 0
    assert most_in_any_window(sim.stats.bulk_times, 4.0) <= 3
