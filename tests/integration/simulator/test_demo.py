"""`cdrsync demo` with all three vendors, and `cdrsync simulate` for each vendor."""

from __future__ import annotations

import argparse
import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs

import aiohttp
import orjson
import pytest
from aiohttp import web

from cdrsync.simulator.demo import run_demo
from process_support import children
from support import eventually

VENDORS = ("acefone", "ozonetel", "vcclive")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_demo_ends_with_every_vendor_equal_to_its_simulator(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A short demo syncs Acefone, Ozonetel and VCC Live (pushes, lookups, outbox) and ends
    with each vendor's calls equal to its simulator and the outbox delivered: exit 0."""
    # No state_dir: the demo's own temporary directory. Under tmp_path the server's user (as
    # root) is locked out whenever another pytest run resets /tmp/pytest-of-root to 0700.
    args = argparse.Namespace(duration=3.0, records=300, state_dir=None, log_level="warning")
    code = await run_demo(asyncio.Event(), args)
    out = capsys.readouterr().out
    assert code == 0, out
    verdicts = {
        v: [ln for ln in out.splitlines() if ln.startswith(f"demo: {v}: ")] for v in VENDORS
    }
    for vendor, lines in verdicts.items():
        assert len(lines) == 1, out
        assert lines[0].startswith(f"demo: {vendor}: OK:"), out
        assert "missing 0, extra 0, stale 0" in lines[0], out
    assert "outbox: 5 rows delivered, each once in VCC Live" in verdicts["vcclive"][0]
    summaries = [ln for ln in out.splitlines() if ln.startswith("[")]
    assert {v for v in VENDORS for ln in summaries if f"] {v} " in ln} == set(VENDORS), out
    assert "simulated limits are faster than the vendors'" in out
    assert out.splitlines()[-1] == "demo: OK"


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[str, list[dict[str, object]]]]:
    """An HTTP endpoint on 127.0.0.1 that keeps every JSON or form-encoded push it gets."""
    got: list[dict[str, object]] = []

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        if request.content_type == "application/x-www-form-urlencoded":
            body = parse_qs(body.decode())["data"][-1].encode()
        got.append(orjson.loads(body))
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_post("/hooks/demo", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}/hooks/demo?token=t", got
    await runner.cleanup()


@pytest.mark.parametrize(("vendor", "key"), [("ozonetel", "monitorUCID"), ("vcclive", "uuid")])
async def test_simulate_serves_a_vendor_and_posts_its_pushes(
    tmp_path: Path, receiver: tuple[str, list[dict[str, object]]], vendor: str, key: str
) -> None:
    """`cdrsync simulate --vendor V --push-url URL` serves V's API and posts its pushes (or
    webhooks) to URL; SIGTERM stops it with exit 0."""
    url, got = receiver
    port = free_port()
    async with children(tmp_path) as kids:
        sim = await kids.spawn(
            "simulate", "--vendor", vendor, "--port", str(port), "--records", "50",
            "--live-per-minute", "600", "--push-url", url, label=vendor,
        )  # fmt: skip

        async def pushed() -> bool:
            return any(key in push for push in got)

        assert await eventually(pushed, timeout=30), sim.tail()
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{port}/_sim/truth") as resp,
        ):
            assert resp.status == 200
            assert await resp.json()  # the backlog's calls, in the vendor's record shape
        assert await sim.terminate(10) == 0, sim.tail()


async def test_simulate_refuses_a_push_url_for_acefone(tmp_path: Path) -> None:
    """Acefone's simulator sends no pushes: --push-url with it is bad usage (exit 2)."""
    async with children(tmp_path) as kids:
        code, _, err = await kids.command(
            "simulate", "--push-url", "http://127.0.0.1:1/hooks/x", within=30
        )
    assert code == 2
    assert "--push-url is for --vendor ozonetel or vcclive" in err
