"""The lookup stream: works through one account's ``lookups`` queue within the vendor's rules.

Pushes (and lookups' own follow-ups) queue per-call requests; this stream takes the due ones,
lets the vendor module apply its schedule (Ozonetel: ``currentday``/``historical`` and nothing
between 00:00 and 03:00 IST; VCC Live: 5 minutes after the webhook, then every 5 minutes, 20
times) and commits each attempt's calls, events and new state in one transaction. It sleeps
until the earliest pending lookup is due, or until a push wakes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from typing import TYPE_CHECKING

import structlog

from cdrsync.errors import AuthError, CdrsyncError, PermanentError, StoreError, TransientError
from cdrsync.model import LookupItem, LookupOutcome, WriteResult
from cdrsync.plan import retry_delay
from cdrsync.sync import Clock, CycleHook, utcnow

if TYPE_CHECKING:
    from cdrsync.config import AccountSettings
    from cdrsync.store import Store, StreamLocks
    from cdrsync.vendors import LookupSource

log = structlog.get_logger(__name__)

# After a vendor error that is not about the item (timeout, 5xx, 429), the item waits this long.
TRANSIENT_WAIT = dt.timedelta(minutes=1)


def on_error(exc: CdrsyncError, now: dt.datetime) -> LookupOutcome:
    """What a failed attempt means for the item: retried later (not counted) when the vendor
    could not answer; given up when the vendor refuses this item for good."""
    if isinstance(exc, TransientError):
        return LookupOutcome(
            "retry", next_attempt_at=now + TRANSIENT_WAIT, counted=False, note=str(exc)
        )
    return LookupOutcome("gave_up", note=f"the vendor refused this lookup: {exc}")


class LookupStream:
    """One account's lookup queue: ``run()`` until stopped, or once per ``cycle()`` in tests."""

    def __init__(
        self,
        *,
        name: str,
        account: AccountSettings,
        source: LookupSource,
        store: Store,
        locks: StreamLocks,
        stop: asyncio.Event,
        clock: Clock = utcnow,
        batch: int = 50,
        on_cycle: CycleHook | None = None,
        kind: str = "lookup",
    ) -> None:
        self.name = name
        self.kind = kind
        self._account = account
        self._source = source
        self._store = store
        self._queues = store.queues
        self._locks = locks
        self._stop = stop
        self._clock = clock
        self._batch = batch
        self._on_cycle = on_cycle
        self._wake = asyncio.Event()
        self._log = log.bind(vendor=account.vendor, account=account.name, stream=name)
        self._owned_logged: bool | None = None
        self.finished = False

    def wake(self) -> None:
        """Look at the queue now (a push queued a lookup), not at the next due time."""
        self._wake.set()

    async def run(self) -> None:
        """Work the queue until the stop event is set."""
        failures = 0
        while not self._stop.is_set():
            delay = self._account.poll_interval.total_seconds()
            try:
                if await self._own():
                    more = await self.cycle()
                    failures = 0
                    delay = 0.0 if more else await self._until_due(delay)
            except CdrsyncError as exc:
                failures += 1
                cap = 600.0 if isinstance(exc, PermanentError) else 60.0
                delay = max(1.0, retry_delay(failures, cap=cap))
                self._log.warning(
                    "lookup.cycle_failed", error=str(exc), error_type=type(exc).__name__,
                    failures=failures, retry_in_s=delay,
                )  # fmt: skip
                with contextlib.suppress(StoreError):
                    await self._store.record_cycle(self.name, now=self._clock(), error=str(exc))
            await self._sleep(delay)

    async def _sleep(self, delay: float) -> None:
        if delay <= 0:
            return
        stopper = asyncio.ensure_future(self._stop.wait())
        waker = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({stopper, waker}, timeout=delay, return_when="FIRST_COMPLETED")
        finally:
            stopper.cancel()
            waker.cancel()
        self._wake.clear()

    async def _until_due(self, poll: float) -> float:
        due = await self._queues.next_lookup_due(
            self._account.vendor, self._account.name, self._source.kinds
        )
        if due is None:
            return poll
        return min(poll, max(0.0, (due - self._clock()).total_seconds()))

    async def _own(self) -> bool:
        if not await self._locks.alive() or self.name not in self._locks.held:
            owned = await self._locks.try_acquire(self.name)
        else:
            owned = True
        if owned != self._owned_logged:
            self._log.info("stream.owned" if owned else "stream.owned_elsewhere")
            self._owned_logged = owned
        return owned

    async def cycle(self) -> bool:
        """Attempt every lookup due now (up to a batch). True when more are due already."""
        began = time.monotonic()
        account = self._account
        if await self._store.load_state(self.name) is None:
            await self._store.ensure_stream(
                self.name, vendor=account.vendor, account=account.name, kind=self.kind
            )
        now = self._clock()
        confirmed = await self._queues.confirmed_by_list(
            account.vendor, account.name, self._source.kinds, now=now
        )
        items = await self._queues.due_lookups(
            account.vendor, account.name, self._source.kinds, now=now, limit=self._batch
        )
        written = WriteResult()
        tally: dict[str, int] = {"done": 0, "retry": 0, "gave_up": 0, "waits": 0}
        try:
            for item in items:
                if self._stop.is_set():
                    break
                outcome = await self._attempt(item)
                written += await asyncio.shield(
                    self._queues.finish_lookup(self.name, item, outcome, now=self._clock())
                )
                tally[outcome.state] += 1
                tally["waits"] += 0 if outcome.counted else 1
        except CdrsyncError:
            self._report(False, written)
            raise
        await self._store.record_cycle(self.name, now=self._clock())
        self._log.info(
            "lookup.cycle_done", due=len(items), confirmed_by_list=confirmed,
            inserted=written.inserted, updated=written.updated,
            ms=round((time.monotonic() - began) * 1000), **tally,
        )  # fmt: skip
        self._report(True, written)
        return len(items) >= self._batch

    async def _attempt(self, item: LookupItem) -> LookupOutcome:
        now = self._clock()
        try:
            return await self._source.perform(item, now)
        except AuthError:
            raise  # the account's credentials: the whole stream waits (logged by run())
        except CdrsyncError as exc:
            outcome = on_error(exc, now)
            self._log.info(
                "lookup.attempt_failed", kind=item.kind, call_key=item.call_key,
                state=outcome.state, error=str(exc),
            )  # fmt: skip
            return outcome

    def _report(self, ok: bool, written: WriteResult) -> None:
        if self._on_cycle is not None:
            self._on_cycle(self.name, ok, None, written)
