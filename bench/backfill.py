"""Benchmark: `cdrsync backfill` of N Acefone records against the store's own write ceiling.

For each record count: an Acefone simulator (a separate process) serves N records spread over
``--days`` days on 127.0.0.1. Into fresh migrated databases of one embedded PostgreSQL with
durable settings it measures: (0) a plain COPY of the pre-normalized rows into ``calls``; (a)
the ceiling, the same rows by the store's COPY + ``upsert_calls`` in one-window batches; (b)
the ``cdrsync backfill`` command as a child process (fetch, parse, normalize, upsert), then the
same backfill again over the unchanged range (a re-read, which must write nothing), then the
documented queries of docs/queries.md on the loaded table; and, at one record count, (p) the
peer: dlt's ``rest_api`` source merging the same records into its own database. Prints every
figure and a PASS/FAIL verdict per target of issue 11.

    python bench/backfill.py [--records 200000 1000000] [--days 10] [--peer-records N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import importlib.util
import json
import shutil
import signal
import sys
import tempfile
import time
import zoneinfo
from collections.abc import Callable, Coroutine
from pathlib import Path
from types import FrameType
from typing import Any

import _ceiling
import _queries
from _child import TOKEN, ChildRun, Simulator, run_measured
from _postgres import SCHEMA, WRITTEN_SINCE_SQL, Postgres
from _verdict import Peer, Result, report

ACCOUNT, ZONE, WINDOW_S = "bench", "Asia/Kolkata", 3600
Writer = Callable[[str, str, _ceiling.Batches], Coroutine[Any, Any, float]]
PEER_SCRIPT = Path(__file__).resolve().parent / "_peer.py"


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


def timed_write(
    pg: Postgres, label: str, name: str, write: Writer, batches: _ceiling.Batches
) -> float:
    """One pre-normalized write phase into a fresh database; the seconds it took."""
    dsn = asyncio.run(pg.fresh(name))
    pg_cpu = pg.cpu_seconds()
    records = batches.rows
    seconds = asyncio.run(write(dsn, SCHEMA, batches))
    pg_cpu = pg.cpu_seconds() - pg_cpu
    stored = asyncio.run(pg.count(name))
    asyncio.run(pg.admin(f'DROP DATABASE "{name}"'))
    print(
        f"  {label}: {records / seconds:,.0f} rows/s ({seconds:.1f} s; postgres CPU "
        f"{pg_cpu:.1f} s); {stored} rows stored"
    )
    if stored != records:
        raise RuntimeError(f"{label} stored {stored} rows, expected {records}")
    return seconds


def backfill_run(
    pg: Postgres, sim: Simulator, command: list[str], logs: Path, records: int, *, label: str
) -> tuple[ChildRun, dict[str, float]]:
    """Run ``cdrsync backfill`` once; the run and the CPU seconds of every process."""
    cpu0 = (sim.cpu_seconds(), pg.cpu_seconds())
    run = run_measured(command, logs, timeout=120 + records / 500)
    cpu = {
        "cdrsync": run.cpu_s,
        "simulator": sim.cpu_seconds() - cpu0[0],
        "postgres": pg.cpu_seconds() - cpu0[1],
    }
    busy = sum(cpu.values()) / run.wall_s
    print(
        f"  {label} CPU s: "
        + ", ".join(f"{k} {v:.1f}" for k, v in cpu.items())
        + f" (of 2 cores, {busy:.2f} busy on average); cdrsync "
        f"{run.cpu_s / records * 1e6:.1f} us per row"
    )
    return run, cpu


def e2e_phase(
    pg: Postgres, work: Path, sim: Simulator, records: int, *, since: dt.date, until: dt.date
) -> tuple[ChildRun, ChildRun, int, float, _queries.SchemaReport]:
    """(b): ``cdrsync backfill`` into a fresh database, then again over the same range (the
    re-read), then the documented queries on what it loaded."""
    database = f"e2e_{records}"
    dsn = asyncio.run(pg.fresh(database))
    config = work / f"bench-{records}.toml"
    write_config(config, dsn=dsn, base_url=sim.wait_ready(), since=since, state=work)
    command = [sys.executable, "-m", "cdrsync", "backfill", "--config", str(config)]
    command += ["--account", ACCOUNT, "--since", since.isoformat(), "--until", until.isoformat()]
    run, _ = backfill_run(pg, sim, command, work / f"backfill-{records}", records, label="(b)")
    stored = asyncio.run(pg.count(database))
    print(
        f"  (b) cdrsync backfill: {records / run.wall_s:,.0f} rows/s ({run.wall_s:.1f} s wall, "
        f"process start to exit); peak RSS {run.peak_mb:.0f} MB; {stored} rows stored"
    )
    quartiles = " / ".join(f"{run.rss_at(f):.0f}" for f in (0.1, 0.25, 0.5, 0.75, 0.95))
    print(f"      RSS MB at 10/25/50/75/95 % of the run: {quartiles}")
    if stored != records:
        raise RuntimeError(f"cdrsync stored {stored} rows, expected {records}: rows were lost")
    asyncio.run(pg.forget_backfills(database))
    began = asyncio.run(pg.fetchval(database, "SELECT clock_timestamp()"))
    lsn = asyncio.run(pg.fetchval(database, "SELECT pg_current_wal_lsn()"))
    reread, _ = backfill_run(pg, sim, command, work / f"reread-{records}", records, label="(b')")
    written = int(asyncio.run(pg.fetchval(database, WRITTEN_SINCE_SQL, began)))
    wal = float(asyncio.run(pg.fetchval(database, "SELECT pg_current_wal_lsn() - $1::pg_lsn", lsn)))
    print(
        f"  (b') the same backfill again, unchanged: {records / reread.wall_s:,.0f} rows/s "
        f"({reread.wall_s:.1f} s, {run.wall_s / reread.wall_s:.1f}x faster); rows written "
        f"{written}; WAL {wal / 1e6:.1f} MB; peak RSS {reread.peak_mb:.0f} MB"
    )
    schema = asyncio.run(_queries.check(dsn, SCHEMA))
    _queries.show(schema)
    asyncio.run(pg.admin(f'DROP DATABASE "{database}"'))
    return run, reread, written, wal / 1e6, schema


def peer_phase(
    pg: Postgres, work: Path, sim: Simulator, records: int, *, since: dt.date, until: dt.date
) -> Peer:
    """(p): dlt's rest_api source merging the same records into its own database."""
    if importlib.util.find_spec("dlt") is None:
        note = "dlt is not installed: pip install -e '.[bench]'"
        print(f"  (p) dlt peer: not measured ({note})")
        return Peer(records, None, note)
    database = f"peer_{records}"
    asyncio.run(pg.admin(f'DROP DATABASE IF EXISTS "{database}"', f'CREATE DATABASE "{database}"'))
    command = [sys.executable, str(PEER_SCRIPT), "--base-url", sim.wait_ready()]
    command += ["--dsn", pg.dsn(database), "--work", str(work)]
    command += ["--since", f"{since} 00:00:00", "--until", f"{until} 00:00:00"]
    cpu0 = pg.cpu_seconds()
    run = run_measured(command, work / f"peer-{records}", timeout=300 + records / 100)
    pg_cpu = pg.cpu_seconds() - cpu0
    loaded = (work / f"peer-{records}.stdout.log").read_text().split()[-1]
    asyncio.run(pg.admin(f'DROP DATABASE "{database}"'))
    print(
        f"  (p) dlt peer (rest_api, merge on id): {records / run.wall_s:,.0f} rows/s "
        f"({run.wall_s:.1f} s); peak RSS {run.peak_mb:.0f} MB; CPU {run.cpu_s:.1f} s, "
        f"postgres {pg_cpu:.1f} s; {loaded} rows loaded"
    )
    if loaded != str(records):
        return Peer(records, None, f"dlt loaded {loaded} rows, expected {records}")
    return Peer(records, run)


def measure(
    pg: Postgres, work: Path, records: int, args: argparse.Namespace
) -> tuple[Result, Peer | None]:
    """Every phase of one record count."""
    t0, since, until = backlog_bounds(args.days)
    print(f"\n== {records} records, {args.days} days ({since} .. {until} {ZONE}), window 1h ==")
    sim = Simulator(records, args.days, args.seed, t0)
    peer = None
    try:
        batches = _ceiling.prepare(
            records=records, days=args.days, seed=args.seed, t0=t0, account=ACCOUNT,
            window_s=WINDOW_S, zone=ZONE,
        )  # fmt: skip
        sizes = batches.sizes()
        print(
            f"  rows rendered and normalized in {batches.seconds:.1f} s (untimed); "
            f"{len(batches.batches)} batches of {sizes[0]}/{sizes[1]:.0f}/{sizes[2]} rows "
            "(min/mean/max)"
        )
        copy_s = timed_write(pg, "(0) plain COPY", f"copy_{records}", _ceiling.write_plain, batches)
        ceiling_s = timed_write(pg, "(a) ceiling", f"ceiling_{records}", _ceiling.write, batches)
        print(f"      ceiling / plain COPY: {copy_s / ceiling_s:.2f}")
        del batches
        run, reread, written, wal, schema = e2e_phase(
            pg, work, sim, records, since=since, until=until
        )
        if records == args.peer_records:
            peer = peer_phase(pg, work, sim, records, since=since, until=until)
    finally:
        sim.stop()
    result = Result(records, sizes[1], copy_s, ceiling_s, run, reread, written, wal, schema)
    print(f"  ratio (b)/(a): {result.e2e_rate / result.ceiling_rate:.2f}")
    return result, peer


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # run every cleanup, as on Ctrl-C


def main() -> int:
    """Run the benchmark; 0 when it ran (targets are reported, not enforced), 1 on failure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, nargs="+", default=[200_000, 1_000_000])
    parser.add_argument("--days", type=int, default=10, help="the backlog's span (default 10)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--peer-records", type=int, default=None,
        help="the record count dlt also loads (default: the smallest; 0: no peer)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.peer_records is None:
        args.peer_records = min(args.records)
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
        measured = [measure(pg, work, n, args) for n in sorted(args.records)]
        peers = [p for _, p in measured if p is not None]
        report([r for r, _ in measured], peers[0] if peers else None, time.perf_counter() - began)
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
