"""The daemon's health endpoints on daemon.http_listen, against a real PostgreSQL going away."""

from __future__ import annotations

import asyncio
import socket

import aiohttp

from cdrsync.embedded import EmbeddedPostgres
from cdrsync.simulator.acefone import AcefoneSimConfig, AcefoneSimulator
from cdrsync.simulator.server import start_server
from support import acefone_settings, eventually, running_daemon


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
