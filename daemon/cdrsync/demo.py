"""``cdrsync demo``: the built-in Acefone simulator, an embedded PostgreSQL and the daemon.

It prints a summary line every few seconds and, at the end, compares the ``calls`` table with the
simulator's truth: every call present, none extra, every one in its latest version.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import structlog

from cdrsync import app
from cdrsync.config import Settings, parse
from cdrsync.embedded import EmbeddedPostgres
from cdrsync.simulator.acefone import AcefoneSimConfig, AcefoneSimulator
from cdrsync.simulator.server import start_server
from cdrsync.store import Store
from cdrsync.vendors.acefone import digest

log = structlog.get_logger(__name__)
ACCOUNT = "demo-acefone"
SUMMARY_EVERY_S = 5.0
CATCH_UP_S = 60.0


def demo_simulator(records: int) -> AcefoneSimulator:
    """A simulator with every behaviour switched on, sized for a one-minute demo."""
    return AcefoneSimulator(
        AcefoneSimConfig(
            seed=7,
            backlog=records,
            backlog_days=2.0,
            live_per_minute=120.0,
            late_fraction=0.03,
            late_delay_s=(10.0, 25.0),
            change_fraction=0.05,
            change_delay_s=(5.0, 20.0),
            malformed_fraction=0.002,
            rate_limit=1200,
        )
    )


def demo_settings(base_url: str, token: str, dsn: str, state_dir: Path) -> Settings:
    """The configuration the demo runs with, through the same validation as a real file."""
    start = (dt.datetime.now(dt.UTC) - dt.timedelta(days=3)).date()
    return parse(
        {
            "database": {"dsn": dsn, "schema": "cdrsync"},
            "daemon": {"state_dir": str(state_dir), "http_listen": ""},
            "accounts": [
                {
                    "name": ACCOUNT,
                    "vendor": "acefone",
                    "base_url": base_url,
                    "token": token,
                    "start": start.isoformat(),
                    "poll_interval": "3s",
                    "lookback": "30m",
                    "settle": "3s",
                    "audit_interval": "30s",
                    "rate_limits": {"list": "1000/min"},
                }
            ],
        },
        source="<demo>",
        environ={},
    )


def expected_hashes(sim: AcefoneSimulator) -> dict[str, bytes]:
    """The simulator's truth as call_key -> content hash (malformed records excluded)."""
    bad = sim.malformed_ids()
    return {
        key: digest(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS))
        for key, payload in sim.truth().items()
        if key not in bad
    }


def compare(truth: dict[str, bytes], stored: dict[str, bytes]) -> dict[str, int]:
    """Missing, extra and stale (older version) calls between the truth and the table."""
    return {
        "missing": len(truth.keys() - stored.keys()),
        "extra": len(stored.keys() - truth.keys()),
        "stale": sum(1 for k, h in truth.items() if k in stored and stored[k] != h),
    }


async def _summaries(store: Store, sim: AcefoneSimulator, began: float) -> None:
    while True:
        await asyncio.sleep(SUMMARY_EVERY_S)
        stored = await store.call_hashes("acefone", ACCOUNT)
        diff = compare(expected_hashes(sim), stored)
        print(
            f"[{time.monotonic() - began:5.0f}s] calls in postgres: {len(stored):6d}   "
            f"visible in simulator: {len(sim.truth()):6d}   behind: {diff['missing']:5d}   "
            f"requests: {sim.stats.list_requests}",
            flush=True,
        )


async def run_demo(stop: asyncio.Event, args: argparse.Namespace) -> int:
    """Run the demo; exit code 0 when the table equals the simulator's truth at the end."""
    with contextlib.ExitStack() as files:
        state_dir = (
            Path(args.state_dir)
            if args.state_dir
            else Path(files.enter_context(tempfile.TemporaryDirectory(prefix="cdrsync-demo-")))
        )
        state_dir.mkdir(parents=True, exist_ok=True)
        return await _demo(stop, args, state_dir)


async def _demo(stop: asyncio.Event, args: argparse.Namespace, state_dir: Path) -> int:
    pg = EmbeddedPostgres()
    print(f"demo: starting PostgreSQL under {state_dir} and the Acefone simulator", flush=True)
    dsn = await asyncio.to_thread(pg.start, state_dir / "postgres")
    try:
        sim = demo_simulator(args.records)
        server = await start_server(sim)
        try:
            return await _run(
                stop, args, sim, base_url=server.base_url, dsn=dsn, state_dir=state_dir
            )
        finally:
            await server.close()
    finally:
        await asyncio.to_thread(pg.stop)


async def _run(
    stop: asyncio.Event,
    args: argparse.Namespace,
    sim: AcefoneSimulator,
    *,
    base_url: str,
    dsn: str,
    state_dir: Path,
) -> int:
    settings = demo_settings(base_url, sim.config.token, dsn, state_dir)
    began = time.monotonic()
    daemon_stop = asyncio.Event()
    daemon = asyncio.create_task(app.run(settings, stop=daemon_stop), name="daemon")
    store = await Store.connect(dsn, schema="cdrsync", pool_size=2)
    reporter = asyncio.create_task(_summaries(store, sim, began))
    try:
        await _wait(stop, daemon, args.duration or None)
        if daemon.done():
            daemon.result()
            return 1
        print("demo: new calls stopped; waiting for the last late and changed records", flush=True)
        sim.stop_live()
        verdict = await _catch_up(store, sim, stop, daemon)
    finally:
        reporter.cancel()
        daemon_stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await daemon
        await store.close()
    return _report(verdict, sim, await _rejects(dsn))


async def _wait(stop: asyncio.Event, daemon: asyncio.Task[Any], duration: float | None) -> None:
    waiter = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({waiter, daemon}, timeout=duration, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()


async def _catch_up(
    store: Store, sim: AcefoneSimulator, stop: asyncio.Event, daemon: asyncio.Task[Any]
) -> dict[str, int]:
    deadline = time.monotonic() + CATCH_UP_S + max(0.0, sim.last_visible_time() - time.time())
    while True:
        diff = compare(expected_hashes(sim), await store.call_hashes("acefone", ACCOUNT))
        diff["truth"] = len(expected_hashes(sim))
        done = time.time() > sim.last_visible_time() and not (diff["missing"] or diff["stale"])
        if done or stop.is_set() or daemon.done() or time.monotonic() > deadline:
            return diff
        await asyncio.sleep(1.0)


async def _rejects(dsn: str) -> int:
    store = await Store.connect(dsn, schema="cdrsync", pool_size=1)
    try:
        return await store.reject_count("acefone", ACCOUNT)
    finally:
        await store.close()


def _report(diff: dict[str, int], sim: AcefoneSimulator, rejects: int) -> int:
    ok = not (diff["missing"] or diff["extra"] or diff["stale"])
    print(
        f"demo: {'OK' if ok else 'MISMATCH'}: {diff['truth']} calls in the simulator; "
        f"missing {diff['missing']}, extra {diff['extra']}, stale {diff['stale']}; "
        f"{rejects} malformed records in cdrsync.rejects (the simulator made "
        f"{len(sim.malformed_ids())} on purpose); {sim.stats.list_requests} requests, "
        f"{sim.stats.rate_limited} answered 429",
        flush=True,
    )
    return 0 if ok else 1
