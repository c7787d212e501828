"""Naive local 'YYYY-MM-DD HH:MM:SS' strings to UTC, fast: the offset is looked up once per hour.

Acefone sends every timestamp as a naive local string (see ``vendors.acefone``); a backfill
reads two per call. ``datetime.replace(tzinfo=zone).astimezone(UTC)`` asks the zone for its
rules on every call, which was a fifth of normalizing a record. A zone's offset changes only at
its transitions, so the offset of an hour is cached when it is the same at the hour's first and
last second; an hour with a transition inside (a DST change, or a zone's rule change) takes the
exact conversion, second by second. Pure: no clock, no I/O.
"""

from __future__ import annotations

import contextlib
import datetime as dt

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
