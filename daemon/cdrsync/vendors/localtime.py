"""Naive local 'YYYY-MM-DD HH:MM:SS' strings to UTC, fast: the offset is looked up once per hour.

Acefone sends every timestamp as a naive local string (see ``vendors.acefone``); a backfill
reads two per call. ``datetime.replace(tzinfo=zone).astimezone(UTC)`` asks the zone for its
rules on every call, which was a fifth of normalizing a record. A zone's offset changes only at
its transitions, so the offset of an hour is cached when it is the same at the hour's first and
last second; an hour with a transition inside (a DST change, or a zone's rule change) takes the
exact conversion, second by second. ``read`` goes further: it caches the hour's start in UTC
and its local date, and adds the minutes and seconds as one of 3 600 cached timedeltas, so a
time costs two dictionary lookups and one addition (parsing and ``replace`` took a tenth of a
backfill's instructions). Pure: no clock, no I/O.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from typing import Any

from cdrsync.errors import ParseError

_UTC = dt.UTC
_LAST_SECOND = dt.timedelta(minutes=59, seconds=59)
_CACHE_LIMIT = 8192
# (zone, 'YYYY-MM-DD HH') -> the hour's UTC offset, or None when it changes within the hour.
_offsets: dict[tuple[dt.tzinfo, str], dt.timedelta | None] = {}


def parse_naive(text: str, field: str) -> dt.datetime:
    """The exact 'YYYY-MM-DD HH:MM:SS' shape as a naive datetime, else ``ParseError``."""
    # strptime was a quarter of a page's parse time; fromisoformat is many times faster. It
    # also takes other ISO shapes, so the exact shape is checked first.
    shaped = len(text) == 19 and text[10] == " " and text[4] == text[7] == "-"
    if shaped and text[13] == text[16] == ":":
        with contextlib.suppress(ValueError):  # e.g. month 13, or a letter in a digit's place
            return dt.datetime.fromisoformat(text)
    raise ParseError(f"{field}={text[:40]!r} is not a 'YYYY-MM-DD HH:MM:SS' time")


def exact_utc(naive: dt.datetime, field: str, zone: dt.tzinfo) -> dt.datetime:
    """``naive`` read in ``zone``, in UTC (the first reading of an ambiguous time)."""
    try:
        return naive.replace(tzinfo=zone).astimezone(_UTC)
    except OverflowError:  # e.g. 0001-01-01 00:00 in IST is before year 1 in UTC
        raise ParseError(f"{field}={naive} is out of range") from None


def _hour_offset(naive: dt.datetime, zone: dt.tzinfo) -> dt.timedelta | None:
    start = naive.replace(minute=0, second=0, tzinfo=zone)
    try:
        first, last = start.utcoffset(), (start + _LAST_SECOND).utcoffset()
    except OverflowError:
        return None
    return first if first == last else None


def to_utc(naive: dt.datetime, text: str, field: str, zone: dt.tzinfo) -> dt.datetime:
    """``naive`` (parsed from ``text``) read in ``zone``, in UTC; equal to ``exact_utc``."""
    key = (zone, text[:13])
    try:
        offset = _offsets[key]
    except KeyError:
        if len(_offsets) >= _CACHE_LIMIT:
            _offsets.clear()
        offset = _offsets[key] = _hour_offset(naive, zone)
    if offset is None:
        return exact_utc(naive, field, zone)
    try:
        return (naive - offset).replace(tzinfo=_UTC)
    except OverflowError:
        raise ParseError(f"{field}={naive} is out of range") from None


# (zone, 'YYYY-MM-DD HH') -> the hour's start in UTC and its local date; None when the hour's
# offset changes within it, or its start is not representable (``read`` then goes the long way).
_hours: dict[tuple[dt.tzinfo, str], tuple[dt.datetime, dt.date] | None] = {}
_UNSEEN: Any = object()
_MINUTES_SECONDS = {
    f"{m:02d}:{s:02d}": dt.timedelta(minutes=m, seconds=s) for m in range(60) for s in range(60)
}


def _hour(zone: dt.tzinfo, prefix: str) -> tuple[dt.datetime, dt.date] | None:
    if len(_hours) >= _CACHE_LIMIT:
        _hours.clear()
    try:
        start = parse_naive(f"{prefix}:00:00", "")
        offset = _hour_offset(start, zone)
        found = None if offset is None else ((start - offset).replace(tzinfo=_UTC), start.date())
    except (ParseError, OverflowError):
        found = None
    _hours[(zone, prefix)] = found
    return found


def read(text: str, field: str, zone: dt.tzinfo) -> tuple[dt.datetime, dt.date]:
    """A 'YYYY-MM-DD HH:MM:SS' time read in ``zone``: the instant in UTC (as ``exact_utc``,
    the first reading of an ambiguous time) and its local date; else ``ParseError``."""
    if len(text) == 19 and text[13] == ":":
        hour = _hours.get((zone, text[:13]), _UNSEEN)
        if hour is _UNSEEN:
            hour = _hour(zone, text[:13])
        step = _MINUTES_SECONDS.get(text[14:])
        if hour is not None and step is not None:
            return hour[0] + step, hour[1]
    naive = parse_naive(text, field)
    return to_utc(naive, text, field, zone), naive.date()
