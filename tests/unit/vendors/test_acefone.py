"""Acefone record normalization and page parsing (pure)."""

from __future__ import annotations

import datetime as dt
import zoneinfo
from typing import Any

import orjson
import pytest

from cdrsync.errors import BadPageError, ParseError
from cdrsync.model import CallRecord, Page, Window
from cdrsync.vendors import acefone_split
from cdrsync.vendors.acefone import AcefoneSource, normalize, parse_page, window_params
from support import one_account

IST = zoneinfo.ZoneInfo("Asia/Kolkata")
FETCHED = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)

SAMPLE = {  # the vendor documentation's sample record, trimmed to what normalization reads
    "id": "66339a440ac50d47500dbc9e",
    "call_id": "1714657799.11930963",
    "uuid": "66339a0b7cfde",
    "direction": "outbound",
    "description": "Call answered by customer",
    "status": "answered",
    "recording_url": "https://customer.servetel.in/file/recording?callId=1&type=rec&token=6a49cf",
    "service": "Agent",
    "date": "2024-05-02",
    "time": "19:19:59",
    "end_stamp": "2024-05-02 19:20:57",
    "call_duration": 54,
    "answered_seconds": 40,
    "department_name": None,
    "agent_number": "+919888889999",
    "agent_name": "pqrs",
    "client_number": "+91700003233",
    "did_number": "+918069858731",
    "hangup_cause": "Normal clearing",
    "call_flow": [{"type": "init"}, {"anstime": 1714657817, "time": 1714657857}],
    "agent_ring_time": "N.A.",
}


def norm(record: dict[str, Any]) -> CallRecord:
    return normalize(record, account="acme-in", zone=IST, fetched_at=FETCHED)


def test_sample_record_normalizes_to_utc():
    """The documented sample maps to UTC times, seconds and the documented column names."""
    call = norm(SAMPLE)
    assert call.call_key == "66339a440ac50d47500dbc9e"
    assert call.started_at == dt.datetime(2024, 5, 2, 13, 49, 59, tzinfo=dt.UTC)
    assert call.ended_at == dt.datetime(2024, 5, 2, 13, 50, 57, tzinfo=dt.UTC)
    assert call.answered_at == dt.datetime.fromtimestamp(1714657817, dt.UTC)
    assert (call.duration_s, call.talk_s, call.ring_s) == (54, 40, None)
    assert (call.customer_number, call.line_number) == ("+91700003233", "+918069858731")
    assert call.local_date == dt.date(2024, 5, 2)
    assert orjson.loads(call.raw)["recording_url"] == SAMPLE["recording_url"]


def test_content_hash_tracks_content_only():
    """Same content hashes the same whatever the key order; a changed field changes the hash."""
    again = norm(dict(reversed(list(SAMPLE.items()))))
    changed = norm({**SAMPLE, "recording_url": None})
    assert norm(SAMPLE).content_hash == again.content_hash
    assert norm(SAMPLE).content_hash != changed.content_hash


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"id": None}, "no id"),
        ({"date": None}, "no start date"),
        ({"date": "2024-13-45"}, "is not a 'YYYY-MM-DD HH:MM:SS' time"),
        ({"call_duration": "abc"}, "call_duration='abc' is not a whole number"),
        ({"call_duration": "\u00b2"}, "is not a whole number"),  # a digit int() refuses
        ({"answered_seconds": True}, "answered_seconds is a boolean"),
        ({"end_stamp": "yesterday"}, "end_stamp='yesterday'"),
        ({"time": "19:19"}, "is not a 'YYYY-MM-DD HH:MM:SS' time"),
        ({"end_stamp": "2024-05-02 19:19+05"}, "is not a 'YYYY-MM-DD HH:MM:SS' time"),
        ({"end_stamp": "2024-05-02T19:19:59"}, "is not a 'YYYY-MM-DD HH:MM:SS' time"),
        ({"date": "0001-01-01", "time": "00:00:00"}, "out of range"),
        ({"call_duration": 10**12}, "call_duration=1000000000000 is out of range"),
        ({"agent_name": "bad\x00name"}, "NUL character"),
    ],
)
def test_malformed_records_are_rejected_with_a_reason(patch, message):
    """Each kind of malformed record raises ParseError saying what is wrong."""
    with pytest.raises(ParseError, match=message):
        norm({**SAMPLE, **patch})


@pytest.mark.parametrize(
    ("patch", "field", "value"),
    [
        ({"call_duration": "54"}, "duration_s", 54),
        ({"answered_seconds": 0, "call_flow": []}, "answered_at", None),
        ({"agent_ring_time": "7"}, "ring_s", 7),
        ({"agent_ring_time": "\u00b2"}, "ring_s", None),  # superscript two: not a number
        ({"status": "ANSWERED"}, "status", "answered"),
        ({"end_stamp": ""}, "ended_at", None),
        (
            {"call_flow": [], "answered_seconds": 40},
            "answered_at",
            dt.datetime(2024, 5, 2, 13, 50, 17, tzinfo=dt.UTC),
        ),
    ],
)
def test_lenient_values_table(patch, field, value):
    """Numbers as strings, upper-case statuses and empty strings are read as the vendor means."""
    assert getattr(norm({**SAMPLE, **patch}), field) == value


def page(results: list[object], count: object = None) -> bytes:
    return orjson.dumps(
        {
            "count": len(results) if count is None else count,
            "limit": 100,
            "size": len(results),
            "page": 1,
            "results": results,
        }
    )


def test_page_keeps_good_records_and_rejects_bad_ones():
    """One malformed record goes to rejects; the rest of its page is kept."""
    bad = {**SAMPLE, "id": "bad1", "call_duration": "abc"}
    good = {**SAMPLE, "id": "good1"}
    parsed = parse_page(
        page([good, bad, "junk"]), account="a", stream="a/list", zone=IST, fetched_at=FETCHED
    )
    assert [r.call_key for r in parsed.records] == ["good1"]
    assert [(r.call_key, "call_duration" in r.reason) for r in parsed.rejects] == [
        ("bad1", True),
        (None, False),
    ]
    assert parsed.keys == ("good1", "bad1")
    assert (parsed.total, parsed.size) == (3, 3)


def test_a_number_beyond_a_double_costs_one_record_not_the_page():
    """orjson refuses 1e400: such a page must still be read (else it is fetched again on every
    cycle and the stream never passes it). The odd number is kept as text; where it is a value
    normalization reads, that one record is rejected."""
    kept = {**SAMPLE, "id": "kept", "agent_ring_time": "HUGE"}
    odd = {**SAMPLE, "id": "odd", "call_duration": "HUGE"}
    body = page([kept, odd]).replace(b'"HUGE"', b"1e400")
    parsed = parse_page(body, account="a", stream="a/list", zone=IST, fetched_at=FETCHED)
    assert [r.call_key for r in parsed.records] == ["kept"]
    assert orjson.loads(parsed.records[0].raw)["agent_ring_time"] == "1e400"
    assert [(r.call_key, "call_duration" in r.reason) for r in parsed.rejects] == [("odd", True)]


@pytest.mark.parametrize(
    "body",
    [
        b'{"count": 3, "results": [{"id": "a"',
        b"<html>503</html>",
        b'{"count": 1}',
        b'{"count": "many", "results": []}',
        b"[]",
    ],
)
def test_bad_page_is_retried_not_rejected(body):
    """A truncated or malformed page raises BadPageError so it is fetched again."""
    with pytest.raises(BadPageError):
        parse_page(body, account="a", stream="a/list", zone=IST, fetched_at=FETCHED)


def test_count_as_string_is_accepted():
    """Acefone sometimes sends numbers as strings; a string count still counts."""
    parsed = parse_page(page([], count="7"), account="a", stream="s", zone=IST, fetched_at=FETCHED)
    assert parsed.total == 7


def test_window_params_are_local_and_inclusive_of_the_end_second():
    """Windows are asked in IST, and to_date is the window end (the vendor's bound is inclusive
    or not — undocumented — so the end second is asked for in both windows it borders)."""
    window = Window(
        dt.datetime(2026, 11, 22, 18, 30, tzinfo=dt.UTC),
        dt.datetime(2026, 11, 22, 19, 30, tzinfo=dt.UTC),
    )
    assert window_params(window, 2, 100, IST) == {
        "from_date": "2026-11-23 00:00:00",
        "to_date": "2026-11-23 01:00:00",
        "page": "2",
        "limit": "100",
    }


def test_a_record_nested_deeper_than_json_writers_go_is_kept_as_sent():
    """A record nested 300 levels deep (orjson writes at most 255) is kept, its own bytes as
    ``raw`` (jsonb takes them); it raised out of the parser and ended the stream once."""
    body = page([{**SAMPLE, "id": "deep", "extra": "DEEP"}, SAMPLE]).replace(
        b'"DEEP"', b"[" * 300 + b"]" * 300
    )
    parsed = parse_page(body, account="a", stream="a/list", zone=IST, fetched_at=FETCHED)
    assert [r.call_key for r in parsed.records] == ["deep", SAMPLE["id"]]
    assert parsed.records[0].raw.count("[") == 300 + 1  # call_flow's list too
    assert not parsed.rejects


# ---------------------------------------------------------------------------- client paging


class CappedPerPage(AcefoneSource):
    """An Acefone that caps ``limit`` at ``cap`` without a word and counts per page: serves each
    window's ``keys`` (newest first) with no HTTP."""

    def __init__(self, cap: int, rows: dict[Window, list[str]]) -> None:
        account = one_account(
            {
                "name": "acme-in",
                "vendor": "acefone",
                "base_url": "https://x",
                "token": "t",
                "start": "2026-11-01",
            }
        )
        super().__init__(account, transport=None, limiters={}, stream="acme-in/list")  # type: ignore[arg-type]
        self.cap, self.rows = cap, rows

    async def _renewing(self, window: Window, page: int, limit: int | None) -> Page:
        served = min(limit or self.page_size, self.cap)
        keys = tuple(self.rows[window][(page - 1) * served : page * served])
        return Page(total=len(keys), size=len(keys), records=(), rejects=(), keys=keys)


async def test_a_window_of_exactly_the_cap_does_not_hide_the_cap_from_later_windows():
    """A window holding exactly as many rows as the silent cap proves nothing about the cap: a
    later window with more rows behind a page of that size still finds it (else, counting per
    page, that window would close after its first page and lose the rest)."""
    hour = dt.timedelta(hours=1)
    exact, busy = Window(FETCHED, FETCHED + hour), Window(FETCHED + hour, FETCHED + 2 * hour)
    source = CappedPerPage(
        20, {exact: [f"a{i}" for i in range(20)], busy: [f"b{i}" for i in range(50)]}
    )
    assert (await source.fetch_page(exact, 1)).size == 20
    assert source.page_size == 100  # one window of 20 rows: no cap proven
    assert (await source.fetch_page(busy, 1)).size == 20
    assert source.page_size == 20


class CountingTotal(CappedPerPage):
    """An Acefone that honours ``limit`` and counts the whole window, logging each request."""

    def __init__(self, rows: dict[Window, list[str]]) -> None:
        super().__init__(10_000, rows)
        self.asked: list[tuple[int, int]] = []

    async def _renewing(self, window: Window, page: int, limit: int | None) -> Page:
        size = limit or self.page_size
        self.asked.append((page, size))
        keys = tuple(self.rows[window][(page - 1) * size : page * size])
        return Page(total=len(self.rows[window]), size=len(keys), records=(), rejects=(), keys=keys)


async def test_a_growing_live_window_under_a_total_count_is_not_probed_every_cycle():
    """A live window that grows by a call a cycle costs one request a cycle once the count is
    known to be the window's total: the reading is learned once (a one-record page), not
    re-proved by asking page 2 on every cycle."""
    window = Window(FETCHED, FETCHED + dt.timedelta(hours=1))
    source = CountingTotal({window: []})
    for calls in range(2, 12):
        source.rows[window] = [f"c{i}" for i in range(calls)]
        source.asked.clear()
        assert (await source.fetch_page(window, 1)).size == calls
        if calls == 2:
            assert source.asked == [(1, 100), (1, 1)]  # the one-time learning probe
        else:
            assert source.asked == [(1, 100)]
    assert source.page_size == 100 and not source.count_per_page


async def test_a_per_page_count_is_learned_from_the_one_record_page():
    """Counting per page, the one-record page counts one of a window of three: the source knows
    the count is per page (and keeps asking page 2 behind short pages, as the cap test above
    shows) without waiting for a window longer than a page."""
    window = Window(FETCHED, FETCHED + dt.timedelta(hours=1))
    source = CappedPerPage(10_000, {window: ["a", "b", "c"]})
    assert (await source.fetch_page(window, 1)).size == 3
    assert source.count_per_page


@pytest.mark.parametrize(
    ("data", "plain"),
    [
        (b'{"id":"a","n":1.5e300,"s":"ab12e45678"}', True),
        (b'{"id":"a","url":"https:\\/\\/x"}', True),  # escaped slashes are stored as they are
        (b'{"id":"a","s":"\\u0000"}', False),  # jsonb refuses NUL; the full decode rejects it
        (b'{"id":"a","s":"\\u00e9"}', False),  # any escape: the full decode canonicalizes it
        (b'{"id":"a","s":"a\\\\u"}', False),  # an escaped backslash before a u: to be safe
        (b'{"id":"a","d":' + b"[" * 256 + b"]" * 256 + b"}", True),  # jsonb takes 3 000 levels
        # Numbers numeric cannot hold are PostgreSQL's to refuse: the store then rewrites the record
        # (tests/integration/vendors/test_acefone_raw.py).
        (b'{"id":"a","n":[0, -2.5E+12345]}', True),
        (b'{"id":"a","s":"' + b"x" * 16_000 + b'"}', True),
    ],
)
def test_which_record_bytes_are_stored_as_they_are(data, plain):
    """Bytes with a ``\\u`` escape take the full decode; the rest are stored as sent."""
    assert acefone_split.plain(data) is plain
