"""``cdrsync demo``: the three vendor simulators, an embedded PostgreSQL and the daemon.

The daemon syncs one account per vendor (Acefone, Ozonetel, VCC Live) from simulators on
127.0.0.1, takes Ozonetel's pushes and VCC Live's webhooks on its HTTP listener, and delivers a
few VCC Live outbox rows. Every few seconds the demo prints a line per vendor; at the end (live
traffic stopped, late records caught up) it compares each vendor's calls with its simulator's
truth: every call present, none extra, every one in its latest version. Exit 0 only when all
three match and the outbox rows are in VCC Live exactly once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import math
import secrets
import socket
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cdrsync.app import daemon as app
from cdrsync.config import Settings, parse
from cdrsync.simulator.demo_vendors import (
    LIMITS_BANNER,
    OUTBOX_ROWS,
    VccDemo,
    VendorDemo,
    check_outbox,
    expected_hashes,
    seed_outbox,
    vendor_demos,
)
from cdrsync.store.embedded import EmbeddedPostgres
from cdrsync.store.store import Store

__all__ = ["compare", "demo_settings", "expected_hashes", "run_demo"]

SCHEMA = "cdrsync"
HOST = "127.0.0.1"
SUMMARY_EVERY_S = 5.0
CATCH_UP_S = 60.0
"""How long past the simulators' last change the demo waits for the table to match."""
LISTEN_TIMEOUT_S = 30.0


def compare(truth: Mapping[str, bytes], stored: Mapping[str, bytes]) -> dict[str, int]:
    """Missing, extra and stale (older version) calls between the truth and the table."""
    return {
        "missing": len(truth.keys() - stored.keys()),
        "extra": len(stored.keys() - truth.keys()),
        "stale": sum(1 for k, h in truth.items() if k in stored and stored[k] != h),
    }


def demo_settings(
    tables: Sequence[dict[str, Any]], dsn: str, state_dir: Path, port: int
) -> Settings:
    """The configuration the demo runs with, through the same validation as a real file."""
    return parse(
        {
            "database": {"dsn": dsn, "schema": SCHEMA},
            "daemon": {"state_dir": str(state_dir), "http_listen": f"{HOST}:{port}"},
            "accounts": list(tables),
        },
        source="<demo>",
        environ={},
    )


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One vendor's state at one instant: the table against the simulator, and the queues."""

    demo: VendorDemo
    stored: int
    truth: int
    diff: dict[str, int]
    lookups: Mapping[str, int]
    outbox: Mapping[str, int]

    @property
    def in_step(self) -> bool:
        """Nothing missing or stale, and no outbox row still waiting."""
        waiting = sum(n for state, n in self.outbox.items() if state != "delivered")
        return not (self.diff["missing"] or self.diff["stale"] or waiting)

    def line(self, elapsed: float) -> str:
        """The periodic summary line."""
        d = self.demo
        text = (
            f"[{elapsed:5.0f}s] {d.vendor:<8}  calls in postgres {self.stored:6d}  "
            f"in simulator {self.truth:6d}  behind {self.diff['missing']:5d}  "
            f"requests {d.requests():5d}"
        )
        if d.takes_pushes:
            text += (
                f"  pushes {d.pushes():4d}  lookups {self.lookups.get('done', 0)} done, "
                f"{self.lookups.get('pending', 0)} pending"
            )
        if self.outbox:
            text += (
                f"  outbox {self.outbox.get('delivered', 0)}/{sum(self.outbox.values())} delivered"
            )
        return text


async def snapshots(store: Store, demos: Sequence[VendorDemo]) -> list[Snapshot]:
    """Every vendor's snapshot now."""
    depths = await store.queues.depths()
    found = []
    for d in demos:
        truth = d.truth()
        stored = await store.call_hashes(d.vendor, d.account)
        found.append(
            Snapshot(
                d, len(stored), len(truth), compare(truth, stored),
                depths.get((d.vendor, d.account, "lookups"), {}),
                depths.get((d.vendor, d.account, "outbox"), {}),
            )
        )  # fmt: skip
    return found


async def _summaries(store: Store, demos: Sequence[VendorDemo], began: float) -> None:
    tick = began
    while True:
        # On a fixed beat: computing the truth of thousands of calls takes a moment.
        tick += SUMMARY_EVERY_S
        await asyncio.sleep(max(0.0, tick - time.monotonic()))
        for snap in await snapshots(store, demos):
            print(snap.line(time.monotonic() - began), flush=True)


async def run_demo(stop: asyncio.Event, args: argparse.Namespace) -> int:
    """Run the demo; exit code 0 when every vendor's table equals its simulator at the end."""
    with contextlib.ExitStack() as files:
        state_dir = (
            Path(args.state_dir)
            if args.state_dir
            else Path(files.enter_context(tempfile.TemporaryDirectory(prefix="cdrsync-demo-")))
        )
        state_dir.mkdir(parents=True, exist_ok=True)
        return await _demo(stop, args, state_dir)


async def _demo(stop: asyncio.Event, args: argparse.Namespace, state_dir: Path) -> int:
    demos = vendor_demos(args.records)
    pg = EmbeddedPostgres()
    print(
        f"demo: starting PostgreSQL under {state_dir} and the Acefone, Ozonetel and VCC Live "
        f"simulators\ndemo: {LIMITS_BANNER}",
        flush=True,
    )
    dsn = await asyncio.to_thread(pg.start, state_dir / "postgres")
    try:
        async with contextlib.AsyncExitStack() as servers:
            urls = []
            for d in demos:
                server = await d.serve()
                servers.push_async_callback(server.close)
                urls.append(server.base_url)
            return await _run(stop, args, demos, urls, dsn=dsn, state_dir=state_dir)
    finally:
        await asyncio.to_thread(pg.stop)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


async def _run(
    stop: asyncio.Event,
    args: argparse.Namespace,
    demos: Sequence[VendorDemo],
    urls: Sequence[str],
    *,
    dsn: str,
    state_dir: Path,
) -> int:
    port, secret = _free_port(), secrets.token_urlsafe(16)
    start = (dt.datetime.now(dt.UTC) - dt.timedelta(days=3)).date()
    tables = [d.account_table(url, start, secret) for d, url in zip(demos, urls, strict=True)]
    settings = demo_settings(tables, dsn, state_dir, port)
    store = await Store.connect(dsn, schema=SCHEMA, pool_size=2)
    try:
        # Migrated here so the outbox rows are waiting when the daemon starts.
        await store.migrate()
        vcc = next(d for d in demos if isinstance(d, VccDemo))
        await seed_outbox(store, vcc.account, vcc.sim.config.projects[0])
        final = await _with_daemon(stop, args, demos, settings, store, port=port, secret=secret)
        if final is None:
            return 1
        rejects = {d.account: await store.reject_count(d.vendor, d.account) for d in demos}
        outbox = await check_outbox(store, vcc)
    finally:
        await store.close()
    return _report(final, rejects, outbox)


async def _with_daemon(
    stop: asyncio.Event,
    args: argparse.Namespace,
    demos: Sequence[VendorDemo],
    settings: Settings,
    store: Store,
    *,
    port: int,
    secret: str,
) -> list[Snapshot] | None:
    """Run the daemon and the push senders for the duration, then catch up; the last snapshots
    (None: the daemon stopped by itself)."""
    began = time.monotonic()
    daemon_stop, pushes_stop = asyncio.Event(), asyncio.Event()
    daemon = asyncio.create_task(app.run(settings, stop=daemon_stop), name="daemon")
    senders: list[asyncio.Task[None]] = []
    reporter = asyncio.create_task(_summaries(store, demos, began))
    try:
        if not await _listening(port, daemon):
            _failed(daemon)
            return None
        for d in demos:
            if d.takes_pushes:
                url = f"http://{HOST}:{port}/hooks/{d.account}?token={secret}"
                senders.append(asyncio.create_task(d.send_pushes(url, pushes_stop)))
        print(f"demo: pushes go to http://{HOST}:{port}/hooks/{{account}}?token=***", flush=True)
        await _wait(stop, daemon, args.duration or None)
        if daemon.done():
            _failed(daemon)
            return None
        print("demo: new calls stopped; waiting for the last late and changed records", flush=True)
        for d in demos:
            d.stop_live()
        return await _catch_up(store, demos, stop, daemon)
    finally:
        reporter.cancel()
        pushes_stop.set()
        await asyncio.gather(*senders, return_exceptions=True)
        daemon_stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await daemon


def _failed(daemon: asyncio.Task[Any]) -> None:
    if daemon.done():
        daemon.result()  # the daemon's own error, loudly
    print("demo: the daemon stopped before the demo ended", flush=True)


async def _listening(port: int, daemon: asyncio.Task[Any]) -> bool:
    """Wait until the daemon accepts connections on its HTTP port (pushes go there)."""
    deadline = time.monotonic() + LISTEN_TIMEOUT_S
    while not daemon.done() and time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection(HOST, port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        writer.close()
        await writer.wait_closed()
        return True
    return False


async def _wait(stop: asyncio.Event, daemon: asyncio.Task[Any], duration: float | None) -> None:
    waiter = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({waiter, daemon}, timeout=duration, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()


async def _catch_up(
    store: Store, demos: Sequence[VendorDemo], stop: asyncio.Event, daemon: asyncio.Task[Any]
) -> list[Snapshot]:
    """Poll until every vendor is in step after its simulator's last change (or time is up)."""
    final = max((d.last_visible_time() for d in demos), default=-math.inf)
    deadline = time.monotonic() + CATCH_UP_S + max(0.0, final - time.time())
    while True:
        snaps = await snapshots(store, demos)
        done = time.time() > final and all(s.in_step for s in snaps)
        if done or stop.is_set() or daemon.done() or time.monotonic() > deadline:
            return snaps
        await asyncio.sleep(1.0)


def _report(snaps: Sequence[Snapshot], rejects: Mapping[str, int], outbox: list[str]) -> int:
    all_ok = True
    for s in snaps:
        d, diff = s.demo, s.diff
        notes = [f"{rejects.get(d.account, 0)} records in cdrsync.rejects", d.traffic()]
        problems = outbox if isinstance(d, VccDemo) else []
        if isinstance(d, VccDemo):
            notes.append(
                "outbox: " + ("; ".join(outbox) if outbox else f"{OUTBOX_ROWS} rows delivered, "
                              "each once in VCC Live under its numberid")
            )  # fmt: skip
        ok = not (diff["missing"] or diff["extra"] or diff["stale"] or problems)
        all_ok = all_ok and ok
        print(
            f"demo: {d.vendor}: {'OK' if ok else 'MISMATCH'}: {s.truth} calls in the simulator; "
            f"missing {diff['missing']}, extra {diff['extra']}, stale {diff['stale']}; "
            + "; ".join(notes),
            flush=True,
        )
    print("demo: OK" if all_ok else "demo: MISMATCH", flush=True)
    return 0 if all_ok else 1
