"""Which daemon runs which stream: liveness from heartbeats, rendezvous hashing, bounded load."""

from __future__ import annotations

import datetime as dt
import math

import pytest

from cdrsync.engine.balance import Member, assign, instance_id, live, score, shares, stale

NOW = dt.datetime(2026, 12, 3, 9, 0, tzinfo=dt.UTC)
TIMEOUT = dt.timedelta(seconds=20)


def member(
    name: str, streams: list[str] | range, *, age_s: float = 1.0, connected: bool = True
) -> Member:
    return Member(
        id=name, host="h", pid=1, started=NOW - dt.timedelta(hours=1),
        streams=frozenset(f"acc{i:03}/list" for i in streams)
        if isinstance(streams, range) else frozenset(streams),
        heartbeat=NOW - dt.timedelta(seconds=age_s), connected=connected,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("age_s", "connected", "is_live", "is_stale"),
    [
        (0.0, True, True, False),
        (19.9, True, True, False),
        (20.0, True, False, True),  # the timeout itself is too old
        (120.0, True, False, True),  # hung: event loop stopped, session still there
        (1.0, False, False, False),  # killed: session gone, heartbeat not old yet
        (30.0, False, False, True),
    ],
)
def test_liveness_from_heartbeat_age_and_lock_session(
    age_s: float, connected: bool, is_live: bool, is_stale: bool
) -> None:
    """An instance counts while its heartbeat is young and its lock session connected."""
    m = member("a", range(1), age_s=age_s, connected=connected)
    assert (live([m], NOW, TIMEOUT) == [m]) is is_live
    assert (stale([m], NOW, TIMEOUT) == [m]) is is_stale


@pytest.mark.parametrize(
    ("streams", "instances"),
    [(30, 3), (30, 4), (31, 3), (1, 2), (7, 7), (3, 5), (100, 6), (1000, 7)],
)
def test_each_instance_gets_at_most_its_ceiling_and_every_stream_one_owner(
    streams: int, instances: int
) -> None:
    """Every stream gets exactly one instance, none more than ceil(streams / instances)."""
    members = [member(f"i{n}", range(streams)) for n in range(instances)]
    owner = assign(members)
    assert len(owner) == streams
    room = math.ceil(streams / instances)
    counts = shares(owner)
    assert max(counts.values()) <= room
    # The others being full, the last one has the rest: nobody idles while others are over.
    least = max(0, streams - (instances - 1) * room)
    assert min(counts.get(m.id, 0) for m in members) >= least


@pytest.mark.parametrize(("streams", "before", "after"), [(30, 3, 4), (30, 4, 3), (100, 5, 6)])
def test_a_join_or_leave_moves_about_one_share_not_everything(
    streams: int, before: int, after: int
) -> None:
    """Adding or removing one instance moves roughly the streams it gains or had, not all."""
    members = [member(f"i{n}", range(streams)) for n in range(max(before, after))]
    old = assign(members[:before])
    new = assign(members[:after])
    moved = sum(1 for s in old if old[s] != new[s])
    share = math.ceil(streams / min(before, after))
    assert moved <= share + 2, (moved, share)


def test_the_same_rows_give_the_same_answer_in_any_order() -> None:
    """Every instance computes the balance alone: the order it reads the rows in is irrelevant."""
    members = [member(f"i{n}", range(30)) for n in range(3)]
    assert assign(members) == assign(members[::-1])


@pytest.mark.parametrize(
    ("configs", "expected"),
    [
        # b does not run acc-x (another configuration): acc-x can only go to a.
        ({"a": ["acc-x/list", "acc-y/list"], "b": ["acc-y/list"]}, {"acc-x/list": "a"}),
        # Only b runs both: it gets both, over its ceiling, rather than leave one unrun.
        ({"a": [], "b": ["s1", "s2"]}, {"s1": "b", "s2": "b"}),
    ],
)
def test_a_stream_goes_only_to_an_instance_that_runs_it(
    configs: dict[str, list[str]], expected: dict[str, str]
) -> None:
    """An instance whose configuration lacks an account is never given its streams."""
    owner = assign([member(name, streams) for name, streams in configs.items()])
    for stream, instance in expected.items():
        assert owner[stream] == instance
    for stream, instance in owner.items():
        assert stream in configs[instance]


def test_no_instances_no_assignment() -> None:
    """Before the first heartbeat nobody is assigned anything."""
    assert assign([]) == {}


def test_scores_and_ids_are_stable_across_processes() -> None:
    """The weight depends on stream and instance only; the id names host, pid and start."""
    assert score("acc/list", "i1") == score("acc/list", "i1") != score("acc/list", "i2")
    assert instance_id("db1", 42, NOW) == "db1:42:20261203T090000.000000Z"
