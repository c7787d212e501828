"""The accounts benchmark's simulator process: many Acefone accounts behind one port.

Run as a script with ``--first`` and ``--count``, it builds that many simulated Acefone
accounts (``a0001``, ``a0002``...), each its own ``AcefoneSimulator`` (its own seed, backlog and
live arrivals), on one port: every account's ``base_url`` is ``http://127.0.0.1:<port>``, and
its token ``bench-<account>`` tells it apart (a ``base_url`` is scheme and host only).
``GET /_bench/stats`` sums the list requests and rows served over every account, and counts
the accepted ones per second of the epoch. It prints ``listening <port>`` once it accepts
connections and serves until SIGTERM/SIGINT or until its parent dies, like ``bench/_child.py``."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections import Counter

import orjson
from aiohttp import web

from _child import serve_until_stopped
from cdrsync.simulator.acefone import AcefoneSimConfig, AcefoneSimulator
from cdrsync.simulator.server import build_app, serve_app

BACKLOG = 30
"""Calls per account that ended in the two hours before the benchmark started."""
BACKLOG_DAYS = 2 / 24
LIVE_PER_MINUTE = 1.0
"""Live arrivals per account: a thousand accounts bring a thousand calls a minute."""

_SIMS = web.AppKey("bench_sims", list)


def account_name(index: int) -> str:
    """The name of the benchmark's account number ``index`` (1-based)."""
    return f"a{index:04d}"


def token(index: int) -> str:
    """Account ``index``'s static API token: the simulator routes a request by it."""
    return f"bench-{account_name(index)}"


def sim_config(index: int) -> AcefoneSimConfig:
    """Account ``index``'s simulated API: the simulator's default lateness and changes, live
    arrivals, no faults and no rate limit (cdrsync's own limiter paces it)."""
    return AcefoneSimConfig(
        seed=index,
        backlog=BACKLOG,
        backlog_days=BACKLOG_DAYS,
        live_per_minute=LIVE_PER_MINUTE,
        rate_limit=None,
        token=token(index),
    )


async def _stats(request: web.Request) -> web.Response:
    sims = request.app[_SIMS]
    per_second = Counter(int(t) for s in sims for t in s.stats.request_times)
    body = {
        "list_requests": sum(s.stats.list_requests for s in sims),
        "rows_served": sum(s.stats.rows_served for s in sims),
        "accounts": len(sims),
        "per_second": {str(second): n for second, n in per_second.items()},
    }
    return web.Response(body=orjson.dumps(body), content_type="application/json")


def build(first: int, count: int, t0: float) -> web.Application:
    """One application serving every account (by token), and the stats route."""
    sims = {token(i): AcefoneSimulator(sim_config(i), t0=t0) for i in range(first, first + count)}
    root = build_app(next(iter(sims.values())), tenants=sims)
    root[_SIMS] = list(sims.values())
    root.router.add_get("/_bench/stats", _stats)
    return root


async def _serve(app: web.Application) -> None:
    await serve_until_stopped(lambda: serve_app(app, "127.0.0.1", 0))


def main() -> int:
    """Build the accounts and serve them."""
    args = argparse.ArgumentParser(description="the accounts benchmark's Acefone simulator")
    args.add_argument("--first", type=int, required=True, help="first account number")
    args.add_argument("--count", type=int, required=True)
    args.add_argument("--t0", type=float, required=True, help="end of the backlog, epoch seconds")
    ns = args.parse_args()
    asyncio.run(_serve(build(ns.first, ns.count, ns.t0)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
