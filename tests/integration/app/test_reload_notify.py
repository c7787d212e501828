"""What Type=notify-reload (systemd 253+, systemd/cdrsync.service.d/notify-reload.conf) needs of
the daemon, over a real NOTIFY_SOCKET: each SIGHUP answered by RELOADING=1 with the
MONOTONIC_USEC= of that moment, then READY=1 once the file is applied or refused, so that
`systemctl reload` returns when the reload is over and never hangs."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from test_daemon_process import (  # type: ignore[import-not-found]  # a sibling pytest puts on sys.path
    quiet_simulator,
    serve,
    served,
    start_before,
)

from cdrsync.simulator.server import RunningServer
from process_support import Child, account_table, children, write_config

__all__ = ["served"]  # the fixture, imported for the test below


class NotifySocket:
    """A datagram socket standing in for systemd's: every line the daemon sends, in order."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.lines: list[str] = []

    def _drain(self) -> None:
        while True:
            try:
                self.lines.extend(self._sock.recv(4096).decode().splitlines())
            except BlockingIOError:
                return

    async def after(self, start: int, line: str, *, within: float, child: Child) -> int | None:
        """The index of the first ``line`` at or after index ``start``, waiting up to
        ``within`` seconds (None if it did not come or the daemon exited)."""
        return await self._first(start, line.__eq__, within=within, child=child)

    async def matching(self, start: int, prefix: str, *, within: float, child: Child) -> int | None:
        """Like ``after``, for the first line that starts with ``prefix``."""
        return await self._first(
            start, lambda text: text.startswith(prefix), within=within, child=child
        )

    async def _first(
        self, start: int, wanted: Callable[[str], bool], *, within: float, child: Child
    ) -> int | None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline and child.running:
            self._drain()
            for index in range(start, len(self.lines)):
                if wanted(self.lines[index]):
                    return index
            await asyncio.sleep(0.05)
        return None


@contextlib.asynccontextmanager
async def notified_daemon(
    tmp_path: Path, config: Path
) -> AsyncIterator[tuple[NotifySocket, Child]]:
    """The daemon on ``config`` with NOTIFY_SOCKET set to a socket of ours, for the block."""
    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        sock.setblocking(False)
        async with children(tmp_path) as kids:
            yield NotifySocket(sock), await kids.daemon(config, env={"NOTIFY_SOCKET": address})


def now_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, the clock MONOTONIC_USEC= is read from."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


async def test_each_sighup_is_framed_by_reloading_and_ready(
    dsn: str, tmp_path: Path, served: list[RunningServer]
) -> None:
    """SIGHUP: RELOADING=1 with a MONOTONIC_USEC= taken after the signal, then READY=1 once the
    file is applied; a refused file is framed the same way (the old one keeps running)."""
    url = await serve(served, quiet_simulator(200, 0.5, seed=43))
    path = tmp_path / "cdrsync.toml"
    first = account_table(url, start=start_before(0.5), name="acc-a")
    write_config(path, dsn, [first])
    async with notified_daemon(tmp_path, path) as (notify, child):
        assert await notify.after(0, "READY=1", within=60, child=child) is not None, child.tail()
        frames = []
        for change in ("add an account", "break the file"):
            if change == "add an account":
                second = account_table(url, start=start_before(0.5), name="acc-b")
                write_config(path, dsn, [first, second])
            else:
                path.write_text(path.read_text().replace('"acc-b"', '"ACC B!"'))
            start = len(notify.lines)
            before = now_usec()
            child.proc.send_signal(signal.SIGHUP)
            reloading = await notify.after(start, "RELOADING=1", within=30, child=child)
            assert reloading is not None, child.tail()
            ready = await notify.after(reloading, "READY=1", within=30, child=child)
            assert ready is not None, child.tail()
            frames.append((before, notify.lines[reloading:ready], now_usec()))
        assert await child.terminate(15) == 0, child.tail()
    assert child.named("config.reloaded", added=["acc-b"]), child.tail()
    assert child.named("config.reload_refused"), child.tail()
    for before, lines, after in frames:
        stamps = [
            int(line.split("=", 1)[1]) for line in lines if line.startswith("MONOTONIC_USEC=")
        ]
        assert len(stamps) == 1, lines
        assert before <= stamps[0] <= after, (before, stamps, after)


async def test_status_line_drops_the_streams_a_reload_removed(
    dsn: str, tmp_path: Path, served: list[RunningServer]
) -> None:
    """After a reload removes an account, systemd's STATUS= line counts only the streams that
    still run (not the removed account's, until a restart)."""
    url = await serve(served, quiet_simulator(200, 0.5, seed=47))
    path = tmp_path / "cdrsync.toml"
    first = account_table(url, start=start_before(0.5), name="acc-a", poll_interval="500ms")
    second = account_table(url, start=start_before(0.5), name="acc-b")
    write_config(path, dsn, [first, second])
    async with notified_daemon(tmp_path, path) as (notify, child):
        both = await notify.matching(0, "STATUS=2 streams", within=60, child=child)
        assert both is not None, child.tail()
        write_config(path, dsn, [first])
        start = len(notify.lines)
        child.proc.send_signal(signal.SIGHUP)
        assert await child.wait_event("config.reloaded", within=30, removed=["acc-b"])
        # acc-a's next cycles report again: the line counts acc-a's stream alone.
        cycle = await notify.matching(start, "STATUS=1 streams", within=60, child=child)
        assert cycle is not None, (notify.lines[start:], child.tail())
        assert await child.terminate(15) == 0, child.tail()
