"""The embedded PostgreSQL that cdrsync starts when no database.dsn is configured."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from cdrsync.app import runtime as app
from cdrsync.config import parse
from cdrsync.store.embedded import EmbeddedPostgres


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """A state directory outside pytest's 0700 tmp tree (the server may run as another user)."""
    path = Path(tempfile.mkdtemp(prefix="cdrsync-test-emb-"))
    try:
        yield path
    finally:
        probe = EmbeddedPostgres()
        if (path / "postgres" / "PG_VERSION").exists():
            probe.start(path / "postgres")
            probe.stop("immediate")
        shutil.rmtree(path, ignore_errors=True)


def settings(state_dir: Path):
    return parse(
        {
            "daemon": {"state_dir": str(state_dir), "http_listen": ""},
            "accounts": [{"name": "a", "vendor": "acefone", "base_url": "http://127.0.0.1:9",
                          "token": "t0ken", "start": "2026-11-01"}],
        },
        source="<test>",
        environ={},
    )  # fmt: skip


@pytest.mark.timeout(120)
async def test_one_shot_command_leaves_a_running_daemons_server_alone(state_dir: Path) -> None:
    """`status`/`migrate`/`backfill` (own_database=False) beside a running embedded server
    reuse it and leave it running; started by themselves, they stop it again."""
    daemon_side = EmbeddedPostgres()
    await asyncio.to_thread(daemon_side.start, state_dir / "postgres")
    assert daemon_side.started
    async with app.runtime(settings(state_dir), asyncio.Event(), own_database=False) as rt:
        assert rt is not None
        await rt.store.ping()
    assert await asyncio.to_thread(daemon_side.running)
    await asyncio.to_thread(daemon_side.stop)

    async with app.runtime(settings(state_dir), asyncio.Event(), own_database=False) as rt:
        assert rt is not None
    assert not await asyncio.to_thread(daemon_side.running)
