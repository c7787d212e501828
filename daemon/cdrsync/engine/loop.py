"""The loop every stream runs: own the stream, run a cycle, back off on failure, then sleep.

The window, day, lookup and outbox streams differ in what one cycle does, not in how they are
driven, so ``StreamLoop.run()`` drives them all. What does differ between them is a parameter
(the ``*.cycle_failed`` event name, the backoff rule) or a small hook a stream overrides (its
poll interval, its idle wait, which sleeps a push may cut short); each override says why.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import datetime as dt
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from cdrsync.engine.plan import retry_delay
from cdrsync.errors import CdrsyncError, PermanentError, StoreError

if TYPE_CHECKING:
    from cdrsync.config import AccountSettings
    from cdrsync.store.store import Store

Backoff = Callable[[CdrsyncError, int, float], float]
"""Seconds to wait after (the error, consecutive failures, the stream's poll interval)."""

PERMANENT_CAP = 600.0
"""Longest wait after a permanent error: the vendor keeps refusing until someone acts."""


class Owner(Protocol):
    """What a stream needs of the lock session (``cdrsync.store.lock.StreamLocks``, or
    ``cdrsync.app.members.BalancedLocks`` when daemons share the streams out)."""

    @property
    def held(self) -> frozenset[str]: ...

    @property
    def retry_s(self) -> float:
        """How soon a stream this process should run, but another holds, asks again."""
        ...

    async def alive(self) -> bool: ...
    async def try_acquire(self, stream: str) -> bool: ...
    async def release(self, stream: str) -> None: ...

    def keeps(self, stream: str) -> bool:
        """Whether this process should run ``stream`` (hold it, or take it when free)."""
        ...

    def changes(self) -> asyncio.Event:
        """Set when ``keeps`` changes for some stream (a daemon joined, left or died)."""
        ...

    async def settle(self, stream: str | None = None) -> None:
        """Return once ``keeps`` can be trusted for ``stream`` (the balance knows it; without
        one, every stream of this process)."""


def poll_backoff(exc: CdrsyncError, failures: int, poll: float) -> float:
    """The wait of a stream that polls a list (window and day streams): a transient error never
    waits longer than a poll would anyway; a permanent one never shorter."""
    if isinstance(exc, PermanentError):
        # Credentials or a request the vendor refuses: retrying fast fixes nothing, and some
        # vendors lock an account after repeated failed logins.
        return max(poll, retry_delay(failures, cap=PERMANENT_CAP))
    return min(poll, retry_delay(failures))


def queue_backoff(exc: CdrsyncError, failures: int, poll: float) -> float:
    """The wait of a stream that works a queue (lookup and outbox streams): doubling from one
    second, up to a minute (ten after a permanent error), whatever the poll interval."""
    cap = PERMANENT_CAP if isinstance(exc, PermanentError) else 60.0
    # At least a second: the poll interval does not bound this wait, so nothing else would.
    return max(1.0, retry_delay(failures, cap=cap))


class StreamLoop(abc.ABC):
    """One stream of one account: ``run()`` until stopped (or finished), ``cycle()`` in tests."""

    def __init__(
        self,
        *,
        name: str,
        account: AccountSettings,
        store: Store,
        locks: Owner,
        stop: asyncio.Event,
        clock: Callable[[], dt.datetime],
        logger: Any,
        failed_event: str,
        backoff: Backoff = poll_backoff,
    ) -> None:
        """``logger`` is the subclass's module logger (kept so stdlib logger names stay put);
        ``failed_event`` names the warning a failed cycle logs (``sync.cycle_failed``...)."""
        self.name = name
        self._account = account
        self._store = store
        self._locks = locks
        self._stop = stop
        self._clock = clock
        self._failed_event = failed_event
        self._backoff = backoff
        # Set by a push through a subclass's ``wake()``; only the sleeps that allow it end early.
        self._wake = asyncio.Event()
        self._log = logger.bind(vendor=account.vendor, account=account.name, stream=name)
        self._owned_logged: bool | None = None
        self._balance: asyncio.Event | None = None
        self.finished = False
        """True once a bounded stream has read all it was asked to (never for the others)."""
        self.first_delay_s = 0.0
        """Seconds the first cycle waits once the balance knows the stream (``engine.spread``:
        many accounts starting together are spread out); 0 runs it at once."""

    @abc.abstractmethod
    async def cycle(self) -> bool:
        """One pass of the stream's work. True when more work waits already (no sleep)."""

    # ------------------------------------------------------------------ the loop

    async def run(self) -> None:
        """Cycle until the stop event is set (or the stream is finished)."""
        failures = 0
        # The spread counts from here: every stream built before the balance knew it would
        # otherwise be due at once when it does.
        await self._settle_or_stop()
        await self._wait_first_due()
        while not self._stop.is_set() and not self.finished:
            self._turn_starts()
            delay, failures = await self._turn(failures)
            if delay > 0 and not self.finished:
                await self._rest(delay, failures)

    async def _turn(self, failures: int) -> tuple[float, int]:
        """One cycle if this process owns the stream: the wait before the next one, and the
        consecutive failures so far. A CdrsyncError is logged and recorded, not raised; any
        other exception is a bug and ends the loop."""
        delay = self._poll_delay()
        # Taken before deciding: a rebalance while this turn runs then ends the sleep after it.
        self._balance = self._locks.changes()
        try:
            if await self._own():
                more = await self.cycle()
                failures = 0
                # Inside the try: a stream's idle wait may ask the store, which can fail too.
                delay = 0.0 if more else await self._idle_delay(delay)
            elif self._locks.keeps(self.name):
                # Ours by the balance, but another instance still holds it: it gives it up at
                # its next window boundary, so ask again soon rather than a poll from now.
                delay = min(delay, self._locks.retry_s)
        except CdrsyncError as exc:
            failures += 1
            delay = self._backoff(exc, failures, delay)
            await self._failed(exc, failures, delay)
        return delay, failures

    async def _failed(self, exc: CdrsyncError, failures: int, delay: float) -> None:
        self._log.warning(
            self._failed_event,
            error=str(exc),
            error_type=type(exc).__name__,
            failures=failures,
            retry_in_s=delay,
        )
        # The store may be what failed: the warning above is then all that can be said.
        with contextlib.suppress(StoreError):
            await self._store.record_cycle(self.name, now=self._clock(), error=str(exc))

    async def _own(self) -> bool:
        """Whether this process owns the stream (one owner per stream across instances).

        Called between cycles only: a stream the balance gives to another instance is handed
        over here, after the last cycle committed, never in the middle of one."""
        await self._locks.settle(self.name)
        if not self._locks.keeps(self.name):
            if self.name in self._locks.held:
                # Logged first: no cycle of this stream runs here after this line.
                self._log.info("stream.handed_over")
                await self._locks.release(self.name)
            owned = False
        elif not await self._locks.alive() or self.name not in self._locks.held:
            owned = await self._locks.try_acquire(self.name)
            # Held again after a gap (or for the first time): another instance may have run
            # the stream meanwhile, so what this one remembers of it is stale.
            self._ownership_taken()
        else:
            owned = True
        if owned != self._owned_logged:
            self._log.info("stream.owned" if owned else "stream.owned_elsewhere")
            self._owned_logged = owned
        return owned

    async def _still_owned(self) -> bool:
        """Between the windows (or days) of a cycle, which may last many minutes when catching
        up: whether the lock session still answers. A session ended on the server (an admin,
        a failover) loses every lock, and another instance may have taken the stream: this
        cycle then stops reading (what was read still commits) and the next turn asks again."""
        if not self._locks.keeps(self.name):
            # Another instance joined (or came back) and this stream is its share now: what
            # was read still commits, and the next turn hands the stream over.
            self._log.info("stream.handing_over")
            return False
        if await self._locks.alive():
            return True
        self._log.warning(
            "stream.lock_lost",
            action="stopped reading this cycle; the next one takes the lock again or leaves "
            "the stream to the instance that has it",
        )
        self._owned_logged = None
        return False

    async def _sleep(self, delay: float, *, wakeable: bool) -> None:
        """Wait ``delay`` seconds, less if the stop event is set (or, if ``wakeable``, a push
        wakes the stream, or the stream is to be handed over or taken over). The wake event is
        left as it is: clearing it is the caller's call."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + delay
        while True:
            moved, self._balance = self._balance or self._locks.changes(), None
            waits = {
                asyncio.ensure_future(self._stop.wait()),
                asyncio.ensure_future(moved.wait()),
            }
            if wakeable:
                waits.add(asyncio.ensure_future(self._wake.wait()))
            try:
                await asyncio.wait(
                    waits, timeout=max(0.0, deadline - loop.time()),
                    return_when=asyncio.FIRST_COMPLETED,
                )  # fmt: skip
            finally:
                for waiter in waits:
                    waiter.cancel()
            if not moved.is_set() or self._stop.is_set() or (wakeable and self._wake.is_set()):
                return
            if loop.time() >= deadline or self._ownership_moved():
                return

    async def _settle_or_stop(self) -> None:
        """``settle`` (up to the instance timeout, longer than a shutdown's grace), ended early
        by the stop event: a stream stopped at start-up must not hold the shutdown up."""
        settle = asyncio.ensure_future(self._locks.settle(self.name))
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({settle, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in (settle, stop):
                waiter.cancel()

    async def _wait_first_due(self) -> None:
        """Wait ``first_delay_s``: only the stop event or a push ends it early (a push's lookup
        is as urgent at start-up as later). Not a rebalance: a balance may arrive while every
        stream waits here, and ending all the waits then would be the stampede again."""
        wait = self.first_delay_s
        if wait <= 0:
            return
        waits = {asyncio.ensure_future(self._stop.wait()), asyncio.ensure_future(self._wake.wait())}
        try:
            await asyncio.wait(waits, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waits:
                waiter.cancel()

    def _ownership_moved(self) -> bool:
        """Whether this stream is held but no longer ours, or ours but not held yet."""
        return (self.name in self._locks.held) != self._locks.keeps(self.name)

    # ------------------------------------------------------------------ hooks

    def _turn_starts(self) -> None:  # noqa: B027 - an optional hook, empty on purpose
        """Called before each turn (a stream that clears its wake-ups here overrides it)."""

    def _ownership_taken(self) -> None:  # noqa: B027 - an optional hook, empty on purpose
        """Called when a turn takes the stream's lock rather than finding it still held (a
        stream that remembers its state between cycles forgets it here)."""

    def _poll_delay(self) -> float:
        """Seconds between cycles when nothing is waiting: the account's poll interval."""
        return self._account.poll_interval.total_seconds()

    async def _idle_delay(self, poll: float) -> float:
        """Seconds to wait after a cycle that left nothing waiting: by default, a poll."""
        return poll

    async def _rest(self, delay: float, failures: int) -> None:
        """The wait between turns: only the stop event ends it early, by default."""
        await self._sleep(delay, wakeable=False)
