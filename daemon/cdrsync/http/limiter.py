"""Sliding-window rate limiting: never more than N requests in ANY window of P seconds.

Vendors state their limits as "at most N requests per period" and enforce them over a sliding
window (Ozonetel: 2 bulk reports a minute; Acefone: a configured number a minute). A leaky or
token bucket (aiolimiter) admits a full burst on top of its steady rate, so one sliding window can
see up to about 2N requests and the vendor answers 429. This limiter remembers the last ``limit``
grant times instead and admits a request only when the window ending at that instant holds fewer
than ``limit`` of them, which is exact for every window, not on average.

The decision (:meth:`SlidingWindowLimiter.delay`) is pure and takes ``now``; only
:meth:`SlidingWindowLimiter.acquire` waits, with asyncio. A limiter counts this process's grants;
a ``gate`` (see :attr:`SlidingWindowLimiter.gate`) can add a check shared with other processes.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Protocol

__all__ = ["LimiterSet", "LowPriority", "RateLimitLike", "SlidingWindowLimiter"]


class SlidingWindowLimiter:
    """At most `limit` grants in any sliding `period` seconds (plus `margin` of safety).

    ``margin`` widens the window because the vendor counts arrival times, which differ from our
    grant times by network jitter: two grants exactly ``period`` apart may arrive less than
    ``period`` apart. :meth:`pause` honours a ``Retry-After`` and then slows down: for one
    ``period`` after the pause ends the effective limit is halved (at least 1).

    ``clock`` and ``sleep`` are injectable so that tests drive time by hand. Memory is O(limit).
    """

    __slots__ = (
        "_clock",
        "_grants",
        "_high",
        "_limit",
        "_lock",
        "_margin",
        "_name",
        "_paused_until",
        "_period",
        "_sleep",
        "_slow_until",
        "gate",
    )

    def __init__(
        self,
        limit: int,
        period: float,
        *,
        margin: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        name: str = "",
    ) -> None:
        if limit < 1:
            raise ValueError(f"rate limit {name or ''} needs at least 1 request, got {limit}")
        if not period > 0:
            raise ValueError(f"rate limit {name or ''} needs a period above 0 s, got {period}")
        if not margin >= 0:
            raise ValueError(f"rate limit {name or ''} needs a margin of 0 s or more, got {margin}")
        self._limit = limit
        self._period = float(period)
        self._margin = float(margin)
        self._clock = clock
        self._sleep = sleep
        self._name = name
        # Only the last `limit` grants can ever decide a delay: older ones are further back than
        # the `limit`-th most recent, so a bounded deque keeps memory O(limit).
        self._grants: deque[float] = deque(maxlen=limit)
        self._paused_until = float("-inf")
        self._slow_until = float("-inf")
        # asyncio.Lock hands the lock to waiters in arrival order and never lets a newcomer
        # barge past queued waiters, which is the FIFO fairness that acquire() promises.
        self._lock = asyncio.Lock()
        self._high = 0  # normal-priority callers inside acquire(): a low one yields to them
        self.gate: Callable[[], Awaitable[float]] | None = None
        """A check shared with other processes, awaited once this limiter allows a grant (with
        its lock held, so this process's callers pass it one at a time, in order): 0 means the
        grant is taken there too and the request may go; more means wait that many seconds,
        then ask both again. The grant is recorded here only after the gate said 0."""

    def __repr__(self) -> str:
        return f"<SlidingWindowLimiter {self._name!r} {self._limit}/{self._period:g}s>"

    @property
    def limit(self) -> int:
        """The configured number of grants per window (before any slow-down)."""
        return self._limit

    @property
    def period(self) -> float:
        """The vendor's window in seconds (without the safety margin)."""
        return self._period

    @property
    def margin(self) -> float:
        """Seconds added to every window to absorb network jitter."""
        return self._margin

    @property
    def name(self) -> str:
        """A label for logs and metrics, such as ``"acme/list"``."""
        return self._name

    @property
    def window(self) -> float:
        """The window actually enforced: ``period + margin`` seconds."""
        return self._period + self._margin

    def effective_limit(self, now: float) -> int:
        """The limit in force at ``now``: halved (at least 1) for one period after a pause."""
        if self._paused_until <= now < self._slow_until:
            return max(1, self._limit // 2)
        return self._limit

    def used(self, now: float) -> int:
        """Grants in the sliding window that ends at ``now``."""
        start = now - self.window
        return sum(1 for granted in self._grants if start < granted <= now)

    def delay(self, now: float) -> float:
        """Seconds from ``now`` until the next grant is allowed (0 when it is allowed now).

        Pure: reads the recorded grants and any pause, changes nothing.
        """
        earliest = max(now, self._paused_until)
        if earliest < self._slow_until:
            slowed = self._earliest_with(max(1, self._limit // 2), earliest)
            if slowed < self._slow_until:
                return slowed - now
            # Past the slow-down the full limit applies again, which may admit earlier than the
            # halved one would have, but never before the slow-down ends.
            earliest = self._slow_until
        return self._earliest_with(self._limit, earliest) - now

    def _earliest_with(self, limit: int, earliest: float) -> float:
        """The first instant >= ``earliest`` at which fewer than ``limit`` grants are in window."""
        if len(self._grants) < limit:
            return earliest
        # The `limit`-th most recent grant must have left the window before another is allowed.
        return max(earliest, self._grants[-limit] + self.window)

    def seed(self, ages: list[float]) -> None:
        """Count grants made ``ages`` seconds ago (by a process before this one) as if they had
        been made here: a restart then spends only what is left of the vendor's window."""
        now = self._clock()
        for age in sorted(ages, reverse=True):
            self._grants.append(now - age)

    @property
    def scarce(self) -> bool:
        """At most one request a second on average: worth remembering across a restart."""
        return self._period / self._limit >= 1.0

    def record(self, now: float) -> None:
        """Record a grant at ``now`` without waiting (for callers that checked :meth:`delay`)."""
        self._grants.append(now)

    async def _take(self) -> float:
        """With the lock held and :meth:`delay` at 0: pass the gate, then record the grant.
        Returns 0 once granted, else the seconds the gate asks to wait."""
        if self.gate is not None and (wait := await self.gate()) > 0:
            return wait
        # Timestamped after the gate, right before the request goes out: a slow gate (a slow
        # database) must not make the recorded grant older than the request it lets through.
        self.record(self._clock())
        return 0.0

    async def acquire(self) -> None:
        """Wait until a grant is allowed (here and by the gate), then record it.

        Waiters are served first come, first served. A waiter cancelled while it waits takes no
        slot and does not hold up the ones behind it.
        """
        self._high += 1
        try:
            async with self._lock:
                # Re-check after every sleep: a pause() may have arrived while we slept.
                while True:
                    wait = self.delay(self._clock())
                    if wait <= 0 and (wait := await self._take()) <= 0:
                        return
                    await self._sleep(wait)
        finally:
            self._high -= 1

    async def acquire_low(self, poll: float = 0.05) -> None:
        """Wait until a grant is allowed and no normal-priority caller is waiting, then record
        it: backlog work spends only what live work leaves (Ozonetel's 2 bulk requests a
        minute go to the newest window first)."""
        while True:
            wait = self.delay(self._clock())
            # An unlocked asyncio.Lock is taken without yielding, so no normal caller can slip
            # in between this check and the grant; the lock then keeps them out of the gate.
            if wait <= 0 and self._high == 0 and not self._lock.locked():
                async with self._lock:
                    if (wait := await self._take()) <= 0:
                        return
            await self._sleep(max(wait, poll))

    def pause(self, seconds: float, *, now: float | None = None) -> None:
        """Grant nothing until ``now + seconds`` (a 429's Retry-After), then slow down.

        For one ``period`` after the pause ends the effective limit is halved (at least 1): the
        vendor has just told us our idea of its limit is too generous. A shorter pause never
        shortens one already in force.
        """
        at = self._clock() if now is None else now
        self._paused_until = max(self._paused_until, at + max(0.0, seconds))
        self._slow_until = self._paused_until + self._period

    def paused_until(self) -> float:
        """The clock value until which nothing is granted (``-inf`` when never paused)."""
        return self._paused_until


class LowPriority:
    """A view of a limiter whose ``acquire`` yields to the limiter's normal-priority callers.

    Given to a backlog stream's source in place of the shared limiter: both spend one budget,
    the live stream first."""

    __slots__ = ("_base",)

    def __init__(self, base: SlidingWindowLimiter) -> None:
        self._base = base

    async def acquire(self) -> None:
        """Wait for a grant that no live caller wants."""
        await self._base.acquire_low()

    def __getattr__(self, name: str) -> object:
        return getattr(self._base, name)


class RateLimitLike(Protocol):
    """Anything stating a limit as ``requests`` per ``period_s`` seconds (config's RateLimit)."""

    @property
    def requests(self) -> int:
        """How many requests the vendor allows per period."""

    @property
    def period_s(self) -> float:
        """The vendor's window in seconds."""


class LimiterSet:
    """One account's limiters, one per endpoint group ("list", "auth", "lookup", ...).

    Endpoints of one group share a budget at the vendor (Ozonetel counts every bulk report
    request of an account against the same 2/min), so they share one limiter here.
    """

    __slots__ = ("_account", "_limiters")

    def __init__(
        self,
        account: str,
        limits: Mapping[str, RateLimitLike],
        *,
        margin: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._account = account
        self._limiters = {
            group: SlidingWindowLimiter(
                limit.requests,
                limit.period_s,
                margin=margin,
                clock=clock,
                sleep=sleep,
                name=f"{account}/{group}",
            )
            for group, limit in limits.items()
        }

    @property
    def account(self) -> str:
        """The account these limiters belong to."""
        return self._account

    def __getitem__(self, group: str) -> SlidingWindowLimiter:
        try:
            return self._limiters[group]
        except KeyError:
            known = ", ".join(sorted(self._limiters)) or "none"
            raise KeyError(
                f"account {self._account!r} has no rate limit for endpoint group {group!r} "
                f"(configured: {known}); add it to the account's rate limits"
            ) from None

    def __contains__(self, group: object) -> bool:
        return group in self._limiters

    def __iter__(self) -> Iterator[str]:
        return iter(self._limiters)

    def __len__(self) -> int:
        return len(self._limiters)
