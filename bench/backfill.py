"""Benchmark: `cdrsync backfill` of N Acefone records against the store's own write ceiling.

For each record count: an Acefone simulator (a separate process) serves N records spread over
``--days`` days on 127.0.0.1; (a) the ceiling writes the same records, normalized before the
clock starts, by the store's COPY + ``INSERT ... ON CONFLICT`` in one-window batches; (b) the
``cdrsync backfill`` command, as a child process, fetches, parses, normalizes and upserts them.
Both write into a fresh migrated database of one embedded PostgreSQL with durable settings.
Prints rows/s of both, their ratio, cdrsync's peak RSS, and a table over all record counts.

    python bench/backfill.py [--records 200000 1000000] [--days 10]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import shutil
import signal
import sys
import tempfile
import time
import zoneinfo
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import asyncpg
import psutil

import _ceiling
from _child import TOKEN, ChildRun, Simulator, run_measured
from cdrsync.store.embedded import EmbeddedPostgres
from cdrsync.store.store import Store

ACCOUNT, SCHEMA, ZONE, WINDOW_S = "bench", "cdrsync", "Asia/Kolkata", 3600
TARGET_RATIO, TARGET_RSS_MB = 0.6, 150.0
REFERENCE = "a general-purpose loader (dlt, merge into Postgres): ~3 300 rows/s, 324-355 MB RSS"
SHOWN_SETTINGS = (
    "server_version",
    "fsync",
    "synchronous_commit",
    "full_page_writes",
    "wal_level",
    "shared_buffers",
    "max_wal_size",
    "checkpoint_timeout",
)
COUNT_SQL = f"SELECT count(*) FROM {SCHEMA}.calls"  # noqa: S608 - a constant schema name


@dataclass(frozen=True, slots=True)
class Result:
    """The figures of one record count."""

    records: int
    batch_sizes: tuple[int, float, int]
    ceiling_s: float
    e2e_s: float
    rss_mb: float
    e2e_cpu: dict[str, float]
    rows_stored: int

    @property
    def ceiling_rate(self) -> float:
        """Rows per second of the ceiling."""
        return self.records / self.ceiling_s

    @property
    def e2e_rate(self) -> float:
        """Rows per second of ``cdrsync backfill`` (its whole process lifetime)."""
        return self.records / self.e2e_s


class Postgres:
    """The embedded server, and fresh migrated databases on it."""

    def __init__(self, root: Path) -> None:
        self.server = EmbeddedPostgres()  # no settings: PostgreSQL's durable defaults
        self.root = root
        self.dsn_root = ""

    def start(self) -> None:
        """Initialise and start the server."""
        self.dsn_root = self.server.start(self.root / "pg")

    def dsn(self, database: str) -> str:
        """A DSN for ``database`` on this server."""
        return self.server.dsn(database)

    async def settings(self) -> dict[str, str]:
        """The settings that decide durability and write speed."""
        conn = await asyncpg.connect(self.dsn_root)
        try:
            return {name: await conn.fetchval(f"SHOW {name}") for name in SHOWN_SETTINGS}
        finally:
            await conn.close()

    async def admin(self, *statements: str) -> None:
        """Run statements on the maintenance database (outside a transaction)."""
        conn = await asyncpg.connect(self.dsn_root)
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    async def fresh(self, database: str) -> str:
        """Create ``database``, apply cdrsync's migrations, checkpoint; its DSN."""
        await self.admin(f'DROP DATABASE IF EXISTS "{database}"', f'CREATE DATABASE "{database}"')
        store = await Store.connect(self.dsn(database), schema=SCHEMA, pool_size=1)
        try:
            await store.migrate()
        finally:
            await store.close()
        await self.admin("CHECKPOINT")
        return self.dsn(database)

    async def count(self, database: str) -> int:
        """How many calls ``database`` holds."""
        conn = await asyncpg.connect(self.dsn(database))
        try:
            return int(await conn.fetchval(COUNT_SQL))
        finally:
            await conn.close()

    def cpu_seconds(self) -> float:
        """CPU time of the server and every backend, living or reaped, so far.

        Waits (up to 5 s) for client backends to exit and be reaped first: only then does a
        backend's CPU move into the postmaster's children times.
        """
        pid = int((self.root / "pg" / "postmaster.pid").read_text().split()[0])
        main = psutil.Process(pid)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and any(_client(c) for c in main.children()):
            time.sleep(0.02)
        own = main.cpu_times()
        total = own.user + own.system + own.children_user + own.children_system
        for child in main.children():
            with contextlib.suppress(psutil.Error):
                times = child.cpu_times()
                total += times.user + times.system
        return total


def _client(process: psutil.Process) -> bool:
    """Whether a server process is a client backend, or any process not reaped yet."""
    try:
        if process.status() == psutil.STATUS_ZOMBIE:
            return True
        return "[local]" in " ".join(process.cmdline())
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True


def write_config(path: Path, *, dsn: str, base_url: str, since: dt.date, state: Path) -> None:
    """The TOML cdrsync backfill runs with (strings as JSON strings: a subset of TOML's)."""
    q = json.dumps
    path.write_text(
        f"[database]\ndsn = {q(dsn)}\nschema = {q(SCHEMA)}\n\n"
        f'[daemon]\nstate_dir = {q(str(state))}\nhttp_listen = ""\n\n'
        f'[[accounts]]\nname = {q(ACCOUNT)}\nvendor = "acefone"\nbase_url = {q(base_url)}\n'
        f"token = {q(TOKEN)}\nstart = {since.isoformat()}\ntimezone = {q(ZONE)}\n"
        f'page_size = 100\nwindow = "1h"\nsettle = "0s"\n'
        f'rate_limits = {{ list = "1000000/min" }}\n',
        "utf-8",
    )


def backlog_bounds(days: int) -> tuple[float, dt.date, dt.date]:
    """t0 (end of the backlog: a past midnight in the account's zone) and the backfill dates."""
    zone = zoneinfo.ZoneInfo(ZONE)
    until = (dt.datetime.now(zone) - dt.timedelta(hours=1)).date()
    t0 = dt.datetime.combine(until, dt.time(), zone).timestamp()
    return t0, until - dt.timedelta(days=days), until


def ceiling_phase(pg: Postgres, records: int, batches: _ceiling.Batches) -> float:
    """(a): the store's statements on pre-normalized rows; the seconds they took."""
    database = f"ceiling_{records}"
    dsn = asyncio.run(pg.fresh(database))
    pg_cpu = pg.cpu_seconds()
    seconds = asyncio.run(_ceiling.write(dsn, SCHEMA, batches))
    pg_cpu = pg.cpu_seconds() - pg_cpu
    stored = asyncio.run(pg.count(database))
    asyncio.run(pg.admin(f'DROP DATABASE "{database}"'))
    print(
        f"  (a) ceiling: {records / seconds:,.0f} rows/s ({seconds:.1f} s; postgres CPU "
        f"{pg_cpu:.1f} s); {stored} rows stored"
    )
    if stored != records:
        raise RuntimeError(f"the ceiling stored {stored} rows, expected {records}")
    return seconds


def e2e_phase(
    pg: Postgres, work: Path, sim: Simulator, records: int, *, since: dt.date, until: dt.date
) -> tuple[ChildRun, dict[str, float], int]:
    """(b): ``cdrsync backfill`` into a fresh database; the run, CPU seconds, rows stored."""
    database = f"e2e_{records}"
    dsn = asyncio.run(pg.fresh(database))
    config = work / f"bench-{records}.toml"
    write_config(config, dsn=dsn, base_url=sim.wait_ready(), since=since, state=work)
    cpu0 = (sim.cpu_seconds(), pg.cpu_seconds())
    command = [sys.executable, "-m", "cdrsync", "backfill", "--config", str(config)]
    command += ["--account", ACCOUNT, "--since", since.isoformat(), "--until", until.isoformat()]
    run = run_measured(command, work / f"backfill-{records}", timeout=120 + records / 500)
    cpu = {
        "cdrsync": run.cpu_s,
        "simulator": sim.cpu_seconds() - cpu0[0],
        "postgres": pg.cpu_seconds() - cpu0[1],
    }
    stored = asyncio.run(pg.count(database))
    asyncio.run(pg.admin(f'DROP DATABASE "{database}"'))
    print(
        f"  (b) cdrsync backfill: {records / run.wall_s:,.0f} rows/s ({run.wall_s:.1f} s wall, "
        f"process start to exit); peak RSS {run.peak_mb:.0f} MB; {stored} rows stored"
    )
    quartiles = " / ".join(f"{run.rss_at(f):.0f}" for f in (0.1, 0.25, 0.5, 0.75, 0.95))
    print(f"      RSS MB at 10/25/50/75/95 % of the run: {quartiles}")
    busy = sum(cpu.values()) / run.wall_s
    print(
        "      CPU s: "
        + ", ".join(f"{k} {v:.1f}" for k, v in cpu.items())
        + f" (of 2 cores, {busy:.2f} busy on average)"
    )
    if stored != records:
        raise RuntimeError(f"cdrsync stored {stored} rows, expected {records}: rows were lost")
    return run, cpu, stored


def measure(pg: Postgres, work: Path, records: int, days: int, seed: int) -> Result:
    """Ceiling and end-to-end runs of one record count."""
    t0, since, until = backlog_bounds(days)
    print(f"\n== {records} records, {days} days ({since} .. {until} {ZONE}), window 1h ==")
    sim = Simulator(records, days, seed, t0)
    try:
        batches = _ceiling.prepare(
            records=records,
            days=days,
            seed=seed,
            t0=t0,
            account=ACCOUNT,
            window_s=WINDOW_S,
            zone=ZONE,
        )
        sizes = batches.sizes()
        print(
            f"  rows rendered and normalized in {batches.seconds:.1f} s (untimed); "
            f"{len(batches.batches)} batches of {sizes[0]}/{sizes[1]:.0f}/{sizes[2]} rows "
            "(min/mean/max)"
        )
        ceiling_s = ceiling_phase(pg, records, batches)
        del batches
        run, cpu, stored = e2e_phase(pg, work, sim, records, since=since, until=until)
    finally:
        sim.stop()
    result = Result(records, sizes, ceiling_s, run.wall_s, run.peak_mb, cpu, stored)
    ratio = result.e2e_rate / result.ceiling_rate
    print(f"  ratio (b)/(a): {ratio:.2f} (target >= {TARGET_RATIO})")
    return result


def report(results: list[Result], elapsed: float) -> None:
    """The final table."""
    print(
        f"\n{'records':>9} {'batch':>6} {'ceiling/s':>10} {'cdrsync/s':>10} {'ratio':>6} "
        f"{'peak RSS':>9} {'stored':>9}"
    )
    for r in results:
        ratio = r.e2e_rate / r.ceiling_rate
        print(
            f"{r.records:>9} {r.batch_sizes[1]:>6.0f} {r.ceiling_rate:>10,.0f} "
            f"{r.e2e_rate:>10,.0f} {ratio:>6.2f} {r.rss_mb:>6.0f} MB {r.rows_stored:>9}"
        )
    print(
        f"targets: ratio >= {TARGET_RATIO}, peak RSS <= {TARGET_RSS_MB:.0f} MB, flat as the "
        "record count grows"
    )
    ok = all(
        r.e2e_rate / r.ceiling_rate >= TARGET_RATIO and r.rss_mb <= TARGET_RSS_MB for r in results
    )
    print(f"verdict: {'all targets met' if ok else 'TARGETS MISSED'}")
    print(f"reference (the issue): {REFERENCE}")
    print(f"total elapsed: {elapsed:.0f} s")


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # run every cleanup, as on Ctrl-C


def main() -> int:
    """Run the benchmark; 0 when it ran (targets are reported, not enforced), 1 on failure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, nargs="+", default=[200_000, 1_000_000])
    parser.add_argument("--days", type=int, default=10, help="the backlog's span (default 10)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _terminate)
    began = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="cdrsync-bench-"))
    pg = Postgres(work)
    try:
        pg.start()
        shown = asyncio.run(pg.settings())
        print(
            "embedded PostgreSQL (unix socket only, durable defaults): "
            + ", ".join(f"{k}={v}" for k, v in shown.items())
        )
        results = [measure(pg, work, n, args.days, args.seed) for n in args.records]
        report(results, time.perf_counter() - began)
        return 0
    except (RuntimeError, OSError) as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("benchmark interrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        with contextlib.suppress(Exception):
            pg.server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
