"""The window stream's memory bound with a slow writer: the reader waits for room in the queue
before it reads a window's pages, so what it has read and the writer has not yet committed stays
within one window (or three write targets) and a page, however far the reader could run ahead.
Real simulator over HTTP, real PostgreSQL; the writer is held back by a wrapper (a fault)."""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import time
from typing import Any

import pytest

from cdrsync.app import daemon as app
from cdrsync.app.runtime import runtime
from cdrsync.engine import window as window_module
from cdrsync.engine.batchqueue import RowQueue
from cdrsync.simulator.server import start_server
from support import acefone_settings, backlog_simulator, eventually

WRITE_ROWS = 10  # the writer's target: every hour of this backlog holds far more calls
PAGE_SIZE = 25


class Tally:
    """Rows the reader has received and the writer has committed, and the most ever apart."""

    def __init__(self) -> None:
        self.read = self.written = self.peak = 0
        self.writing = False
        self.windows: dict[Any, int] = {}

    def fetched(self, window: Any, page: Any) -> None:
        self.read += len(page.records) + len(page.rejects)
        self.peak = max(self.peak, self.read - self.written)
        if page.size:
            self.windows[window] = page.total


@pytest.mark.timeout(120)
async def test_a_slow_writer_keeps_the_reader_within_one_window_and_a_page(dsn, monkeypatch):
    """A held-back writer keeps the rows read ahead of it within one window and a page."""
    now = time.time()
    sim = backlog_simulator(seed=17, backlog=2400, days=1.0, now=now)
    queues: list[RowQueue[Any]] = []

    def recording(*args: Any, **kwargs: Any) -> RowQueue[Any]:
        queues.append(RowQueue(*args, **kwargs))
        return queues[-1]

    monkeypatch.setattr(window_module, "RowQueue", recording)
    tally = Tally()
    server = await start_server(sim)
    try:
        settings = acefone_settings(
            server.base_url, dsn, account={"settle": "0s", "window": "1h", "page_size": PAGE_SIZE}
        )
        stop = asyncio.Event()
        async with runtime(settings, stop) as rt:
            assert rt is not None
            # Whole hours of the backlog from the first window on: each holds about 100 calls.
            start = dt.datetime.fromtimestamp(math.ceil((now - 86400) / 3600) * 3600, dt.UTC)
            stream = app.build_stream(rt, settings.accounts[0], stop, start=start)
            stream._write_rows = WRITE_ROWS
            source, write_batch = stream._source, rt.store.write_batch

            class Counted:
                """The real source; each page's rows counted as read."""

                vendor = source.vendor

                @property
                def page_size(self) -> int:
                    return source.page_size

                @page_size.setter
                def page_size(self, value: int) -> None:
                    source.page_size = value

                async def count(self, window: Any) -> int:
                    return await source.count(window)

                async def fetch_page(self, window: Any, page: int) -> Any:
                    got = await source.fetch_page(window, page)
                    tally.fetched(window, got)
                    return got

            async def slow_write(name: str, records: Any, rejects: Any, **kwargs: Any) -> Any:
                # The fault: the first commit waits until the reader is held back for room.
                if not tally.writing:
                    tally.writing = True
                    held = await eventually(lambda: _held(queues), timeout=60, interval=0.05)
                    assert held, "the reader was never held back: the backlog is too small"
                result = await write_batch(name, records, rejects, **kwargs)
                tally.written += len(records) + len(rejects)
                return result

            stream._source = Counted()
            monkeypatch.setattr(rt.store, "write_batch", slow_write)
            await asyncio.wait_for(stream.cycle(), 90)
    finally:
        await server.close()
    sizes = list(tally.windows.values())
    first, second, largest = sizes[0], sizes[1], max(sizes)
    # The data must let a reader run ahead: the writer holds the first window, above three
    # write targets, and the first two windows together are above the largest and a page.
    assert len(sizes) >= 10 and first > 3 * WRITE_ROWS, sizes
    assert first + second > largest + PAGE_SIZE, sizes
    assert tally.peak <= max(3 * WRITE_ROWS, largest) + PAGE_SIZE, (tally.peak, sizes)


async def _held(queues: list[RowQueue[Any]]) -> bool:
    return bool(queues) and queues[-1].waiting > 0
