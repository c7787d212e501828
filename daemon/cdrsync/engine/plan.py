"""Pure window planning: which spans of time a cycle reads, how they split, when one is complete.

No I/O here and no clock: ``now`` is always a parameter, so every rule is tested with tables.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from cdrsync.model import Window

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def floor_to(instant: dt.datetime, step: dt.timedelta, anchor: dt.datetime = EPOCH) -> dt.datetime:
    """The latest ``anchor + k * step`` (whole k, possibly negative) at or before ``instant``."""
    seconds = int(step.total_seconds())
    if seconds <= 0:
        raise ValueError("step must be at least one second")
    elapsed = math.floor((instant - anchor).total_seconds())
    return anchor + dt.timedelta(seconds=elapsed - elapsed % seconds)


def on_grid(window: Window, step: dt.timedelta, anchor: dt.datetime) -> bool:
    """Whether ``window`` is one whole step of the grid that starts at ``anchor``."""
    return (
        window.end - window.start == step and floor_to(window.start, step, anchor) == window.start
    )


def local_midnight_utc(day: dt.date, zone: dt.tzinfo) -> dt.datetime:
    """The UTC instant at which ``day`` starts in ``zone``."""
    return dt.datetime.combine(day, dt.time(), zone).astimezone(dt.UTC)


def plan_windows(
    *,
    watermark: dt.datetime | None,
    start: dt.datetime,
    now: dt.datetime,
    lookback: dt.timedelta,
    settle: dt.timedelta,
    step: dt.timedelta,
    until: dt.datetime | None = None,
    coarse: dt.timedelta | None = None,
) -> list[Window]:
    """The windows one cycle reads, oldest first.

    They cover ``[watermark - lookback, now - settle)`` (from ``start`` before the first
    watermark, never earlier than ``start``, never later than ``until``) on a grid of ``step``
    anchored at ``start``: the re-read reaches back to the grid line before
    ``watermark - lookback``, so every closed window is read whole at least once and its
    vendor count can be compared later (the window audit). Bounds are whole seconds because
    vendors take second-resolution bounds.

    ``coarse`` (a multiple of ``step``, on the same anchor): a cell of that grid that ends
    before ``now - lookback - settle`` — read once, never re-read — is one window. Catching up
    after an outage then costs a request or so per day, not one per hour (Ozonetel: 2 a minute).
    """
    start = floor_to(start, dt.timedelta(seconds=1))
    low = start if watermark is None else max(start, floor_to(watermark - lookback, step, start))
    high = floor_to(now - settle, dt.timedelta(seconds=1))
    if until is not None:
        high = min(high, until)
    settled = now - lookback - settle
    windows: list[Window] = []
    cursor = low
    while cursor < high:
        edge = min(floor_to(cursor, step, start) + step, high)
        if coarse is not None and coarse > step:
            cell_end = floor_to(cursor, coarse, start) + coarse
            if cell_end <= min(high, settled):
                edge = cell_end
        windows.append(Window(cursor, edge))
        cursor = edge
    return windows


def split_window(window: Window, parts: int = 2) -> list[Window]:
    """``window`` cut into up to ``parts`` spans of whole seconds (1 s windows stay whole)."""
    seconds = int(window.seconds)
    parts = max(1, min(parts, seconds))
    edges = [window.start + dt.timedelta(seconds=seconds * i // parts) for i in range(parts)]
    edges.append(window.end)
    return [Window(a, b) for a, b in itertools.pairwise(edges) if a < b]


def pages_for(total: int, page_size: int) -> int:
    """How many pages a query matching ``total`` records takes (at least one)."""
    return max(1, math.ceil(total / page_size))


def too_deep(total: int, page_size: int, max_pages: int, window: Window) -> bool:
    """Whether a window should be split rather than paged: it would need more than
    ``max_pages`` pages, and it can still be split (it is longer than one second)."""
    return pages_for(total, page_size) > max_pages and window.seconds > 1


@dataclass(frozen=True, slots=True)
class Completeness:
    """A window read's verdict: may the window close, and can its count be trusted?"""

    closes: bool
    """The watermark may pass this window."""
    exact: bool
    """Every page agreed on the count and the distinct keys matched it."""
    expected: int
    received: int
    reason: str


def rows_received(pages: Sequence[tuple[int, Sequence[str]]]) -> int:
    """The rows a read of a window got, to compare with the vendor's count: ``pages`` is each
    page's ``(size, keys)``.

    A key on two pages counts once: rows moved between the pages while they were read (one was
    seen twice, another perhaps not at all). A key twice on one page counts twice: a single
    answer cannot have been shifted, so that is the vendor listing a row twice (third-party
    Ozonetel code de-duplicates UCIDs), which would otherwise keep the window from ever
    closing. Records without a key count one each."""
    keys: set[str] = set()
    extra = 0
    for size, page_keys in pages:
        distinct = set(page_keys)
        extra += size - len(page_keys) + len(page_keys) - len(distinct)
        keys |= distinct
    return len(keys) + extra


def check_complete(totals: Sequence[int], received: int, *, reread_later: bool) -> Completeness:
    """Judge one read of a window from the ``count`` each page reported and the distinct keys
    received (records without a key count one each).

    Exact: every page reported the same count and the keys match it. Otherwise rows moved
    while the window was read. Acefone only ever adds rows (a call is listed when it ends); when
    only the count grew and the read got at least the count of its first page, the window may
    close if a later cycle reads it again anyway (``reread_later``: it is inside the lookback)
    — a busy account's newest window drifts on almost every read and would otherwise never
    close. Such a read may still lack rows (those that appeared during it, or, with pages
    fetched concurrently, one pushed across a page boundary between two fetches): the next
    cycle's re-read fetches them, and the window is recorded with the count *received*, so the
    audit reads it again if the vendor later counts more. Anything else (fewer keys than the
    first count, a count that shrank) is short and must be read again.
    """
    if not totals:
        return Completeness(False, False, 0, received, "no pages read")
    first, low, high = totals[0], min(totals), max(totals)
    if low == high and received == high:
        return Completeness(True, True, high, received, "ok")
    grew_only = low == first and received >= first
    if grew_only and high > low and reread_later:
        return Completeness(True, False, high, received, "rows appeared during the read")
    if low != high:
        return Completeness(False, False, high, received, "count changed between pages")
    return Completeness(False, False, high, received, "distinct keys differ from count")


def count_is_per_page(pages: Sequence[tuple[int, int]], received: int) -> bool:
    """Whether a read's counts are the rows of each page, not the window's total: ``pages`` is
    each page's ``(count, size)``.

    Acefone documents ``count`` as "Number of records that are fetched", which allows both
    readings. Only the per-page one lets a read receive more distinct rows than any page
    counted, or lets every page of a read of several count exactly its own rows (a total
    would be at least the rows of all pages together)."""
    if not pages:
        return False
    if received > max(count for count, _ in pages):
        return True
    return len(pages) > 1 and all(count == size for count, size in pages)


def check_paged(sizes: Sequence[int], received: int, page_size: int) -> Completeness:
    """Judge a read whose counts are per page (see ``count_is_per_page``): a count-vs-keys check
    means nothing then, so the window is complete when its last page came back short. Rows
    shifted between pages while they were read (Acefone lists newest first) are seen twice,
    never skipped, because reading goes on to a short page; ``received`` counts them once."""
    if sizes and sizes[-1] < page_size:
        return Completeness(True, True, received, received, "count is per page; last page short")
    return Completeness(False, False, received, received, "count is per page; last page full")


def audit_span(
    *,
    watermark: dt.datetime | None,
    now: dt.datetime,
    horizon: dt.timedelta,
    interval: dt.timedelta,
) -> tuple[dt.datetime, dt.datetime, dt.datetime] | None:
    """Which recorded windows the audit may re-count: ``(since, until, checked_before)``, or
    None when the audit is off (``horizon`` 0) or nothing is synced yet."""
    if watermark is None or horizon <= dt.timedelta(0):
        return None
    return watermark - horizon, watermark, now - interval


def audit_next_due(
    *,
    due: int,
    least_checked: dt.datetime | None,
    asked_at: dt.datetime,
    interval: dt.timedelta,
) -> dt.datetime | None:
    """When a window can next be due for the audit, after asking at ``asked_at`` found ``due``
    windows due and ``least_checked`` the oldest check of the stream's windows (None: none
    recorded); None means ask again next cycle.

    A window is due once its last check is older than ``interval``. A check only ever moves
    forward, and a window recorded later is checked when it is recorded, after ``asked_at``,
    so until ``least_checked + interval`` no window can be due and the query can be skipped.
    Windows found due may stay due (a re-read that fails), so then the next cycle asks again."""
    if due:
        return None
    oldest = asked_at if least_checked is None else min(least_checked, asked_at)
    return oldest + interval


def retry_delay(failures: int, *, base: float = 1.0, cap: float = 60.0) -> float:
    """Seconds a stream waits after ``failures`` consecutive failed cycles (exponential, capped)."""
    if failures <= 0:
        return 0.0
    return float(min(cap, base * 2 ** (failures - 1)))
