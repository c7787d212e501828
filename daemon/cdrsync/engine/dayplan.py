"""Pure day planning for a list endpoint partitioned by local calendar day (VCC Live).

VCC Live lists CDRs only per day of the account's time zone (``/v2/cdrs/{y}/{m}/{d}``), by
offset, in an undocumented order, and a CDR registers minutes after its call ends. So a day is
either *open* (inside the lookback: re-read every cycle, incrementally from a cursor) or
*closing* (older than the lookback: read whole from offset 0 once more, then final; the watermark
moves past it). No I/O here and no clock: ``now`` is always a parameter.

The cursor (``sync_state.cursor``) holds one entry per day in progress::

    {"2026-11-23": {"offset": 1500, "anchor": ["u1498", "u1499", "u1500"], "total": 1512}}

``offset`` is the next row to read, ``anchor`` the uuids of the rows just before it (they are
fetched again and compared before the offset is trusted), ``total`` the day's last
``totalCount``. An interrupted closing read also carries ``"closing": true`` and ``"seen"`` (the
distinct rows it counted before ``offset``) so that it resumes rather than restarts.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cdrsync.engine.plan import local_midnight_utc

ZERO = dt.timedelta(0)
ONE_DAY = dt.timedelta(days=1)


@dataclass(frozen=True, slots=True)
class DayTask:
    """One local day a cycle reads."""

    day: dt.date
    closes: bool
    """The day is older than the lookback: once read completely, the watermark moves past it."""
    start: dt.datetime
    """The UTC instant of the day's local midnight."""
    end: dt.datetime
    """The UTC instant of the next local midnight: the watermark once this day closes."""

    @property
    def key(self) -> str:
        """The day's key in the cursor (``YYYY-MM-DD``)."""
        return self.day.isoformat()


def day_of(instant: dt.datetime, zone: dt.tzinfo) -> dt.date:
    """The local calendar day of ``instant`` in ``zone``."""
    return instant.astimezone(zone).date()


def days_to_read(
    watermark: dt.datetime | None,
    start_day: dt.date,
    now: dt.datetime,
    zone: dt.tzinfo,
    lookback: dt.timedelta,
    *,
    settle: dt.timedelta = ZERO,
    until: dt.date | None = None,
) -> list[DayTask]:
    """The days one cycle reads, oldest first: from the watermark's day (``start_day`` before
    the first watermark, never earlier) to the day of ``now - settle`` (before ``until``).

    A day closes when its end plus ``lookback`` is at or before ``now - settle``. The arithmetic
    is in local wall time, not UTC: with lookback "1d" today and yesterday stay open and the day
    before yesterday closes, also on the 23- and 25-hour days of a DST change (in UTC a "1d"
    lookback would close yesterday an hour early after the autumn change).
    """
    newest = (now - settle).astimezone(zone)
    first = start_day if watermark is None else max(start_day, day_of(watermark, zone))
    last = newest.date()
    if until is not None:
        last = min(last, until - ONE_DAY)
    wall = newest.replace(tzinfo=None) - lookback
    tasks: list[DayTask] = []
    day = first
    while day <= last:
        after = day + ONE_DAY
        closes = dt.datetime.combine(after, dt.time()) <= wall
        tasks.append(
            DayTask(day, closes, local_midnight_utc(day, zone), local_midnight_utc(after, zone))
        )
        day = after
    return tasks


def cap_days(tasks: Sequence[DayTask], limit: int) -> tuple[list[DayTask], int]:
    """The days a cycle may read: the oldest ``limit`` closing days and every open day; and how
    many closing days wait for later cycles.

    The cap bounds a backlog's cycle; open days are few (the lookback) and cheap (read from their
    cursor), so today's calls keep arriving while a long backlog is read: live data first.
    """
    closing = [t for t in tasks if t.closes]
    open_days = [t for t in tasks if not t.closes]
    kept = closing[: max(0, limit)]
    return kept + open_days, len(closing) - len(kept)


def resume_plan(
    cursor_entry: Mapping[str, Any] | None, verify_rows: int
) -> tuple[int, tuple[str, ...]]:
    """Where to fetch a day from, and the uuids expected first: ``(fetch_offset, anchor)``.

    With a usable entry, the fetch starts ``len(anchor)`` rows before the stored offset, so the
    rows just before it come back first and prove that nothing moved before the cursor. An entry
    that is missing, malformed, at offset 0 or without anchor (nothing to check the order
    against) means reading the day from offset 0 with nothing to verify.
    """
    if not isinstance(cursor_entry, Mapping):
        return 0, ()
    offset = cursor_entry.get("offset")
    anchor = cursor_entry.get("anchor")
    if not isinstance(offset, int) or isinstance(offset, bool) or offset <= 0:
        return 0, ()
    if not isinstance(anchor, list | tuple) or not all(isinstance(k, str) for k in anchor):
        return 0, ()
    kept = tuple(anchor[-verify_rows:]) if verify_rows > 0 else ()
    if not kept or len(kept) > offset:
        return 0, ()
    return offset - len(kept), kept


def closing_seen(cursor_entry: Mapping[str, Any] | None) -> int | None:
    """The distinct rows an interrupted closing read counted before its offset, or None when the
    entry is not such a read (the closing read then starts from offset 0)."""
    if not isinstance(cursor_entry, Mapping) or cursor_entry.get("closing") is not True:
        return None
    seen = cursor_entry.get("seen")
    if not isinstance(seen, int) or isinstance(seen, bool) or seen < 0:
        return None
    return seen


def verify_anchor(expected: Sequence[str], page_keys: Sequence[str]) -> bool:
    """Whether the page starts with exactly the ``expected`` uuids, in order (nothing to check
    is a match)."""
    return tuple(page_keys[: len(expected)]) == tuple(expected)


def cursor_entry(
    offset: int, anchor: Sequence[str] | None, total: int, *, seen: int | None = None
) -> dict[str, Any]:
    """A day's cursor entry. ``anchor`` None means the rows before ``offset`` cannot be named
    (a row without uuid among them): the entry then resumes from offset 0. ``seen`` marks an
    unfinished closing read."""
    entry: dict[str, Any] = {"offset": offset, "anchor": list(anchor or ()), "total": total}
    if anchor is None:
        entry["offset"] = 0
    if seen is not None:
        entry["closing"] = True
        entry["seen"] = seen
    return entry


def prune_cursor(cursor: Mapping[str, Any] | None, first_day: dt.date | None) -> dict[str, Any]:
    """The cursor's entries for days at or after ``first_day`` (the oldest day not closed), with
    malformed keys dropped: entries of closed days would only grow the cursor."""
    kept: dict[str, Any] = {}
    for key, entry in (cursor or {}).items():
        try:
            day = dt.date.fromisoformat(key)
        except (TypeError, ValueError):
            continue
        if first_day is None or day >= first_day:
            kept[key] = entry
    return kept
