"""Naive local times to UTC with the per-hour offset cache (pure)."""

from __future__ import annotations

import datetime as dt
import zoneinfo

import pytest

from cdrsync.errors import ParseError
from cdrsync.vendors.localtime import exact_utc, parse_naive, read, to_utc


def convert(text: str, zone: str) -> dt.datetime:
    utc, local_date = read(text, "f", zoneinfo.ZoneInfo(zone))
    assert local_date == dt.date.fromisoformat(text[:10])
    assert to_utc(parse_naive(text, "f"), text, "f", zoneinfo.ZoneInfo(zone)) == utc
    return utc


@pytest.mark.parametrize(
    ("zone", "text", "utc"),
    [
        ("Asia/Kolkata", "2026-11-23 05:31:28", "2026-11-23 00:01:28"),
        ("Asia/Kolkata", "2026-11-23 00:00:00", "2026-11-22 18:30:00"),
        # New York springs forward at 02:00 (02:xx does not exist: read with the old offset)
        ("America/New_York", "2026-03-08 01:59:59", "2026-03-08 06:59:59"),
        ("America/New_York", "2026-03-08 02:30:00", "2026-03-08 07:30:00"),
        ("America/New_York", "2026-03-08 03:00:00", "2026-03-08 07:00:00"),
        # ... and falls back at 02:00 (01:xx twice: the first reading)
        ("America/New_York", "2026-11-01 01:30:00", "2026-11-01 05:30:00"),
        ("America/New_York", "2026-11-01 02:00:00", "2026-11-01 07:00:00"),
        # Lord Howe moves by half an hour, at 02:00 local
        ("Australia/Lord_Howe", "2026-04-05 01:45:00", "2026-04-04 14:45:00"),
        ("Australia/Lord_Howe", "2026-04-05 02:15:00", "2026-04-04 15:45:00"),
    ],
)
def test_cached_offsets_agree_with_the_zone_rules(zone, text, utc):
    """Every local time converts as the zone's rules say, around DST changes too."""
    expected = dt.datetime.fromisoformat(utc).replace(tzinfo=dt.UTC)
    assert convert(text, zone) == expected
    assert convert(text, zone) == exact_utc(parse_naive(text, "f"), "f", zoneinfo.ZoneInfo(zone))


@pytest.mark.parametrize("zone", ["Asia/Kolkata", "America/New_York", "Australia/Lord_Howe"])
def test_every_minute_of_a_dst_day_matches_the_exact_conversion(zone):
    """A whole day around a transition, minute by minute: the cache never changes an answer."""
    tz = zoneinfo.ZoneInfo(zone)
    day = {"Asia/Kolkata": "2026-11-23", "America/New_York": "2026-11-01"}.get(zone, "2026-04-05")
    start = dt.datetime.fromisoformat(f"{day} 00:00:00")
    for minute in range(24 * 60):
        naive = start + dt.timedelta(minutes=minute, seconds=minute % 60)
        text = naive.isoformat(sep=" ")
        assert to_utc(naive, text, "f", tz) == exact_utc(naive, "f", tz), text
        assert read(text, "f", tz) == (exact_utc(naive, "f", tz), naive.date()), text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("2026-11-23T05:31:28", "is not a 'YYYY-MM-DD HH:MM:SS' time"),
        ("2026-13-23 05:31:28", "is not a 'YYYY-MM-DD HH:MM:SS' time"),
        ("0001-01-01 00:00:00", "out of range"),
        ("2026-11-23 05:60:00", "is not a 'YYYY-MM-DD HH:MM:SS' time"),
        ("2026-11-23 05:31:60", "is not a 'YYYY-MM-DD HH:MM:SS' time"),
        ("2026-11-23 05:3a:28", "is not a 'YYYY-MM-DD HH:MM:SS' time"),
        ("2026-11-23 24:00:00", "is not a 'YYYY-MM-DD HH:MM:SS' time"),
        ("2026-11-23+05:31:28", "is not a 'YYYY-MM-DD HH:MM:SS' time"),
        ("9999-12-31 23:59:59 ", "is not a 'YYYY-MM-DD HH:MM:SS' time"),
    ],
)
def test_bad_or_out_of_range_times_are_parse_errors(text, message):
    """A malformed or unrepresentable time is a ParseError naming the field, never a crash."""
    with pytest.raises(ParseError, match=message):
        convert(text, "Asia/Kolkata")
