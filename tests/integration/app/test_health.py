"""The daemon's health endpoints on daemon.http_listen, against a real PostgreSQL going away."""

from __future__ import annotations

import asyncio
import socket

import aiohttp

from cdrsync.simulator.acefone import AcefoneSimConfig, AcefoneSimulator
from cdrsync.simulator.server import start_server
from cdrsync.store.embedded import EmbeddedPostgres
from support import acefone_settings, eventually, running_daemon, synced


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_readyz_follows_the_database_and_healthz_stays_up(
    restartable_pg: EmbeddedPostgres, dsn: str
) -> None:
    """/healthz answers 200 throughout; /readyz answers 200, then 503 with a JSON reason while
    PostgreSQL is down, then 200 again once it is back."""
    sim = AcefoneSimulator(AcefoneSimConfig(seed=2, backlog=50, backlog_days=0.1))
    server = await start_server(sim)
    port = free_port()
    settings = acefone_settings(server.base_url, dsn, daemon={"http_listen": f"127.0.0.1:{port}"})
    base = f"http://127.0.0.1:{port}"
    seen: list[int] = []
    try:
        async with running_daemon(settings), aiohttp.ClientSession() as http:

            async def ready_is(status: int) -> bool:
                try:
                    async with http.get(f"{base}/readyz") as response:
                        seen.append(response.status)
                        body = await response.json()
                        return response.status == status and "status" in body
                except aiohttp.ClientError:
                    return False

            assert await eventually(lambda: ready_is(200), timeout=20)
            await asyncio.to_thread(restartable_pg.stop)
            try:
                assert await eventually(lambda: ready_is(503), timeout=20)
                async with http.get(f"{base}/healthz") as response:
                    assert response.status == 200
            finally:
                await asyncio.to_thread(restartable_pg.restart)
            assert await eventually(lambda: ready_is(200), timeout=30), seen[-5:]
    finally:
        await server.close()


async def test_metrics_count_rows_requests_and_429s(dsn: str, store) -> None:
    """/metrics parses as Prometheus text; rows inserted equal the calls stored, 200s are
    counted, every 429 the simulator sent is counted, and the lag gauge is set."""
    from prometheus_client.parser import text_string_to_metric_families

    sim = AcefoneSimulator(
        AcefoneSimConfig(seed=4, backlog=1200, backlog_days=0.5, live_per_minute=0,
                         rate_limit=8, rate_period_s=2.0)
    )  # fmt: skip
    server = await start_server(sim)
    port = free_port()
    settings = acefone_settings(
        server.base_url, dsn, daemon={"http_listen": f"127.0.0.1:{port}"},
        account={"rate_limits": {"list": "30/2s"}},
    )  # fmt: skip
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

    def value(name: str, **labels: str) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    try:
        async with running_daemon(settings), aiohttp.ClientSession() as http:
            assert await synced(store, sim, timeout=60) == {"missing": [], "extra": [], "stale": []}
            stored = await store.call_count("acefone", "acme-in")

            async def reported() -> bool:
                # The cycle that wrote the last rows reports when it ends, and a 429 is counted
                # when its answer arrives: scrape until both have caught up (not for a while).
                nonlocal samples
                async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
                    assert response.status == 200
                    text = await response.text()
                samples = {
                    (s.name, tuple(sorted(s.labels.items()))): s.value
                    for family in text_string_to_metric_families(text)
                    for s in family.samples
                }
                limited = value(
                    "cdrsync_rate_limited_total", account="acme-in",
                    endpoint="acefone.call_records",
                )  # fmt: skip
                inserted = value("cdrsync_rows_total", stream="acme-in/list", result="inserted")
                return inserted == stored and limited == sim.stats.rate_limited

            assert await eventually(reported, timeout=30), samples
    finally:
        await server.close()

    ok = value("cdrsync_requests_total", vendor="acefone", account="acme-in",
               endpoint="acefone.call_records", status="200")  # fmt: skip
    assert ok > 0
    limited = value(
        "cdrsync_rate_limited_total", account="acme-in", endpoint="acefone.call_records"
    )
    assert limited > 0
    assert ("cdrsync_watermark_lag_seconds", (("stream", "acme-in/list"),)) in samples
    assert value("cdrsync_rate_budget_limit", account="acme-in", limit="list") == 30
    used = ("cdrsync_rate_budget_used", (("account", "acme-in"), ("limit", "list")))
    assert 0 <= samples[used] <= 30
