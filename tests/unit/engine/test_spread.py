"""Start-up spread: when each stream's first cycle is due when many accounts start together."""

from __future__ import annotations

import pytest

from cdrsync.engine.spread import first_delay, place, spread_seconds


@pytest.mark.parametrize(
    ("starting", "poll", "expected"),
    [
        (0, 60.0, 0.0),  # nothing starting
        (1, 60.0, 0.0),  # a single account starts at once
        (2, 60.0, 0.05),  # (n - 1) / 20 accounts a second
        (11, 60.0, 0.5),
        (101, 60.0, 5.0),
        (601, 60.0, 30.0),  # reaches half the poll interval
        (1000, 60.0, 30.0),  # capped there: the last first cycle ends within one poll
        (1000, 600.0, 49.95),  # a long poll: the rate decides
        (1000, 0.0, 0.0),
    ],
)
def test_spread_grows_with_accounts_up_to_half_a_poll(
    starting: int, poll: float, expected: float
) -> None:
    """The spread is (accounts - 1) / 20 seconds, none for one account, at most half a poll."""
    assert spread_seconds(starting, poll) == pytest.approx(expected)


@pytest.mark.parametrize("stream", ["a0001/list", "acme/lookup", "x", ""])
def test_place_is_a_fraction_fixed_by_the_name(stream: str) -> None:
    """A stream's place is in [0, 1) and the same on every call (a restart keeps it)."""
    assert 0.0 <= place(stream) < 1.0
    assert place(stream) == place(stream)


def test_first_delay_falls_within_the_spread() -> None:
    """Every stream of a thousand accounts waits within the spread, none less than nothing."""
    names = [f"a{i:04d}/list" for i in range(1, 1001)]
    delays = [first_delay(n, starting=1000, poll=60.0) for n in names]
    assert min(delays) >= 0.0
    assert max(delays) < 30.0


def test_first_delay_is_spread_evenly_not_bunched() -> None:
    """A thousand streams fill every tenth of the spread with roughly a tenth of them each."""
    names = [f"a{i:04d}/list" for i in range(1, 1001)]
    tenths = [0] * 10
    for name in names:
        tenths[int(first_delay(name, starting=1000, poll=60.0) / 3.0)] += 1
    assert all(60 <= count <= 140 for count in tenths), tenths


def test_a_single_account_is_due_at_once() -> None:
    """One account (every test, a small install) starts its first cycle without delay."""
    assert first_delay("acme/list", starting=1, poll=60.0) == 0.0
