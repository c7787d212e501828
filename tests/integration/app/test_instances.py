"""Several `cdrsync run` processes on one database share the streams out: balanced at start,
rebalanced when one joins, taken over when one is killed or hangs. Real child processes, the
Acefone simulator and a real PostgreSQL; every wait polls a condition."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import json
import signal
import socket
import time
import zoneinfo
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from cdrsync.simulator.acefone import AcefoneSimConfig, AcefoneSimulator
from cdrsync.simulator.server import RunningServer, start_server
from cdrsync.store.queries import QUERIES
from process_support import Child, account_table, children, fetch, write_config
from support import differences, eventually, truth_hashes

IST = zoneinfo.ZoneInfo("Asia/Kolkata")
ACCOUNTS = [f"acc{n:02}" for n in range(30)]
STREAMS = {f"{name}/list" for name in ACCOUNTS}
TIMEOUT_S = 6.0  # daemon.instance_timeout here: a beat every 1.5 s


@dataclass
class Sampler:
    """Reads who holds each stream lock, over and over, while a test phase runs."""

    dsn: str
    samples: int = 0
    doubles: list[str] = field(default_factory=list)

    async def holders(self) -> dict[str, int]:
        """Stream -> pid of the daemon whose lock session holds it (registered daemons only)."""
        rows = await fetch(self.dsn, QUERIES["stream_holders"], "cdrsync")
        found: dict[str, int] = {}
        for row in rows:
            if row["stream"] in found:
                self.doubles.append(row["stream"])
            if row["pid"] is not None:
                found[row["stream"]] = row["pid"]
        return found

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.holders()
            self.samples += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def per_pid(holders: dict[str, int]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for pid in holders.values():
        counts[pid] = counts.get(pid, 0) + 1
    return counts


def held_intervals(child: Child, stream: str) -> list[tuple[str, str]]:
    """The spans (ISO timestamps) in which ``child`` said it owned ``stream``: from
    ``stream.owned`` to ``stream.handed_over`` (or the end of its log)."""
    spans: list[tuple[str, str]] = []
    start: str | None = None
    for event in child.events():
        if event.get("stream") != stream:
            continue
        if event["event"] == "stream.owned" and start is None:
            start = event["timestamp"]
        elif event["event"] in {"stream.handed_over", "stream.lock_lost"} and start is not None:
            spans.append((start, event["timestamp"]))
            start = None
    if start is not None:
        spans.append((start, "9999"))
    return spans


def cycles_outside(child: Child, stream: str, spans: list[tuple[str, str]]) -> list[str]:
    """Timestamps of ``child``'s finished cycles of ``stream`` outside its own spans."""
    return [
        e["timestamp"]
        for e in child.events()
        if e.get("stream") == stream
        and e["event"] in {"sync.cycle_done", "sync.cycle_partial"}
        and not any(a <= e["timestamp"] <= b for a, b in spans)
    ]


def overlaps(spans: list[tuple[str, str, str]]) -> list[tuple[str, str]]:
    """Pairs of spans (label, start, end) of different children that overlap in time."""
    return [
        (a[0], b[0])
        for a, b in itertools.combinations(spans, 2)
        if a[0] != b[0] and a[1] < b[2] and b[1] < a[2]
    ]


@pytest.fixture
async def simulator() -> AsyncIterator[tuple[AcefoneSimulator, RunningServer]]:
    """A fixed backlog (no live calls, no late rows, no changes) every account reads."""
    sim = AcefoneSimulator(
        AcefoneSimConfig(
            seed=31, backlog=400, backlog_days=2.0, live_per_minute=0, late_fraction=0.0,
            change_fraction=0.0, visible_delay_s=(0.0, 0.5),
        )
    )  # fmt: skip
    server = await start_server(sim)
    try:
        yield sim, server
    finally:
        await server.close()


@pytest.mark.slow
@pytest.mark.timeout(300)  # its waits add up to more than the default 120 s; it asserts < 300
async def test_instances_share_rebalance_on_join_and_take_over_the_killed_and_the_hung(
    dsn: str, tmp_path: Path, simulator: tuple[AcefoneSimulator, RunningServer]
) -> None:
    """Three daemons and 30 accounts hold 10 ± 1 streams each; a fourth gets its share with no
    stream owned twice; a killed daemon's and a frozen daemon's streams are taken within 30 s,
    a stopped one's without waiting for the timeout; every account ends equal to the simulator,
    without duplicates."""
    sim, server = simulator
    start = (dt.datetime.now(IST) - dt.timedelta(days=3)).date()
    accounts = [
        account_table(server.base_url, start=start, name=name, poll_interval="2s")
        for name in ACCOUNTS
    ]
    config = write_config(
        tmp_path / "cdrsync.toml", dsn, accounts, instance_timeout=f"{TIMEOUT_S}s"
    )
    await asyncio.sleep(max(0.0, sim.last_visible_time() - time.time()) + 0.1)
    truth = truth_hashes(sim)
    sampler = Sampler(dsn)
    stop_sampling = asyncio.Event()
    began = time.monotonic()
    async with children(tmp_path) as kids:
        three = [await kids.daemon(config, label=f"d{n}") for n in range(3)]
        pids = {c.pid for c in three}

        async def balanced(expect: set[int], low: int, high: int) -> bool:
            holders = await sampler.holders()
            counts = per_pid(holders)
            return (
                set(holders) == STREAMS
                and set(counts) == expect
                and all(low <= n <= high for n in counts.values())
            )

        assert await eventually(lambda: balanced(pids, 9, 11), timeout=60, interval=0.3), (
            f"{per_pid(await sampler.holders())}\n{kids.tails()}"
        )

        # No stream took itself for another instance's before the balance knew the streams.
        for child in three:
            names = [e["event"] for e in child.events()]
            assert "instances.balanced" in names, child.tail()
            first = names.index("instances.balanced")
            assert "stream.owned_elsewhere" not in names[:first], child.tail()

        # A fourth joins while the others are still reading their backlog.
        sampling = asyncio.create_task(sampler.run(stop_sampling))
        port = free_port()
        own = write_config(
            tmp_path / "fourth.toml", dsn, accounts, instance_timeout=f"{TIMEOUT_S}s",
            http_listen=f"127.0.0.1:{port}",
        )  # fmt: skip
        fourth = await kids.daemon(own, label="d3")
        pids.add(fourth.pid)
        assert await eventually(lambda: balanced(pids, 6, 8), timeout=60, interval=0.3), (
            f"{per_pid(await sampler.holders())}\n{kids.tails()}"
        )
        # The fourth's /metrics shows each live instance's streams as their heartbeats say.
        async with aiohttp.ClientSession() as http:

            async def exported() -> bool:
                async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
                    text = await response.text()
                held = per_pid(await sampler.holders())
                return "cdrsync_instances_live 4.0" in text and all(
                    f'pid="{pid}",state="held"}} {float(n)}' in text for pid, n in held.items()
                )

            assert await eventually(exported, timeout=30, interval=0.5), kids.tails()
        stop_sampling.set()
        await sampling
        four = [*three, fourth]
        code, out, err = await kids.command("status", "--json", "--config", str(config))
        assert code in (0, 1), err  # 1: streams still catching up are "lagging"
        report = json.loads(out)
        assert {i["pid"] for i in report["instances"]} == pids, err
        holders = await sampler.holders()
        owners = {s["stream"]: (s["owner"] or {}).get("pid") for s in report["streams"]}
        assert {s: owners[s] for s in STREAMS} == {s: holders.get(s) for s in STREAMS}
        assert sum(len(c.named("stream.handed_over")) for c in three) >= 6, kids.tails()
        for stream in sorted(STREAMS):
            spans = []
            for child in four:
                mine = held_intervals(child, stream)
                assert not cycles_outside(child, stream, mine), (child.label, stream)
                spans += [(child.label, a, b) for a, b in mine]
            assert not overlaps(spans), (stream, spans)

        # kill -9 the one holding the most: the others take its streams within 30 s.
        holders = await sampler.holders()
        victim = max(four, key=lambda c: per_pid(holders).get(c.pid, 0))
        lost = {s for s, pid in holders.items() if pid == victim.pid}
        await victim.kill()
        killed_at = time.monotonic()
        pids.discard(victim.pid)

        async def taken(streams: set[str], survivors: set[int]) -> bool:
            holders = await sampler.holders()
            return all(holders.get(s) in survivors for s in streams)

        assert await eventually(lambda: taken(lost, pids), timeout=30, interval=0.2), kids.tails()
        assert time.monotonic() - killed_at <= 30

        # A hung daemon: frozen (SIGSTOP), its lock session still connected and holding.
        holders = await sampler.holders()
        hung = next(c for c in four if c.pid in pids and per_pid(holders).get(c.pid))
        frozen = {s for s, pid in holders.items() if pid == hung.pid}
        hung.proc.send_signal(signal.SIGSTOP)
        try:
            frozen_at = time.monotonic()
            others = pids - {hung.pid}
            assert await eventually(lambda: taken(frozen, others), timeout=30, interval=0.2), (
                kids.tails()
            )
            assert time.monotonic() - frozen_at <= 30
        finally:
            hung.proc.send_signal(signal.SIGCONT)
        # Back, it finds its locks gone and joins again: everyone ends with a share.
        assert await eventually(lambda: balanced(pids, 9, 11), timeout=60, interval=0.3), (
            f"{per_pid(await sampler.holders())}\n{kids.tails()}"
        )
        reaped = [c for c in four if c.named("instance.reaped")]
        assert reaped, kids.tails()

        # A clean stop (SIGTERM): its row goes with it, so nobody waits for the timeout.
        holders = await sampler.holders()
        leaver = next(c for c in four if c.pid in pids and c is not hung)
        left = {s for s, pid in holders.items() if pid == leaver.pid}
        assert await leaver.terminate(15) == 0, leaver.tail()
        pids.discard(leaver.pid)
        rows = await fetch(dsn, "SELECT pid FROM instances")
        assert leaver.pid not in {r["pid"] for r in rows}
        assert await eventually(lambda: taken(left, pids), timeout=30, interval=0.2), kids.tails()
        assert await eventually(lambda: balanced(pids, 15, 15), timeout=30, interval=0.3), (
            f"{per_pid(await sampler.holders())}\n{kids.tails()}"
        )

        async def converged() -> bool:
            rows = await fetch(dsn, "SELECT account, count(*) AS n FROM calls GROUP BY account")
            return {r["account"]: r["n"] for r in rows} == dict.fromkeys(ACCOUNTS, len(truth))

        assert await eventually(converged, timeout=90, interval=0.5), kids.tails()
        codes = [await c.terminate(15) for c in four if c.running]
        tails = kids.tails()
    assert codes == [0] * len(codes), tails
    assert sampler.samples > 0 and not sampler.doubles
    for name in ACCOUNTS:
        rows = await fetch(dsn, "SELECT call_key, content_hash FROM calls WHERE account = $1", name)
        stored = {r["call_key"]: bytes(r["content_hash"]) for r in rows}
        assert len(rows) == len(stored), f"{name} has duplicate rows"
        assert differences(truth, stored) == {"missing": [], "extra": [], "stale": []}, name
    assert await fetch(dsn, "SELECT id FROM instances") == [], "a clean stop leaves no row"
    assert time.monotonic() - began < 300
