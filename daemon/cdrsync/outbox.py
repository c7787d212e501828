"""The outbox stream: delivers ``vcclive_outbox`` rows with VCC Live's Add record, each once.

A row is claimed (``sending``, committed) before its request goes out and written back
(``delivered`` with its numberid, or ``failed`` with VCC Live's refusal) after the answer. Add
record is not idempotent, so a request whose answer is lost (a timeout, a 5xx, the process
killed mid-request) may or may not have added its records: those rows become ``unknown`` and are
never sent blindly again. cdrsync then looks for them in VCC Live (``resolve_unknown``): record
ids are given in increasing order (``[6]``, then ``[7, 8]`` in the vendor's examples), so the
records after the last numberid it knows are read one by one and compared with the rows' form
data; a row found is ``delivered``, and rows not found once the scan has passed the last record
are sent again. Without ``outbox_probe`` they stay ``unknown`` for an operator.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from cdrsync.errors import AuthError, PermanentError, TransientError
from cdrsync.plan import retry_delay
from cdrsync.store_queues import OutboxRow
from cdrsync.streamloop import StreamLoop, queue_backoff
from cdrsync.sync import Clock, utcnow

if TYPE_CHECKING:
    from cdrsync.config import AccountSettings
    from cdrsync.store import Store, StreamLocks

log = structlog.get_logger(__name__)

PROBE_MISSES = 5
"""Consecutive absent numberids after which the scan is past the project's last record."""
PROBE_LIMIT = 500
"""Records read at most per project and cycle while looking for unknown rows."""


class OutboxSink(Protocol):
    """VCC Live's record endpoints as the outbox needs them (``vendors.vcclive.VccOutbox``)."""

    async def add_records(self, projectid: int, payloads: Sequence[Mapping[str, Any]]) -> list[int]:
        """Add the records; their numberids in order. PermanentError: refused."""
        ...

    async def record_data(self, projectid: int, numberid: int) -> Mapping[str, Any] | None:
        """The record's form data, or None when there is no such record (404)."""
        ...


def form_matches(payload: Mapping[str, Any], data: Mapping[str, Any]) -> bool:
    """Whether a record's data holds every form value the payload sent (compared as text:
    VCC Live stores what it was given, numbers included, as field values)."""
    form = payload.get("form")
    if not isinstance(form, Mapping) or not form:
        return False
    return all(str(data.get(key)) == str(value) for key, value in form.items())


def backoff(attempts: int, base: dt.timedelta) -> dt.timedelta:
    """Wait before a failed row is sent again: base doubled per attempt, at most an hour."""
    seconds = retry_delay(attempts, base=base.total_seconds(), cap=3600.0)
    return dt.timedelta(seconds=seconds)


class OutboxStream(StreamLoop):
    """One VCC Live account's outbox: ``run()`` until stopped, or ``cycle()`` in tests."""

    def __init__(
        self,
        *,
        name: str,
        account: AccountSettings,
        sink: OutboxSink,
        store: Store,
        locks: StreamLocks,
        stop: asyncio.Event,
        clock: Clock = utcnow,
    ) -> None:
        super().__init__(
            name=name, account=account, store=store, locks=locks, stop=stop, clock=clock,
            logger=log, failed_event="outbox.cycle_failed", backoff=queue_backoff,
        )  # fmt: skip
        self._sink = sink
        self._queues = store.queues
        self._batch = int(account.option("outbox_batch"))
        self._retry = account.option("outbox_retry")
        self._interval: float = account.option("outbox_interval").total_seconds()
        self._probe = bool(account.option("outbox_probe"))
        self._recovered = False

    async def _own(self) -> bool:
        # Unlike the other streams, the outbox has never probed the lock session first or
        # logged a change of owner: it asks for the lock each turn (a no-op while it is held).
        return await self._locks.try_acquire(self.name) or self.name in self._locks.held

    def _poll_delay(self) -> float:
        """The outbox's own interval (``outbox_interval``), not the account's poll interval."""
        return self._interval

    async def cycle(self) -> bool:
        """Resolve rows in doubt, then send one batch. True when more rows are due already."""
        account = self._account
        if await self._store.load_state(self.name) is None:
            await self._store.ensure_stream(
                self.name, vendor=account.vendor, account=account.name, kind="outbox"
            )
        if not self._recovered:
            stuck = await self._queues.outbox_recover(account.name, now=self._clock())
            if stuck:
                self._log.warning(
                    "outbox.in_doubt",
                    rows=stuck,
                    action="checking VCC Live for them before sending again",
                )
            self._recovered = True
        if self._probe:
            await self.resolve_unknown()
        rows = await self._queues.outbox_claim(
            account.name, now=self._clock(), limit=self._batch, batch=uuid.uuid4().hex
        )
        if rows:
            await asyncio.shield(self._deliver(rows))
            await self._store.record_cycle(self.name, now=self._clock())
        return len(rows) >= self._batch

    async def _deliver(self, rows: Sequence[OutboxRow]) -> None:
        began = time.monotonic()
        ids = [r.id for r in rows]
        projectid = rows[0].projectid
        try:
            numberids = await self._sink.add_records(projectid, [r.payload for r in rows])
        except AuthError as exc:
            # Not the rows' fault: they wait for the credentials to be fixed.
            await self._queues.outbox_set_state(ids, "pending", error=str(exc), now=self._clock())
            raise
        except PermanentError as exc:
            await self._refused(rows, exc)
            return
        except TransientError as exc:
            await self._queues.outbox_set_state(ids, "unknown", error=str(exc), now=self._clock())
            self._log.warning(
                "outbox.in_doubt",
                rows=len(ids),
                error=str(exc),
                action="the answer was lost; checking VCC Live before resending",
            )
            return
        await self._queues.outbox_delivered(ids, numberids, now=self._clock())
        self._log.info("outbox.delivered", projectid=projectid, rows=len(ids),
                       ms=round((time.monotonic() - began) * 1000))  # fmt: skip

    async def _refused(self, rows: Sequence[OutboxRow], exc: PermanentError) -> None:
        """VCC Live refused the batch: alone, each row gets its own verdict, so one bad row
        does not keep the others from being delivered."""
        if len(rows) > 1:
            for row in rows:
                await self._deliver([row])
            return
        await self._queues.outbox_set_state(
            [rows[0].id], "failed", error=str(exc), now=self._clock()
        )
        self._log.warning(
            "outbox.refused",
            outbox_id=rows[0].id,
            error=str(exc),
            action="fix the row's payload and set its state back to pending",
        )

    async def resolve_unknown(self) -> None:
        """Find rows in doubt in VCC Live: delivered when found, pending again when not."""
        unknown = await self._queues.outbox_unknown(self._account.name, limit=PROBE_LIMIT)
        if not unknown:
            return
        known = await self._queues.outbox_numberids(self._account.name)
        by_project: dict[int, list[OutboxRow]] = {}
        for row in unknown:
            by_project.setdefault(row.projectid, []).append(row)
        for projectid, rows in by_project.items():
            await self._probe_project(projectid, rows, known.get(projectid, 0))

    async def _probe_project(self, projectid: int, rows: list[OutboxRow], after: int) -> None:
        found: dict[int, int] = {}
        misses = 0
        numberid = after
        for _ in range(PROBE_LIMIT):
            if misses >= PROBE_MISSES or len(found) == len(rows):
                break
            numberid += 1
            data = await self._sink.record_data(projectid, numberid)
            if data is None:
                misses += 1
                continue
            misses = 0
            for row in rows:
                if row.id not in found and form_matches(row.payload, data):
                    found[row.id] = numberid
                    break
        now = self._clock()
        if found:
            await self._queues.outbox_delivered(list(found), list(found.values()), now=now)
        if misses < PROBE_MISSES and len(found) < len(rows):
            self._log.warning(
                "outbox.probe_unfinished",
                projectid=projectid,
                action="still in doubt; the next cycle reads on",
            )
            return
        missing = [r for r in rows if r.id not in found]
        for row in missing:
            await self._queues.outbox_set_state(
                [row.id], "pending", error="not found in VCC Live after a lost answer; resending",
                now=now, next_attempt_at=now + backoff(row.attempts, self._retry),
            )  # fmt: skip
        self._log.info("outbox.resolved", projectid=projectid, delivered=len(found),
                       resend=len(missing))  # fmt: skip
