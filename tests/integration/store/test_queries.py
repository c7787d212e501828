"""The analyst guide (docs/queries.md) and the analyst dashboard (deploy/grafana/cdrsync-calls.json)
are executable: the guide's role recipe and every query, and every panel's SQL under that role."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import re
import secrets
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from cdrsync.simulator.acefone import AcefoneSimConfig, AcefoneSimulator
from cdrsync.simulator.server import start_server
from support import acefone_settings, running_daemon, synced

ROOT = Path(__file__).parents[3]
GUIDE = ROOT / "docs" / "queries.md"
DASHBOARD = json.loads((ROOT / "deploy" / "grafana" / "cdrsync-calls.json").read_text("utf-8"))
BLOCKS = re.findall(r"```sql\n(.*?)```", GUIDE.read_text(encoding="utf-8"), flags=re.S)
ROLE_RECIPE, QUERIES = BLOCKS[0], BLOCKS[1:]


@pytest.fixture
async def synced_dsn(dsn: str, store) -> str:
    """A database holding a synced simulator account (calls, views, state and rejects)."""
    sim = AcefoneSimulator(
        AcefoneSimConfig(seed=17, backlog=1500, backlog_days=2.0, live_per_minute=0,
                         late_fraction=0.0, change_fraction=0.0, malformed_fraction=0.01)
    )  # fmt: skip
    server = await start_server(sim)
    try:
        async with running_daemon(acefone_settings(server.base_url, dsn, account={"settle": "0s"})):
            assert await synced(store, sim, timeout=60) == {"missing": [], "extra": [], "stale": []}
    finally:
        await server.close()
    return dsn


def test_the_guide_has_its_ten_queries():
    """The guide keeps at least ten example queries besides the role recipe."""
    assert len(QUERIES) >= 10
    assert "CREATE ROLE cdrsync_reader" in ROLE_RECIPE


async def test_every_query_runs_and_answers(synced_dsn: str) -> None:
    """Each example query runs on synced data and returns rows (unless marked otherwise)."""
    conn = await asyncpg.connect(synced_dsn)
    try:
        for query in QUERIES:
            rows = await conn.fetch(query)
            if "may return no rows" not in query:
                assert rows, query
    finally:
        await conn.close()


async def test_read_only_role_recipe_reads_and_cannot_write(synced_dsn: str) -> None:
    """The recipe's role can read calls and the views but cannot change a row."""
    role = f"cdrsync_reader_{secrets.token_hex(4)}"
    owner = await asyncpg.connect(synced_dsn)
    try:
        await owner.execute(ROLE_RECIPE.replace("cdrsync_reader", role))
        reader = await asyncpg.connect(synced_dsn, user=role, password="change-me")
        try:
            assert await reader.fetchval("SELECT count(*) FROM cdrsync.calls") > 0
            assert await reader.fetch("SELECT * FROM cdrsync.calls_daily")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await reader.execute("DELETE FROM cdrsync.calls")
        finally:
            await reader.close()
    finally:
        await owner.execute(f"DROP OWNED BY {role}; DROP ROLE {role}")
        await owner.close()


@contextlib.asynccontextmanager
async def reader_of(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection as a fresh role made by the guide's read-only recipe."""
    role = f"cdrsync_reader_{secrets.token_hex(4)}"
    owner = await asyncpg.connect(dsn)
    try:
        await owner.execute(ROLE_RECIPE.replace("cdrsync_reader", role))
        reader = await asyncpg.connect(dsn, user=role, password="change-me")
        try:
            yield reader
        finally:
            await reader.close()
    finally:
        await owner.execute(f"DROP OWNED BY {role}; DROP ROLE {role}")
        await owner.close()


def time_range(now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """The dashboard's default time range (``now-7d`` to ``now``) at ``now``."""
    found = re.fullmatch(r"now-(\d+)([hd])", DASHBOARD["time"]["from"])
    assert found and DASHBOARD["time"]["to"] == "now", DASHBOARD["time"]
    unit = {"h": "hours", "d": "days"}[found[2]]
    return now - dt.timedelta(**{unit: int(found[1])}), now


def grafana_sql(
    sql: str, variables: Mapping[str, Any], start: dt.datetime, end: dt.datetime
) -> str:
    """``sql`` as Grafana's PostgreSQL data source sends it: time macros expanded, and
    variables put in (a multi-value one as quoted, comma-separated values; a single one raw)."""

    def stamp(at: dt.datetime) -> str:
        # RFC 3339 with the fraction, as Grafana formats it (RFC3339Nano): cut to the second,
        # the range would end before rows written earlier in the same second.
        return "'" + at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ") + "'"

    sql = re.sub(
        r"\$__timeFilter\(([^)]+)\)",
        lambda m: f"{m[1].strip()} BETWEEN {stamp(start)} AND {stamp(end)}",
        sql,
    )
    sql = sql.replace("$__timeFrom()", stamp(start)).replace("$__timeTo()", stamp(end))
    for name in sorted(variables, key=len, reverse=True):
        value = variables[name]
        if isinstance(value, list):
            value = ",".join("'" + v.replace("'", "''") + "'" for v in value)
        sql = sql.replace(f"${{{name}}}", value).replace(f"${name}", value)
    assert "$" not in sql, f"a macro or variable Grafana would expand is left in: {sql}"
    return sql


async def dashboard_variables(
    reader: asyncpg.Connection, start: dt.datetime, end: dt.datetime
) -> dict[str, Any]:
    """Each variable at "All" (query variables: every value their query lists) or its default."""
    values: dict[str, Any] = {}
    for variable in DASHBOARD["templating"]["list"]:
        if variable["type"] == "query":
            sql = grafana_sql(variable["query"], values, start, end)
            values[variable["name"]] = [row[0] for row in await reader.fetch(sql)]
            assert values[variable["name"]], sql
        elif variable["type"] == "custom":
            values[variable["name"]] = variable["current"]["value"]
    return values


async def test_every_analyst_dashboard_panel_runs_as_the_reader(synced_dsn: str) -> None:
    """Each panel's SQL, with Grafana's macros and variables expanded, runs under the read-only
    role on synced data and answers rows of the panel's format."""
    start, end = time_range(dt.datetime.now(dt.UTC))
    async with reader_of(synced_dsn) as reader:
        variables = await dashboard_variables(reader, start, end)
        assert variables["vendor"] == ["acefone"]
        panels = [p for p in DASHBOARD["panels"] if p["type"] != "row"]
        assert len(panels) >= 6
        for panel in panels:
            (target,) = panel["targets"]
            rows = await reader.fetch(grafana_sql(target["rawSql"], variables, start, end))
            assert rows, panel["title"]
            if target["format"] == "time_series":
                assert {"time", "metric"} <= set(rows[0].keys()), panel["title"]
