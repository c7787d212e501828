"""SIGHUP reloads the configuration of a running daemon (a real subprocess)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from test_daemon_process import quiet_simulator, serve, served, start_before  # type: ignore[import-not-found]  # a sibling module pytest puts on sys.path

from cdrsync.simulator.server import RunningServer
from cdrsync.store.embedded import EmbeddedPostgres
from cdrsync.store.store import Store
from process_support import account_table, children, fetch, write_config
from support import eventually

__all__ = ["served"]  # the fixture, re-used from the crash tests


async def accounts_with_calls(dsn: str) -> set[str]:
    rows = await fetch(dsn, "SELECT DISTINCT account FROM calls")
    return {r["account"] for r in rows}


async def test_sighup_adds_removes_and_restarts_accounts_and_refuses_a_bad_file(
    dsn: str, store: Store, tmp_path: Path, served: list[RunningServer]
) -> None:
    """SIGHUP starts an added account, restarts a changed one and stops a removed one; a file
    with errors is refused with the old configuration still running."""
    url = await serve(served, quiet_simulator(300, 1.0, seed=31))
    start = start_before(1.0)
    path = tmp_path / "cdrsync.toml"
    first = account_table(url, start=start, name="acc-a")
    second = account_table(url, start=start, name="acc-b")
    write_config(path, dsn, [first])
    async with children(tmp_path) as kids:
        child = await kids.daemon(path, label="reload")
        assert await child.wait_event("daemon.started", within=30), kids.tails()
        assert await child.wait_event("sync.cycle_done", within=30, stream="acc-a/list")

        write_config(path, dsn, [first, second])
        child.proc.send_signal(signal.SIGHUP)
        reloaded = await child.wait_event("config.reloaded", within=20)
        assert reloaded is not None, kids.tails()
        assert (reloaded["added"], reloaded["removed"], reloaded["restarted"]) == (
            ["acc-b"], [], [],
        )  # fmt: skip

        async def both() -> bool:
            return await accounts_with_calls(dsn) == {"acc-a", "acc-b"}

        assert await eventually(both, timeout=30), kids.tails()

        path.write_text(path.read_text().replace('"acc-b"', '"ACC B!"'))
        child.proc.send_signal(signal.SIGHUP)
        refused = await child.wait_event("config.reload_refused", within=20)
        assert refused is not None, kids.tails()
        assert any("accounts[1].name" in p for p in refused["problems"])
        assert child.running

        write_config(path, dsn, [{**second, "poll_interval": "500ms"}])
        child.proc.send_signal(signal.SIGHUP)
        changed = await child.wait_event("config.reloaded", within=20, restarted=["acc-b"])
        assert changed is not None, kids.tails()
        assert changed["removed"] == ["acc-a"]
        assert changed["streams"] == ["acc-b/list"]
        # The removed account's lock is given back: another process may take it over (the
        # running one's stays held).
        other = store.lock_session()
        try:
            assert await other.try_acquire("acc-a/list")
            assert not await other.try_acquire("acc-b/list")
        finally:
            await other.close()
        assert await child.terminate(15) == 0, kids.tails()


@pytest.mark.timeout(300)
async def test_sighup_while_postgres_is_down_applies_nothing_and_keeps_running(
    dsn: str, tmp_path: Path, served: list[RunningServer], restartable_pg: EmbeddedPostgres
) -> None:
    """A SIGHUP during a database outage is refused as a whole (logged, the old accounts run
    on, the daemon does not exit); a SIGHUP once the database is back applies the file."""
    url = await serve(served, quiet_simulator(300, 1.0, seed=37))
    start = start_before(1.0)
    path = tmp_path / "cdrsync.toml"
    first = account_table(url, start=start, name="acc-a")
    second = account_table(url, start=start, name="acc-b")
    third = account_table(url, start=start, name="acc-c")
    write_config(path, dsn, [first, second])
    async with children(tmp_path) as kids:
        child = await kids.daemon(path, label="reload-outage")
        assert await child.wait_event("sync.cycle_done", within=30, stream="acc-b/list")

        # acc-a restarted, acc-b removed, acc-c added: none of it may happen half-way.
        write_config(path, dsn, [{**first, "poll_interval": "500ms"}, third])
        restartable_pg.stop()
        try:
            child.proc.send_signal(signal.SIGHUP)
            failed = await child.wait_event("config.reload_failed", within=30)
            assert failed is not None, kids.tails()
            assert "send SIGHUP again" in failed["action"]
            assert child.running
        finally:
            restartable_pg.restart()
        seen = len(child.named("sync.cycle_done", stream="acc-b/list"))

        async def old_accounts_sync() -> bool:
            return len(child.named("sync.cycle_done", stream="acc-b/list")) > seen

        assert await eventually(old_accounts_sync, timeout=90), kids.tails()
        assert not child.named("config.reloaded")
        assert not [e for e in child.events() if str(e.get("stream", "")).startswith("acc-c")]

        child.proc.send_signal(signal.SIGHUP)
        reloaded = await child.wait_event("config.reloaded", within=30)
        assert reloaded is not None, kids.tails()
        assert (reloaded["added"], reloaded["removed"], reloaded["restarted"]) == (
            ["acc-c"], ["acc-b"], ["acc-a"],
        )  # fmt: skip
        assert await child.terminate(15) == 0, kids.tails()
