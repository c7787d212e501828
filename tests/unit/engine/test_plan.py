"""Window planning, splitting and completeness rules (pure)."""

from __future__ import annotations

import datetime as dt
import itertools

import pytest

from cdrsync.engine.plan import (
    audit_next_due,
    audit_span,
    check_complete,
    check_paged,
    count_is_per_page,
    floor_to,
    local_midnight_utc,
    on_grid,
    pages_for,
    plan_windows,
    retry_delay,
    rows_received,
    split_window,
    too_deep,
)
from cdrsync.model import Window

UTC = dt.UTC
H = dt.timedelta(hours=1)
M = dt.timedelta(minutes=1)


def t(hh: int, mm: int = 0, ss: int = 0, day: int = 23) -> dt.datetime:
    return dt.datetime(2026, 11, day, hh, mm, ss, tzinfo=UTC)


@pytest.mark.parametrize(
    ("watermark", "now", "lookback", "settle", "expected"),
    [
        # first run: from start to now - settle, cut at whole hours
        (
            None,
            t(3, 30),
            30 * M,
            2 * M,
            [(t(0), t(1)), (t(1), t(2)), (t(2), t(3)), (t(3), t(3, 28))],
        ),
        # later run: the lookback behind the watermark is read again, from its grid line
        (t(3, 28), t(3, 40), 30 * M, 2 * M, [(t(2), t(3)), (t(3), t(3, 38))]),
        (t(3, 45), t(3, 50), 30 * M, 2 * M, [(t(3), t(3, 48))]),
        # lookback never reaches before start
        (t(0, 10), t(0, 40), 30 * M, 2 * M, [(t(0), t(0, 38))]),
        # nothing settled yet: no windows
        (None, t(0, 1), 30 * M, 2 * M, []),
        # settle zero reads up to now (floored to the second), from the grid line
        (
            t(0, 50),
            dt.datetime(2026, 11, 23, 1, 0, 0, 900000, tzinfo=UTC),
            0 * M,
            0 * M,
            [(t(0), t(1))],
        ),
    ],
)
def test_plan_windows_table(watermark, now, lookback, settle, expected):
    """Windows run from the watermark minus lookback (or start) to now minus settle, hour-cut."""
    got = plan_windows(
        watermark=watermark, start=t(0), now=now, lookback=lookback, settle=settle, step=H
    )
    assert [(w.start, w.end) for w in got] == expected


def test_plan_windows_cover_without_gaps():
    """Consecutive windows touch: no instant between start and now - settle is left out, and
    the grid is anchored at start (a local midnight), so whole windows recur every cycle."""
    got = plan_windows(
        watermark=None, start=t(0, 7, 13), now=t(9, 1, 5), lookback=M, settle=M, step=H
    )
    assert got[0] == Window(t(0, 7, 13), t(1, 7, 13))
    assert got[-1].end == t(9, 0, 5)
    assert all(a.end == b.start for a, b in itertools.pairwise(got))
    assert all(on_grid(w, H, t(0, 7, 13)) for w in got[:-1])
    assert not on_grid(got[-1], H, t(0, 7, 13))


@pytest.mark.parametrize(
    ("watermark", "horizon", "expected"),
    [
        (None, 2 * H, None),
        (t(10), 0 * H, None),
        (t(10), 2 * H, (t(8), t(10), t(11, 45))),
    ],
)
def test_audit_span_table(watermark, horizon, expected):
    """The audit re-counts windows within the horizon behind the watermark, once an interval."""
    got = audit_span(watermark=watermark, now=t(12), horizon=horizon, interval=15 * M)
    assert got == expected


@pytest.mark.parametrize(
    ("due", "least_checked", "expected"),
    [
        (2, t(11), None),  # some were due: they may stay due, ask again next cycle
        (0, t(11, 50), t(12, 5)),  # the oldest check leaves the interval first
        (0, None, t(12, 15)),  # nothing recorded yet: a window recorded now, due after it
        (0, t(12, 30), t(12, 15)),  # a check after the question: the question bounds it
    ],
)
def test_audit_next_due_table(due, least_checked, expected):
    """No window can be due for the audit before its oldest check is an interval old."""
    got = audit_next_due(due=due, least_checked=least_checked, asked_at=t(12), interval=15 * M)
    assert got == expected


def test_plan_windows_until_bounds_a_backfill():
    """A bounded stream never plans past its end."""
    got = plan_windows(
        watermark=None, start=t(0), now=t(12), lookback=M, settle=M, step=H, until=t(2, 30)
    )
    assert got[-1].end == t(2, 30)


@pytest.mark.parametrize(
    ("window", "parts", "expected"),
    [
        (Window(t(0), t(1)), 2, [(t(0), t(0, 30)), (t(0, 30), t(1))]),
        (Window(t(0), t(0, 0, 3)), 2, [(t(0), t(0, 0, 1)), (t(0, 0, 1), t(0, 0, 3))]),
        (Window(t(0), t(0, 0, 1)), 2, [(t(0), t(0, 0, 1))]),
        (Window(t(0), t(0, 0, 2)), 5, [(t(0), t(0, 0, 1)), (t(0, 0, 1), t(0, 0, 2))]),
    ],
)
def test_split_window_table(window, parts, expected):
    """Splits cut at whole seconds, cover the window exactly, and a 1 s window stays whole."""
    assert [(w.start, w.end) for w in split_window(window, parts)] == expected


@pytest.mark.parametrize(
    ("total", "page_size", "max_pages", "seconds", "deep"),
    [
        (5000, 100, 50, 3600, False),
        (5001, 100, 50, 3600, True),
        (10**6, 100, 50, 1, False),
        (0, 100, 1, 60, False),
        (101, 100, 1, 60, True),
    ],
)
def test_too_deep_table(total, page_size, max_pages, seconds, deep):
    """A window is split when paging it would go deeper than allowed and it can still split."""
    window = Window(t(0), t(0) + dt.timedelta(seconds=seconds))
    assert too_deep(total, page_size, max_pages, window) is deep


@pytest.mark.parametrize(
    ("total", "size", "pages"),
    [(0, 100, 1), (1, 100, 1), (100, 100, 1), (101, 100, 2), (250, 20, 13)],
)
def test_pages_for_table(total, size, pages):
    """Page count is the ceiling of total over page size, at least one."""
    assert pages_for(total, size) == pages


@pytest.mark.parametrize(
    ("totals", "received", "reread_later", "closes", "exact", "reason"),
    [
        ([250, 250, 250], 250, False, True, True, "ok"),
        ([0], 0, False, True, True, "ok"),
        # rows appeared mid-read in a window the next cycle reads again: close, inexactly
        ([250, 251, 252], 251, True, True, False, "rows appeared during the read"),
        ([250, 251, 252], 250, True, True, False, "rows appeared during the read"),
        # ... but not in an old window, and never with fewer keys than the first count
        ([250, 251, 251], 250, False, False, False, "count changed between pages"),
        ([250, 251, 251], 249, True, False, False, "count changed between pages"),
        ([251, 250, 250], 251, True, False, False, "count changed between pages"),
        ([250, 250, 250], 249, True, False, False, "distinct keys differ from count"),
        ([250, 250, 250], 251, False, False, False, "distinct keys differ from count"),
        ([], 0, True, False, False, "no pages read"),
    ],
)
def test_check_complete_table(totals, received, reread_later, closes, exact, reason):
    """A window closes exactly when pages agree and keys match; a growing newest window closes
    provisionally if it got every row counted at its start; anything short is read again."""
    verdict = check_complete(totals, received, reread_later=reread_later)
    assert (verdict.closes, verdict.exact, verdict.reason) == (closes, exact, reason)


@pytest.mark.parametrize(
    ("failures", "delay"), [(0, 0.0), (1, 1.0), (2, 2.0), (6, 32.0), (7, 60.0), (50, 60.0)]
)
def test_retry_delay_table(failures, delay):
    """Failed cycles back off exponentially up to a cap."""
    assert retry_delay(failures) == delay


def test_floor_and_local_midnight():
    """Steps align to the epoch; a local day starts at its zone's midnight in UTC."""
    import zoneinfo

    assert floor_to(t(5, 59, 59), H) == t(5)
    ist = zoneinfo.ZoneInfo("Asia/Kolkata")
    assert local_midnight_utc(dt.date(2026, 11, 23), ist) == t(18, 30, day=22)


@pytest.mark.parametrize(
    ("pages", "received"),
    [
        ([(3, ["a", "b", "c"])], 3),
        ([(2, ["a", "b"]), (2, ["b", "c"])], 3),  # b on two pages: moved while read, once
        ([(3, ["a", "a", "b"])], 3),  # a twice in one answer: the vendor lists it twice
        ([(3, ["a", "a", "b"]), (1, ["b"])], 3),
        ([(3, ["a"]), (2, [])], 5),  # records without a key count one each
        ([], 0),
    ],
)
def test_rows_received(pages, received):
    """Distinct keys across pages, but a key repeated within one answer counts each time, so a
    vendor that lists a row twice does not keep its window from ever closing."""
    assert rows_received(pages) == received


def test_a_window_whose_vendor_lists_a_row_twice_closes():
    """Ozonetel-style: count 3, one page holding a UCID twice: the read is complete."""
    verdict = check_complete([3], rows_received([(3, ["u1", "u1", "u2"])]), reread_later=False)
    assert verdict.closes and verdict.exact


D = dt.timedelta(days=1)


@pytest.mark.parametrize(
    ("watermark", "now", "expected"),
    [
        # three days behind: whole days until the lookback, hours after
        (t(0, day=20), t(3, 30),
         [(t(22, day=19), t(0, day=20)), (t(0, day=20), t(0, day=21)), (t(0, day=21), t(0, day=22)),
          (t(0, day=22), t(0, day=23)), (t(0), t(1)), (t(1), t(2)), (t(2), t(3)),
          (t(3), t(3, 28))]),
        # a watermark mid-day: the rest of that day is one window
        (t(10, 30, day=21), t(3, 30),
         [(t(9, day=21), t(0, day=22)), (t(0, day=22), t(0, day=23)), (t(0), t(1)),
          (t(1), t(2)), (t(2), t(3)), (t(3), t(3, 28))]),
        # the lookback reaches into yesterday: that day stays in hours
        (t(23, 50, day=22), t(0, 20),
         [(t(22, day=22), t(23, day=22)), (t(23, day=22), t(0)), (t(0), t(0, 18))]),
    ],
)  # fmt: skip
def test_plan_windows_catch_up_in_coarse_cells(watermark, now, expected):
    """Behind the lookback, whole coarse cells (days) are one window each; the part still
    re-read keeps the fine grid, so the audit and the re-read work as before."""
    got = plan_windows(
        watermark=watermark, start=t(0, day=10), now=now, lookback=90 * M, settle=2 * M,
        step=H, coarse=D,
    )  # fmt: skip
    assert [(w.start, w.end) for w in got] == expected


@pytest.mark.parametrize(
    ("pages", "received", "per_page"),
    [
        ([], 0, False),
        ([(0, 0)], 0, False),  # an empty window: either reading
        ([(37, 37)], 37, False),  # one short page: either reading, the count checks out
        ([(250, 100), (250, 100), (250, 50)], 250, False),  # a total
        ([(100, 100), (100, 0)], 100, False),  # a total of exactly one page, then an empty one
        ([(100, 100), (37, 37)], 137, True),  # each page counts its own rows
        ([(100, 100), (0, 0)], 100, True),  # exactly one full page, counted per page
        ([(100, 100), (100, 100), (5, 5)], 205, True),
        ([(20, 20), (20, 20)], 39, True),  # a row seen on both pages (rows shifted)
        ([(250, 100), (251, 100)], 200, False),  # a total that grew during the read
    ],
)
def test_count_is_per_page_table(pages, received, per_page):
    """Acefone's count is read as per page only when the pages prove it."""
    assert count_is_per_page(pages, received) is per_page


@pytest.mark.parametrize(
    ("sizes", "received", "page_size", "closes"),
    [
        ([100, 37], 137, 100, True),
        ([100, 0], 100, 100, True),
        ([20, 20, 3], 42, 20, True),  # a row seen twice: shifted rows are not skipped rows
        ([100, 100], 200, 100, False),  # the last page came back full: more may follow
        ([20, 20], 40, 20, False),
        ([], 0, 100, False),
    ],
)
def test_check_paged_table(sizes, received, page_size, closes):
    """With a per-page count a window is complete when its last page came back short."""
    verdict = check_paged(sizes, received, page_size)
    assert (verdict.closes, verdict.exact, verdict.received) == (closes, closes, received)
