"""The `cdrsync` command as a shell user meets it, in a child process with real signals: Ctrl-C
(SIGINT) exits 130 after a clean stop, SIGTERM still exits 0, and `run --log-level` overrides
the file's daemon.log_level."""

from __future__ import annotations

import signal
import socket
from pathlib import Path

import pytest
from test_daemon_process import (  # type: ignore[import-not-found]  # a sibling pytest puts on sys.path
    quiet_simulator,
    serve,
    served,
    start_before,
)

from cdrsync.simulator.server import RunningServer
from process_support import account_table, children, write_config
from support import eventually

__all__ = ["served"]  # the fixture, imported for the tests below


def free_port() -> int:
    """A port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def listening(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:``port``."""
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 0)])
async def test_ctrl_c_exits_130_and_sigterm_exits_0(tmp_path: Path, sig: int, code: int) -> None:
    """A running command stopped by Ctrl-C (SIGINT) exits 130, as shells expect of an interrupted
    command; stopped by SIGTERM (systemd) it exits 0."""
    port = free_port()
    async with children(tmp_path) as kids:
        sim = await kids.spawn("simulate", "--port", str(port), "--records", "10", label="sim")

        async def up() -> bool:
            return listening(port) or not sim.running

        assert await eventually(up, timeout=60), sim.tail()
        assert sim.running, sim.tail()
        sim.proc.send_signal(sig)
        exited = await sim.wait(60)
    assert exited == code, sim.tail()


async def test_run_log_level_overrides_the_file_and_ctrl_c_stops_it_cleanly(
    dsn: str, tmp_path: Path, served: list[RunningServer]
) -> None:
    """With daemon.log_level = "error" in the file, `run --log-level info` logs its info lines
    (daemon.started); Ctrl-C then stops it the clean way (daemon.stopped) with exit 130."""
    url = await serve(served, quiet_simulator(200, 0.5, seed=41))
    accounts = [account_table(url, start=start_before(0.5))]
    config = write_config(tmp_path / "quiet.toml", dsn, accounts, log_level="error")
    async with children(tmp_path) as kids:
        daemon = await kids.spawn("run", "--config", str(config), "--log-level", "info")
        started = await daemon.wait_event("daemon.started", within=90)
        assert started is not None, daemon.tail()
        assert started["level"] == "info"
        daemon.proc.send_signal(signal.SIGINT)
        exited = await daemon.wait(60)
    assert exited == 130, daemon.tail()
    assert daemon.named("daemon.stopped"), daemon.tail()
