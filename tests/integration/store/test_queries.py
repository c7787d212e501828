"""The analyst guide (docs/queries.md) is executable: its role recipe and every query run."""

from __future__ import annotations

import re
import secrets
from pathlib import Path

import asyncpg
import pytest

from cdrsync.simulator.acefone import AcefoneSimConfig, AcefoneSimulator
from cdrsync.simulator.server import start_server
from support import acefone_settings, running_daemon, synced

GUIDE = Path(__file__).parents[3] / "docs" / "queries.md"
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
