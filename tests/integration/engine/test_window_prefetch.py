"""Page 1 of a cycle's next window is asked for while the current window's other pages are
read (``WindowStream._prefetch_next``): the vendor is never left idle between windows, and the
rows are the same. Real simulator over HTTP, real PostgreSQL; a wrapper around the source holds
one answer back (a fault) to prove the order."""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import time
from typing import Any

import pytest

from cdrsync.app import daemon as app
from cdrsync.app.runtime import runtime
from cdrsync.simulator.acefone import AcefoneSimConfig, AcefoneSimulator
from cdrsync.simulator.server import start_server
from cdrsync.vendors import SkipsStored
from support import acefone_settings

PAGE_SIZE = 25


@pytest.mark.timeout(120)
async def test_the_next_windows_first_page_is_asked_for_before_this_window_ends(dsn):
    """The last page of the first window of several pages is answered only once page 1 of the
    next window has been asked for: without the prefetch the cycle would wait forever."""
    now = time.time()
    sim = AcefoneSimulator(
        AcefoneSimConfig(
            seed=23, backlog=600, backlog_days=0.25, live_per_minute=0, late_fraction=0.0,
            change_fraction=0.0,
        ),
        now=lambda: now,
    )  # fmt: skip
    server = await start_server(sim)
    counted: dict[dt.datetime, int] = {}  # the vendor's count of each window, from page 1
    firsts: dict[dt.datetime, int] = {}  # page 1 requests per window
    try:
        settings = acefone_settings(
            server.base_url, dsn, account={"settle": "0s", "window": "1h", "page_size": PAGE_SIZE}
        )
        stop = asyncio.Event()
        async with runtime(settings, stop) as rt:
            assert rt is not None
            start = dt.datetime.fromtimestamp(math.ceil((now - 0.25 * 86400) / 3600) * 3600, dt.UTC)
            stream = app.build_stream(rt, settings.accounts[0], stop, start=start)
            source: Any = stream._source
            held: dict[str, Any] = {}
            next_asked = asyncio.Event()

            class Holding:
                """The real source; the first window of several pages keeps its last page back
                until page 1 of the window after it is asked for."""

                vendor = source.vendor
                prefetch_first_page = source.prefetch_first_page
                page_size = property(lambda self: source.page_size)

                def remember(self, window: Any, hashes: frozenset[bytes]) -> None:
                    source.remember(window, hashes)

                def forget(self, window: Any) -> None:
                    source.forget(window)

                async def count(self, window: Any) -> int:
                    return await source.count(window)

                async def fetch_page(self, window: Any, page: int) -> Any:
                    if (
                        page == 1
                        and held.get("window") is not None
                        and window.start == held["next"]
                    ):
                        next_asked.set()
                    got = await source.fetch_page(window, page)
                    if page == 1:
                        counted[window.start] = got.total
                        firsts[window.start] = firsts.get(window.start, 0) + 1
                    if page == 1 and "window" not in held and got.total > PAGE_SIZE:
                        held.update(window=window, last=math.ceil(got.total / PAGE_SIZE))
                        held["next"] = window.end
                    if held.get("window") == window and page == held["last"]:
                        await asyncio.wait_for(next_asked.wait(), 60)
                    return got

            stream._source = Holding()
            await asyncio.wait_for(stream.cycle(), 90)
            stored = await rt.store.call_count()
            assert isinstance(stream._source, SkipsStored)  # the hashes path, as Acefone's
    finally:
        await server.close()
    assert held.get("window") is not None, "no window of several pages: the backlog is too small"
    assert next_asked.is_set()
    # Every call the vendor counted was stored, the prefetched first pages' included.
    assert stored == sum(counted.values()) > 0
    assert len(counted) >= 3
    assert set(firsts.values()) == {1}, firsts  # the prefetched page 1 is not asked for again
