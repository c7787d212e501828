"""When each stream's first cycle is due: start-up spread so many accounts do not stampede.

A process starting a thousand accounts at once would send every account's first requests in
the same second (to the vendor, from one IP) and open as many transactions as the pool allows,
all queued behind each other. Instead each stream's first cycle is due at a fixed place in a
spread that grows with the number of accounts starting together (``START_RATE`` accounts a
second), up to half the poll interval, so the last first cycle still ends within one poll.

The place is a hash of the stream name: deterministic (a restart starts each stream at the same
offset), independent of the order accounts are configured in, and uniform over the spread. The
delay counts from when the stream may first run (the balance of instances knows it), not from
when it was built: building a thousand accounts takes seconds, and every stream whose moment
passed meanwhile would start in the same second (measured: 384 requests in two seconds, against
about 100 a second through the rest of the spread). Pure: no clock.
"""

from __future__ import annotations

import hashlib

START_RATE = 20.0
"""Accounts started per second, on average, when many start together."""


def spread_seconds(starting: int, poll: float, *, rate: float = START_RATE) -> float:
    """The span first cycles are spread over when ``starting`` accounts start together: none for
    a single account, ``(starting - 1) / rate`` seconds for more, at most half of ``poll``."""
    if starting <= 1 or poll <= 0:
        return 0.0
    return min((starting - 1) / rate, poll / 2)


def place(stream: str) -> float:
    """Where ``stream`` sits in any spread: a fraction in [0, 1) fixed by its name."""
    digest = hashlib.blake2b(stream.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def first_delay(stream: str, *, starting: int, poll: float, rate: float = START_RATE) -> float:
    """How many seconds ``stream``'s first cycle waits once it may run, given that ``starting``
    accounts start together and poll every ``poll`` seconds."""
    return place(stream) * spread_seconds(starting, poll, rate=rate)
