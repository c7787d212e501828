"""The shipped Prometheus rules and the operations dashboard (deploy/) against a running daemon:
every metric they name is one that /metrics exports, and each alert's selectors pick the series
the alert is about, on a real scrape of a daemon syncing all three vendors' simulators; and an
account removed by a reload leaves no series behind that an alert would take for a stuck stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import socket
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from cdrsync.app import daemon as app
from cdrsync.config import Settings, parse
from cdrsync.simulator.acefone import AcefoneSimConfig, AcefoneSimulator
from cdrsync.simulator.demo_vendors import AcefoneDemo, OzonetelDemo, VccDemo
from cdrsync.simulator.server import start_server
from promql import Selector, selectors
from support import eventually, running_daemon

DEPLOY = Path(__file__).parents[3] / "deploy"
RULES = yaml.safe_load((DEPLOY / "prometheus" / "cdrsync-rules.yml").read_text("utf-8"))
OPERATIONS = json.loads((DEPLOY / "grafana" / "cdrsync-operations.json").read_text("utf-8"))
SECRET = "push-secret-for-tests"

Series = tuple[str, Mapping[str, str]]


def rules() -> dict[str, str]:
    """Alert name -> expression."""
    return {r["alert"]: r["expr"] for group in RULES["groups"] for r in group["rules"]}


def panel_expressions() -> list[str]:
    """Every PromQL expression of the operations dashboard, its variables put in as Grafana
    does for "All" (their allValue)."""
    variables = {
        v["name"]: v.get("allValue", "")
        for v in OPERATIONS["templating"]["list"]
        if "allValue" in v
    }
    found = []
    for panel in OPERATIONS["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, value in variables.items():
                expr = expr.replace(f"${name}", value)
            found.append(expr)
    return found


def variable_metrics() -> set[str]:
    """The metrics the dashboard's variables list their values from (``label_values(m, l)``)."""
    found = set()
    for variable in OPERATIONS["templating"]["list"]:
        if variable["type"] == "query":
            inner = variable["definition"].removeprefix("label_values(").rstrip(")")
            found.add(inner.split(",")[0].strip())
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def scrape(http: aiohttp.ClientSession, port: int) -> list[Series]:
    """The samples of one /metrics scrape as (name, labels)."""
    async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
        text = await response.text()
    return [
        (sample.name, dict(sample.labels))
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


async def listening(port: int) -> bool:
    """Whether the daemon accepts connections on its HTTP port."""
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    await writer.wait_closed()
    return True


def scenario_settings(urls: list[str], dsn: str, port: int, demos: list[Any]) -> Settings:
    """One account per vendor (Acefone's limit above its simulator's, so that 429s come) and
    an Acefone account with a wrong token."""
    start = (dt.datetime.now(dt.UTC) - dt.timedelta(days=3)).date()
    tables = [d.account_table(url, start, SECRET) for d, url in zip(demos, urls, strict=True)]
    tables[0]["rate_limits"] = {"list": "60/2s"}
    tables[0]["poll_interval"] = "300ms"
    # An account whose token the vendor refuses: every one of its cycles fails.
    tables.append({**tables[0], "name": "refused-acefone", "token": "not-the-token"})
    return parse(
        {
            "database": {"dsn": dsn, "schema": "cdrsync"},
            "daemon": {"state_dir": "/tmp", "http_listen": f"127.0.0.1:{port}",
                       "shutdown_grace": "5s"},
            "accounts": tables,
        },
        source="<test>",
        environ={},
    )  # fmt: skip


def acefone_accounts(
    url: str, dsn: str, port: int, accounts: tuple[dict[str, Any], ...]
) -> Settings:
    """Acefone accounts (``name`` and ``token`` each) on one simulator, fast polling."""
    start = (dt.datetime.now(dt.UTC) - dt.timedelta(days=1)).date().isoformat()
    tables = [
        {"vendor": "acefone", "base_url": url, "start": start, "poll_interval": "300ms",
         "settle": "1s", "rate_limits": {"list": "100000/min"}, **account}
        for account in accounts
    ]  # fmt: skip
    return parse(
        {
            "database": {"dsn": dsn, "schema": "cdrsync"},
            "daemon": {"state_dir": "/tmp", "http_listen": f"127.0.0.1:{port}",
                       "shutdown_grace": "5s"},
            "accounts": tables,
        },
        source="<test>",
        environ={},
    )  # fmt: skip


@contextlib.asynccontextmanager
async def three_vendors(dsn: str) -> AsyncIterator[tuple[int, list[Any]]]:
    """A daemon syncing Acefone (429s and malformed records), Ozonetel (pushes, a backlog
    stream) and VCC Live (webhooks, lookups); yields its HTTP port and the vendor demos."""
    acefone = AcefoneDemo(
        AcefoneSimulator(
            AcefoneSimConfig(seed=5, backlog=600, backlog_days=0.5, live_per_minute=30.0,
                             malformed_fraction=0.02, rate_limit=20, rate_period_s=2.0)
        )
    )  # fmt: skip
    demos: list[Any] = [acefone, OzonetelDemo.sized(60), VccDemo.sized(60)]
    port = free_port()
    async with contextlib.AsyncExitStack() as stack:
        urls = []
        for demo in demos:
            server = await demo.serve()
            stack.push_async_callback(server.close)
            urls.append(server.base_url)
        await stack.enter_async_context(running_daemon(scenario_settings(urls, dsn, port, demos)))
        assert await eventually(lambda: listening(port), timeout=30), "no HTTP listener"
        stop = asyncio.Event()
        senders = [
            asyncio.create_task(d.send_pushes(f"http://127.0.0.1:{port}/hooks/{d.account}"
                                              f"?token={SECRET}", stop))
            for d in demos
            if d.takes_pushes
        ]  # fmt: skip
        try:
            yield port, demos
        finally:
            stop.set()
            await asyncio.gather(*senders, return_exceptions=True)


# Each alert, and what its selectors mean to pick from a scrape: a predicate over a series.
MEANT: dict[str, Callable[[str, Mapping[str, str]], bool]] = {
    "CdrsyncWatermarkLagHigh": lambda n, lab: (
        n in {"cdrsync_watermark_lag_seconds", "cdrsync_last_success_timestamp_seconds"}
        and not lab["stream"].endswith("/history")
    ),
    "CdrsyncStreamStuck": lambda n, lab: (
        n == "cdrsync_last_success_timestamp_seconds" and not lab["stream"].endswith("/history")
    ),
    "CdrsyncRateLimited": lambda n, lab: n == "cdrsync_rate_limited_total",
    "CdrsyncRejectsGrowing": lambda n, lab: n == "cdrsync_reject_records",
    "CdrsyncPushesRefused": lambda n, lab: (
        n == "cdrsync_pushes_total" and not lab["status"].startswith("2")
    ),
    "CdrsyncNoSuccessfulCycle": lambda n, lab: (
        n == "cdrsync_cycles_total" and lab["outcome"] == "ok"
    ),
}
# Series of the same metrics that an alert must leave out, and that the scrape must hold for
# the check to mean anything.
LEFT_OUT = {
    "CdrsyncWatermarkLagHigh": (
        "cdrsync_watermark_lag_seconds", {"stream": "demo-ozonetel/history"},
    ),
    "CdrsyncPushesRefused": ("cdrsync_pushes_total", {"account": "demo-ozonetel", "status": "200"}),
    "CdrsyncNoSuccessfulCycle": (
        "cdrsync_cycles_total", {"stream": "refused-acefone/list", "outcome": "failed"},
    ),
}  # fmt: skip


def wanted_names() -> set[str]:
    """Every metric a rule, a panel or a dashboard variable reads."""
    exprs = [*rules().values(), *panel_expressions()]
    return {s.metric for e in exprs for s in selectors(e)} | variable_metrics()


def holds(samples: list[Series], name: str, labels: Mapping[str, str]) -> bool:
    """Whether a series ``name`` with (at least) ``labels`` was scraped."""
    return any(n == name and labels.items() <= lab.items() for n, lab in samples)


async def refuse_a_push(http: aiohttp.ClientSession, port: int) -> None:
    """A push with a wrong token, as a misconfigured vendor would send it."""
    url = f"http://127.0.0.1:{port}/hooks/demo-ozonetel?token=wrong"
    async with http.post(url, data={"data": "{}"}) as response:
        assert response.status in {401, 403}, response.status


@pytest.mark.timeout(240)
async def test_rules_and_panels_read_series_the_daemon_exports(dsn: str) -> None:
    """Every metric a rule or panel names is in a real scrape, and each alert's selectors pick
    exactly the series it is about (never a backlog stream's lag, an accepted push, ...)."""
    samples: list[Series] = []
    async with three_vendors(dsn) as (port, _), aiohttp.ClientSession() as http:
        await refuse_a_push(http, port)

        async def complete() -> bool:
            nonlocal samples
            samples = await scrape(http, port)
            names = {n for n, _ in samples}
            return wanted_names() <= names and all(
                holds(samples, n, lab) for n, lab in LEFT_OUT.values()
            )

        assert await eventually(complete, timeout=150, interval=1.0), (
            sorted(wanted_names() - {n for n, _ in samples}),
            [s for s in LEFT_OUT.values() if not holds(samples, *s)],
        )

    assert set(MEANT) == set(rules()), "every rule has its meaning written down here"
    for alert, expr in rules().items():
        chosen: list[Selector] = selectors(expr)
        assert chosen, alert
        for selector in chosen:
            picked = selector.select(samples)
            meant = [
                (n, lab) for n, lab in samples if n == selector.metric and MEANT[alert](n, lab)
            ]
            assert picked, f"{alert}: {selector} selects nothing"
            assert picked == meant, f"{alert}: {selector} picks {picked}, not {meant}"
        if alert in LEFT_OUT:
            name, labels = LEFT_OUT[alert]
            assert not any(s.selects(n, lab) for s in chosen for n, lab in samples
                           if n == name and labels.items() <= lab.items()), alert  # fmt: skip


async def test_an_account_removed_by_a_reload_leaves_no_stale_gauges(dsn: str) -> None:
    """After a reload removes an account, its streams' lag and last-success gauges and its rate
    budgets are gone from /metrics (CdrsyncStreamStuck would fire on their last values until
    the next restart), while the remaining account's are still there."""
    sim = AcefoneSimulator(AcefoneSimConfig(seed=8, backlog=100, backlog_days=0.2))
    server = await start_server(sim)
    port = free_port()
    kept = {"name": "kept", "token": sim.config.token}
    gone = {"name": "gone", "token": sim.config.token}

    def settings(*accounts: dict[str, Any]) -> Settings:
        return acefone_accounts(server.base_url, dsn, port, accounts)

    stop, reload = asyncio.Event(), asyncio.Event()
    daemon = asyncio.create_task(
        app.run(settings(kept, gone), stop=stop, reload=reload, reloader=lambda: settings(kept))
    )
    samples: list[Series] = []
    try:
        async with aiohttp.ClientSession() as http:

            def streams(name: str) -> set[str]:
                return {lab["stream"] for n, lab in samples if n == name}

            async def scraped(want: set[str]) -> bool:
                nonlocal samples
                if not await listening(port):
                    return False
                samples = await scrape(http, port)
                return streams("cdrsync_last_success_timestamp_seconds") == want

            assert await eventually(lambda: scraped({"kept/list", "gone/list"}), timeout=30)
            assert holds(samples, "cdrsync_rate_budget_used", {"account": "gone"})
            reload.set()
            assert await eventually(lambda: scraped({"kept/list"}), timeout=30), samples
    finally:
        stop.set()
        await asyncio.wait_for(daemon, timeout=15)
        await server.close()
    assert streams("cdrsync_watermark_lag_seconds") == {"kept/list"}
    budgets = {lab["account"] for n, lab in samples if n == "cdrsync_rate_budget_used"}
    assert budgets == {"kept"}
