"""Which instance runs which stream, when several daemons share one database. Pure: no I/O.

Every instance registers in table ``instances`` with a heartbeat and the streams it runs
(``cdrsync.app.members``), reads every row back, and computes the same assignment from the same
rows: so the instances agree without talking to each other, and the stream locks stay the one
guarantee that no stream runs twice.

- An instance is live while its heartbeat is younger than the timeout and its lock session is
  still connected (a killed process's session ends with its socket, long before the timeout).
- Rendezvous hashing ranks the instances for each stream by a hash of (stream, instance): a
  stream goes to the highest ranked live instance that runs it and still has room, where room is
  ``ceil(streams / live instances)``. A stream's rank order does not depend on the other
  instances, so an instance joining or leaving moves only about its share of the streams.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Member:
    """One registered instance, as its row in ``instances`` reads."""

    id: str
    host: str
    pid: int
    started: dt.datetime
    streams: frozenset[str]
    heartbeat: dt.datetime
    """Its last heartbeat, on the database's clock."""
    connected: bool = True
    """Whether its lock session is still connected."""
    owned: int = 0
    """How many stream locks it held at its last heartbeat."""


def instance_id(host: str, pid: int, started: dt.datetime) -> str:
    """The id an instance registers under: unique per process, readable in ``status``."""
    return f"{host}:{pid}:{started.strftime('%Y%m%dT%H%M%S.%fZ')}"


def live(members: Iterable[Member], now: dt.datetime, timeout: dt.timedelta) -> list[Member]:
    """The instances that count: a heartbeat younger than ``timeout`` and a lock session
    (``now`` on the database's clock, like the heartbeats)."""
    return [m for m in members if m.connected and now - m.heartbeat < timeout]


def stale(members: Iterable[Member], now: dt.datetime, timeout: dt.timedelta) -> list[Member]:
    """The instances whose heartbeat is ``timeout`` old or older: dead, cut off or hung."""
    return [m for m in members if now - m.heartbeat >= timeout]


def score(stream: str, instance: str) -> int:
    """The rendezvous weight of ``instance`` for ``stream`` (the same in every process)."""
    digest = hashlib.blake2b(f"{stream}\x00{instance}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def assign(members: Sequence[Member]) -> dict[str, str]:
    """Stream -> the id of the instance that should run it, over the instances given (the live
    ones). A stream only some instances run goes to one of those; an instance never gets more
    than ``ceil(streams / instances)`` unless every instance that runs a stream is full."""
    if not members:
        return {}
    streams = sorted(set().union(*(m.streams for m in members)))
    room = math.ceil(len(streams) / len(members))
    load = dict.fromkeys((m.id for m in members), 0)
    ranked: dict[str, list[str]] = {}
    for stream in streams:
        runners = [m.id for m in members if stream in m.streams]
        ranked[stream] = sorted(runners, key=lambda i: (score(stream, i), i), reverse=True)
    # Streams with the fewest candidates first, so that a stream only one instance runs still
    # finds it with room; then by the stream's own hash, so no name prefix is favoured.
    order = sorted(streams, key=lambda s: (len(ranked[s]), score(s, ""), s))
    owner: dict[str, str] = {}
    for stream in order:
        candidates = ranked[stream]
        chosen = next((i for i in candidates if load[i] < room), candidates[0])
        owner[stream] = chosen
        load[chosen] += 1
    return owner


def shares(assignment: Mapping[str, str]) -> dict[str, int]:
    """How many streams each instance is assigned."""
    counts: dict[str, int] = {}
    for instance in assignment.values():
        counts[instance] = counts.get(instance, 0) + 1
    return counts
