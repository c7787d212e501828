"""Day planning for VCC Live's day-partitioned list: which days, open or closing, and resumes."""

from __future__ import annotations

import datetime as dt
import zoneinfo

import pytest

from cdrsync.engine.dayplan import (
    DayTask,
    cap_days,
    closing_seen,
    cursor_entry,
    days_to_read,
    prune_cursor,
    resume_plan,
    verify_anchor,
)

BUD = zoneinfo.ZoneInfo("Europe/Budapest")
UTC = dt.UTC
D = dt.timedelta(days=1)
M = dt.timedelta(minutes=1)


def local(y: int, mo: int, d: int, h: int = 0, mi: int = 0, fold: int = 0) -> dt.datetime:
    """A Budapest wall-clock time as a UTC instant."""
    return dt.datetime(y, mo, d, h, mi, tzinfo=BUD, fold=fold).astimezone(UTC)


def nov(day: int) -> dt.date:
    return dt.date(2026, 11, day)


@pytest.mark.parametrize(
    ("watermark", "start", "now", "lookback", "settle", "expected"),
    [
        # first run, lookback 1d: today and yesterday stay open, older days close
        (None, nov(20), local(2026, 11, 23, 10), D, 0 * M,
         [(nov(20), True), (nov(21), True), (nov(22), False), (nov(23), False)]),
        # lookback 0: only today stays open
        (None, nov(20), local(2026, 11, 23, 10), 0 * D, 0 * M,
         [(nov(20), True), (nov(21), True), (nov(22), True), (nov(23), False)]),
        # lookback 2d: today and the two days before stay open
        (None, nov(20), local(2026, 11, 23, 10), 2 * D, 0 * M,
         [(nov(20), True), (nov(21), False), (nov(22), False), (nov(23), False)]),
        # a watermark starts the plan at its local day (the oldest day not closed)
        (local(2026, 11, 22), nov(1), local(2026, 11, 23, 10), D, 0 * M,
         [(nov(22), False), (nov(23), False)]),
        # a watermark before the configured start does not reach back before start
        (local(2026, 11, 2), nov(21), local(2026, 11, 23, 10), D, 0 * M,
         [(nov(21), True), (nov(22), False), (nov(23), False)]),
        # one minute before local midnight: still the 23rd (UTC is already 22:59)
        (local(2026, 11, 22), nov(1), local(2026, 11, 23, 23, 59), D, 0 * M,
         [(nov(22), False), (nov(23), False)]),
        # just after local midnight (UTC still the 23rd): the 24th opens, the 22nd closes
        (local(2026, 11, 22), nov(1), local(2026, 11, 24, 0, 30), D, 0 * M,
         [(nov(22), True), (nov(23), False), (nov(24), False)]),
        # settle holds the new day back until it has passed
        (local(2026, 11, 22), nov(1), local(2026, 11, 24, 0, 1), D, 2 * M,
         [(nov(22), False), (nov(23), False)]),
        # the start day lies in the future: nothing to read
        (None, nov(30), local(2026, 11, 23, 10), D, 0 * M, []),
        # autumn DST change (25 October has 25 hours): at 23:30 CET on the 25th, the 24th is
        # still yesterday and stays open (24 h of UTC after its end would close it at 23:00)
        (local(2026, 10, 23), nov(1).replace(month=10), local(2026, 10, 25, 23, 30), D, 0 * M,
         [(dt.date(2026, 10, 23), True), (dt.date(2026, 10, 24), False),
          (dt.date(2026, 10, 25), False)]),
        # spring DST change (29 March has 23 hours): the 28th closes at local midnight, not later
        (local(2026, 3, 28), dt.date(2026, 3, 1), local(2026, 3, 30, 0, 5), D, 0 * M,
         [(dt.date(2026, 3, 28), True), (dt.date(2026, 3, 29), False),
          (dt.date(2026, 3, 30), False)]),
    ],
)  # fmt: skip
def test_days_to_read_table(watermark, start, now, lookback, settle, expected):
    """Days run from the watermark's day (or start) to today; days past the lookback close."""
    got = days_to_read(watermark, start, now, BUD, lookback, settle=settle)
    assert [(t.day, t.closes) for t in got] == expected


@pytest.mark.parametrize(
    ("day", "start", "end"),
    [
        (nov(23), dt.datetime(2026, 11, 22, 23, tzinfo=UTC),
         dt.datetime(2026, 11, 23, 23, tzinfo=UTC)),
        # 23 hours: spring forward
        (dt.date(2026, 3, 29), dt.datetime(2026, 3, 28, 23, tzinfo=UTC),
         dt.datetime(2026, 3, 29, 22, tzinfo=UTC)),
        # 25 hours: fall back
        (dt.date(2026, 10, 25), dt.datetime(2026, 10, 24, 22, tzinfo=UTC),
         dt.datetime(2026, 10, 25, 23, tzinfo=UTC)),
    ],
)  # fmt: skip
def test_day_bounds_are_local_midnights(day, start, end):
    """A day spans local midnight to local midnight in UTC, 23 or 25 hours on DST days."""
    [task] = days_to_read(None, day, end - M, BUD, 0 * D, until=day + D)
    assert (task.start, task.end, task.key) == (start, end, day.isoformat())


def test_until_bounds_a_backfill():
    """A bounded stream plans no day on or after ``until``."""
    got = days_to_read(None, nov(1), local(2026, 11, 23, 10), BUD, 0 * D, until=nov(4))
    assert [(t.day, t.closes) for t in got] == [(nov(1), True), (nov(2), True), (nov(3), True)]


def _tasks(closing: int, open_days: int) -> list[DayTask]:
    out = []
    for i in range(closing + open_days):
        day = nov(1 + i)
        out.append(
            DayTask(day, i < closing, local(2026, 11, day.day), local(2026, 11, day.day + 1))
        )
    return out


@pytest.mark.parametrize(
    ("closing", "open_days", "limit", "kept_closing", "deferred"),
    [(5, 2, 3, 3, 2), (5, 2, 10, 5, 0), (5, 2, 0, 0, 5), (0, 2, 1, 0, 0), (3, 0, 3, 3, 0)],
)
def test_cap_days_table(closing, open_days, limit, kept_closing, deferred):
    """The cap keeps the oldest closing days and every open day; the rest wait."""
    tasks = _tasks(closing, open_days)
    got, waiting = cap_days(tasks, limit)
    assert got == tasks[:kept_closing] + tasks[closing:]
    assert waiting == deferred


ABC = ["a", "b", "c"]


@pytest.mark.parametrize(
    ("entry", "verify_rows", "expected"),
    [
        (None, 3, (0, ())),
        ({"offset": 0, "anchor": [], "total": 0}, 3, (0, ())),
        ({"offset": 10, "anchor": ABC, "total": 12}, 3, (7, ("a", "b", "c"))),
        # fewer rows verified than stored: the last ones
        ({"offset": 10, "anchor": ABC, "total": 12}, 2, (8, ("b", "c"))),
        # more wanted than stored: what is stored
        ({"offset": 10, "anchor": ABC, "total": 12}, 5, (7, ("a", "b", "c"))),
        # a day shorter than verify_rows: the anchor is every row
        ({"offset": 2, "anchor": ["a", "b"], "total": 2}, 3, (0, ("a", "b"))),
        # nothing to verify against, or a malformed entry: read the day from 0
        ({"offset": 5, "anchor": [], "total": 5}, 3, (0, ())),
        ({"offset": 2, "anchor": ABC, "total": 5}, 3, (0, ())),
        ({"offset": "10", "anchor": ABC}, 3, (0, ())),
        ({"offset": True, "anchor": ["a"]}, 3, (0, ())),
        ({"offset": 10, "anchor": ["a", 2]}, 3, (0, ())),
        ({"offset": 10}, 3, (0, ())),
        (["not", "a", "mapping"], 3, (0, ())),
    ],
)
def test_resume_plan_table(entry, verify_rows, expected):
    """A resume fetches from the anchor before the stored offset; anything doubtful from 0."""
    assert resume_plan(entry, verify_rows) == expected


@pytest.mark.parametrize(
    ("expected", "keys", "ok"),
    [
        ((), [], True),
        ((), ["x"], True),
        (("a",), ["a", "b"], True),
        (("a", "b"), ["a", "b"], True),
        (("a", "b"), ["b", "a"], False),  # reordered
        (("a", "b"), ["x", "a", "b"], False),  # a row inserted before the cursor
        (("a", "b"), ["a"], False),  # rows vanished
        (("a",), [], False),
    ],
)
def test_verify_anchor_table(expected, keys, ok):
    """The page must start with exactly the anchor's uuids, in order."""
    assert verify_anchor(expected, keys) is ok


@pytest.mark.parametrize(
    ("entry", "seen"),
    [
        (None, None),
        ({"offset": 6, "anchor": ABC, "total": 9}, None),
        ({"offset": 6, "anchor": ABC, "total": 9, "closing": True, "seen": 6}, 6),
        ({"offset": 6, "anchor": ABC, "closing": True, "seen": -1}, None),
        ({"offset": 6, "anchor": ABC, "closing": True}, None),
        ({"offset": 6, "anchor": ABC, "closing": 1, "seen": 6}, None),
    ],
)
def test_closing_seen_table(entry, seen):
    """Only an unfinished closing read's entry carries a count to resume from."""
    assert closing_seen(entry) == seen


def test_cursor_entry_round_trips_through_resume_plan():
    """An entry written after a page resumes at its offset; an unnamed tail resumes from 0."""
    entry = cursor_entry(9, ["g", "h", "i"], 12, seen=9)
    assert entry == {"offset": 9, "anchor": ["g", "h", "i"], "total": 12, "closing": True,
                     "seen": 9}  # fmt: skip
    assert resume_plan(entry, 3) == (6, ("g", "h", "i"))
    assert resume_plan(cursor_entry(9, None, 12), 3) == (0, ())


def test_prune_cursor_drops_closed_days_and_junk():
    """Entries of days before the oldest open day, and keys that are not days, are dropped."""
    cursor = {"2026-11-21": {"offset": 1}, "2026-11-22": {"offset": 2}, "junk": {}, "2026-11-23": 3}
    assert prune_cursor(cursor, nov(22)) == {"2026-11-22": {"offset": 2}, "2026-11-23": 3}
    assert prune_cursor(None, nov(22)) == {}
    assert prune_cursor({"2026-11-21": 1}, None) == {"2026-11-21": 1}
