"""Page 1 of a cycle's next window is asked for while the current window's other pages are
read (``WindowStream._prefetch_next``), for a source that says it may be
(``prefetch_first_page``, Acefone's): the vendor is not left idle between windows, and the
rows are the same. A source that does not say so (Ozonetel's bulk budget is 2 requests a
minute) is read window after window. Real simulator over HTTP, real PostgreSQL; a wrapper
around the source records the order and, to prove the prefetch, holds one answer back."""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import time
from typing import Any

import pytest

from cdrsync.app import daemon as app
from cdrsync.app.runtime import runtime
from cdrsync.simulator.server import start_server
from cdrsync.vendors import SkipsStored
from support import acefone_settings, backlog_simulator

PAGE_SIZE = 25
Events = list[tuple[str, Any, int]]


async def read_backlog(dsn: str, *, prefetch: bool) -> tuple[Events, dict[str, Any]]:
    """One cycle over a 6-hour backlog through a recording wrapper of the Acefone source that
    declares ``prefetch_first_page`` as ``prefetch``. With it, the last page of the first window
    of several pages is answered only once page 1 of the next window was asked for (without
    the prefetch, that would wait forever). Returns the events ("ask"/"got", window start,
    page) and what was found (the vendor's counts, rows stored, the held window)."""
    now = time.time()
    sim = backlog_simulator(seed=23, backlog=600, days=0.25, now=now)
    server = await start_server(sim)
    events: Events = []
    found: dict[str, Any] = {"counted": {}}
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
            next_asked = asyncio.Event()

            class Recording:
                """The real source (stored hashes included), every request recorded."""

                vendor = source.vendor
                prefetch_first_page = prefetch
                page_size = property(lambda self: source.page_size)

                def remember(self, window: Any, hashes: frozenset[bytes]) -> None:
                    source.remember(window, hashes)

                def forget(self, window: Any) -> None:
                    source.forget(window)

                async def count(self, window: Any) -> int:
                    return await source.count(window)

                async def fetch_page(self, window: Any, page: int) -> Any:
                    events.append(("ask", window.start, page))
                    if prefetch and page == 1 and window.start == found.get("next"):
                        next_asked.set()
                    got = await source.fetch_page(window, page)
                    if page == 1:
                        found["counted"][window.start] = got.total
                        if "held" not in found and got.total > PAGE_SIZE:
                            found.update(held=window.start, last=math.ceil(got.total / PAGE_SIZE))
                            found["next"] = window.end
                    if prefetch and window.start == found.get("held") and page == found["last"]:
                        await asyncio.wait_for(next_asked.wait(), 60)
                    events.append(("got", window.start, page))
                    return got

            stream._source = Recording()
            assert isinstance(stream._source, SkipsStored)  # the hashes path, as Acefone's
            await asyncio.wait_for(stream.cycle(), 90)
            found["stored"] = await rt.store.call_count()
    finally:
        await server.close()
    assert "held" in found, "no window of several pages: the backlog is too small"
    assert len(found["counted"]) >= 3
    # Every call the vendor counted was stored, the prefetched first pages' included.
    assert found["stored"] == sum(found["counted"].values()) > 0
    firsts = [start for kind, start, page in events if kind == "ask" and page == 1]
    assert len(firsts) == len(set(firsts)), firsts  # page 1 is asked for once per window
    return events, found


@pytest.mark.timeout(120)
async def test_the_next_windows_first_page_is_asked_for_before_this_window_ends(dsn):
    events, found = await read_backlog(dsn, prefetch=True)

    asked_next = events.index(("ask", found["next"], 1))
    assert asked_next < events.index(("got", found["held"], found["last"]))


@pytest.mark.timeout(120)
async def test_a_source_that_does_not_say_so_is_read_window_after_window(dsn):
    events, found = await read_backlog(dsn, prefetch=False)

    asked_next = events.index(("ask", found["next"], 1))
    assert asked_next > events.index(("got", found["held"], found["last"]))
