"""The lookup stream: works through one account's ``lookups`` queue within the vendor's rules.

Pushes (and lookups' own follow-ups) queue per-call requests; this stream takes the due ones,
lets the vendor module apply its schedule (Ozonetel: ``currentday``/``historical`` and nothing
between 00:00 and 03:00 IST; VCC Live: 5 minutes after the webhook, then every 5 minutes, 20
times) and commits each attempt's calls, events and new state in one transaction. It sleeps
until the earliest pending lookup is due, or until a push wakes it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import TYPE_CHECKING

import structlog

from cdrsync.engine.loop import StreamLoop, queue_backoff
from cdrsync.engine.window import Clock, CycleHook, utcnow
from cdrsync.errors import (
    AuthError,
    CdrsyncError,
    EndpointError,
    PermissionRefused,
    TransientError,
)
from cdrsync.model import LookupItem, LookupOutcome, WriteResult

if TYPE_CHECKING:
    from cdrsync.config import AccountSettings
    from cdrsync.store.store import Store, StreamLocks
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


class LookupStream(StreamLoop):
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
        super().__init__(
            name=name, account=account, store=store, locks=locks, stop=stop, clock=clock,
            logger=log, failed_event="lookup.cycle_failed", backoff=queue_backoff,
        )  # fmt: skip
        self.kind = kind
        self._source = source
        self._queues = store.queues
        self._batch = batch
        self._on_cycle = on_cycle
        self._held: dict[str, dt.datetime] = {}
        """Kinds the vendor refused the account (``PermissionRefused``), until when."""

    def wake(self) -> None:
        """Look at the queue now (a push queued a lookup), not at the next due time."""
        self._wake.set()

    async def _rest(self, delay: float, failures: int) -> None:
        # Any push ends the wait, a backoff's too (unlike the day stream's): it queued a lookup,
        # so what is due is looked at again. The wake is cleared only once slept: one that came
        # during a cycle ends the next wait at once.
        await self._sleep(delay, wakeable=True)
        self._wake.clear()

    async def _idle_delay(self, poll: float) -> float:
        """Until the earliest pending lookup is due (at most a poll interval)."""
        kinds = self._active_kinds(self._clock())
        if not kinds:
            return poll
        due = await self._queues.next_lookup_due(self._account.vendor, self._account.name, kinds)
        if due is None:
            return poll
        return min(poll, max(0.0, (due - self._clock()).total_seconds()))

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
        kinds = self._active_kinds(now)
        items = (
            await self._queues.due_lookups(
                account.vendor, account.name, kinds, now=now, limit=self._batch
            )
            if kinds
            else []
        )
        written = WriteResult()
        tally: dict[str, int] = {"done": 0, "retry": 0, "gave_up": 0, "waits": 0}
        try:
            for item in items:
                if self._stop.is_set():
                    break
                if item.kind in self._held:
                    continue  # refused earlier in this cycle: it stays pending, as it was
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
        except EndpointError as exc:
            # The endpoint itself is refused (a wrong path answers 404 whatever is asked):
            # giving up on the item would close every pending lookup for good. It stays
            # pending, uncounted, and the stream backs off until the setting is fixed.
            self._log.error(
                "lookup.endpoint_refused", kind=item.kind, call_key=item.call_key, error=str(exc)
            )
            raise
        except PermissionRefused as exc:
            return self._hold(item, exc, now)
        except CdrsyncError as exc:
            outcome = on_error(exc, now)
            self._log.info(
                "lookup.attempt_failed", kind=item.kind, call_key=item.call_key,
                state=outcome.state, error=str(exc),
            )  # fmt: skip
            return outcome

    def _hold(self, item: LookupItem, exc: PermissionRefused, now: dt.datetime) -> LookupOutcome:
        """The vendor refused the account this kind of lookup (VCC Live's 403): no lookup of
        the kind is asked before the hold ends, said once; they all stay pending, uncounted but
        this one (whose attempt counts: were the refusal about this call only, its lookup still
        ends after ``lookup_attempts`` holds). The refused one stays due at once: the hold in
        memory keeps it from being asked, and a reload that lifts the hold asks it again."""
        until = now + dt.timedelta(seconds=exc.hold_s)
        self._held[item.kind] = until
        self._log.warning(
            "lookup.kind_held", kind=item.kind, until=until.isoformat(), error=str(exc),
            action="grant the API token the permission in the vendor's admin; the pending "
            "lookups wait (none is dropped) and the list still brings the calls; one is asked "
            "again when the hold ends, or at once after a reload",
        )  # fmt: skip
        return LookupOutcome("retry", next_attempt_at=now, note=str(exc))

    def _active_kinds(self, now: dt.datetime) -> list[str]:
        """The source's kinds but those held (``_hold``); a hold that has ended is dropped."""
        for kind, until in list(self._held.items()):
            if until <= now:
                del self._held[kind]
                self._log.info("lookup.kind_resumed", kind=kind)
        return [kind for kind in self._source.kinds if kind not in self._held]

    def lift_holds(self) -> list[str]:
        """Ask the held kinds again at the next cycle (a reload: the permission may have been
        granted meanwhile); the kinds that were held."""
        lifted, self._held = list(self._held), {}
        return lifted

    def _report(self, ok: bool, written: WriteResult) -> None:
        if self._on_cycle is not None:
            self._on_cycle(self.name, ok, None, written)
