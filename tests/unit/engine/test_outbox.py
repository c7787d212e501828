"""The outbox's pure logic: comparing a record with a payload, and the scan for rows in doubt."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from cdrsync.engine.outbox_probe import (
    ProbeScan,
    field_verdict,
    judge,
    next_pass_at,
    record_verdict,
    settles_at,
)
from cdrsync.store.queues import OutboxRow, ProbeBounds

T0 = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)
M = dt.timedelta(minutes=1)
DELAY = 10 * M


@pytest.mark.parametrize(
    ("sent", "returned", "verdict"),
    [
        ("Budapest", "Budapest", "same"),
        ("Budapest", " Budapest ", "same"),
        ("Budapest", "London", "differs"),
        (42, "42", "same"),  # a number sent to a text field comes back as text
        ("42", 42, "same"),
        (12.0, 12, "same"),
        # 'simple'/'multiple' value fields come back as valueids, not the text sent.
        ("sports|movies", 17, "unverifiable"),
        ("sports|movies", [17, 18], "unverifiable"),
        ("sports|movies", "17|18", "unverifiable"),
        ("sports", "17", "unverifiable"),
        ("3619997400", "3619990000", "unverifiable"),  # digits: maybe a valueid
        (5, 7, "differs"),  # a valueid sent (as the docs ask) compares with the one returned
        ("Budapest", None, "unverifiable"),  # a field the record does not show
        (None, "x", "unverifiable"),
        ("", "x", "unverifiable"),
        ({"a": 1}, "x", "unverifiable"),
        (True, "1", "unverifiable"),
    ],
)
def test_field_verdict(sent: Any, returned: Any, verdict: str) -> None:
    """Only text compares; a valueid where text was sent proves nothing either way."""
    assert field_verdict(sent, returned) == verdict


LIKES = {"form": {"name": "Peter Green", "city": "Budapest", "likes": "sports|movies"}}


@pytest.mark.parametrize(
    ("payload", "data", "verdict"),
    [
        (LIKES, {"name": "Peter Green", "city": "Budapest", "likes": 12}, "match"),
        (LIKES, {"name": "Peter Green", "city": "Budapest", "likes": [12, 13]}, "match"),
        (LIKES, {"name": "Rachel Smith", "city": "Budapest", "likes": 12}, "other"),
        (LIKES, {"phone1": "3619997400"}, "maybe"),
        ({"form": {"likes": "sports"}}, {"likes": 12}, "maybe"),
        ({"form": {"likes": "sports"}}, {"likes": "movies"}, "other"),
        ({"form": {}}, {"name": "x"}, "maybe"),
        ({"contacts": {}}, {"name": "x"}, "maybe"),
    ],
)
def test_record_verdict(payload: dict[str, Any], data: dict[str, Any], verdict: str) -> None:
    """A record matches when every comparable field is equal; with none comparable: maybe."""
    assert record_verdict(payload, data) == verdict


def row(rid: int, name: str | None = "lead", since: dt.datetime = T0) -> OutboxRow:
    form = {"name": name} if name else {"likes": "sports"}
    return OutboxRow(rid, 3, {"form": form}, 1, sent_at=since, updated_at=since)


def bounds(until: int | None = None, taken: frozenset[int] = frozenset()) -> ProbeBounds:
    return ProbeBounds(after=100, until=until, taken=taken)


def scan(members: tuple[int, ...] = (1,), began: dt.datetime = T0, misses: int = 3) -> ProbeScan:
    return ProbeScan(100, began, frozenset(members), misses_allowed=misses)


@pytest.mark.parametrize(
    ("until", "taken", "reads", "ids"),
    [
        # Without a later batch: until `misses_allowed` absent numberids in a row.
        (None, frozenset(), [None, None, None], [101, 102, 103]),
        (None, frozenset(), [None, {"x": 1}, None, None, None], [101, 102, 103, 104, 105]),
        # A later batch's first numberid ends the scan, however few were absent.
        (103, frozenset(), [{"x": 1}, {"x": 1}], [101, 102]),
        (106, frozenset({102, 103}), [None, None, None], [101, 104, 105]),
        # Reaching it is what counts then, not the absent numberids in a row.
        (106, frozenset(), [None] * 5, [101, 102, 103, 104, 105]),
        # A later batch below the start: numberids did not increase, so misses decide.
        (90, frozenset(), [None] * 3, [101, 102, 103]),
    ],
)
def test_a_scan_ends_at_a_later_batch_or_after_misses(
    until: int | None, taken: frozenset[int], reads: list[Any], ids: list[int]
) -> None:
    """Numberids are read in order, skipping those rows own already, until the pass is over."""
    probe, limits, seen = scan(), bounds(until, taken), []
    while (numberid := probe.next_numberid(limits)) is not None:
        seen.append(numberid)
        probe.saw(numberid, reads[len(seen) - 1], [row(1, "someone else")])
    assert seen == ids


def test_a_scan_claims_each_record_once_and_notes_records_it_cannot_tell_apart() -> None:
    """The first matching row takes a record; a record no field compares with is a maybe."""
    probe = scan(members=(1, 2, 3))
    rows = [row(1), row(2), row(3, name=None)]
    assert probe.saw(101, {"name": "lead"}, rows) == rows[0]
    assert probe.saw(102, {"name": "other"}, rows[1:]) is None
    assert probe.maybe == {3}  # {"likes": "sports"} vs a record without likes
    assert (probe.position, probe.misses) == (102, 0)


@pytest.mark.parametrize(
    ("after", "holds", "position"),
    [(100, True, 110), (105, True, 110), (120, True, 120), (90, False, 110)],
)
def test_a_scan_follows_its_start(after: int, holds: bool, position: int) -> None:
    """A start moving up skips what lies before it; one moving down needs a new pass."""
    probe = scan()
    probe.position = 110
    assert probe.rebase(after) is holds
    if holds:
        assert probe.position == position


@pytest.mark.parametrize(
    ("rid", "since", "maybe", "member", "verdict"),
    [
        (1, T0 - DELAY, False, True, "absent"),
        (1, T0 - DELAY, True, True, "unverifiable"),
        (1, T0 - DELAY + M, False, True, "waiting"),  # VCC may still have been adding it
        (9, T0 - DELAY, False, False, "waiting"),  # in doubt only since the pass began
    ],
)
def test_a_finished_pass_rules_absent_only_settled_rows_it_could_tell_apart(
    rid: int, since: dt.datetime, maybe: bool, member: bool, verdict: str
) -> None:
    """Absent needs a pass begun outbox_probe_delay after the row's doubt and no maybe."""
    probe = scan(members=(1,) if member else (2,))
    if maybe:
        probe.maybe.add(rid)
    found = judge(probe, [row(rid, since=since)], delay=DELAY)
    assert {name: len(getattr(found, name)) for name in ("absent", "unverifiable", "waiting")} == {
        name: int(name == verdict) for name in ("absent", "unverifiable", "waiting")
    }


def test_the_next_pass_waits_for_the_first_row_to_settle_unless_a_row_is_new() -> None:
    """Passes before a row settles cannot judge it; a row the pass never covered is looked at."""
    probe = scan(members=(1, 2))
    late = [row(1, since=T0 + 3 * M), row(2, since=T0 + 5 * M)]
    assert next_pass_at(probe, late, now=T0 + 4 * M, delay=DELAY) == T0 + 13 * M
    assert next_pass_at(probe, [row(7)], now=T0 + 4 * M, delay=DELAY) == T0 + 4 * M
    assert settles_at(row(1), DELAY) == T0 + DELAY
