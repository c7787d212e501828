"""The outbox stream: delivers ``vcclive_outbox`` rows with VCC Live's Add record, each once.

A row is claimed (``sending``, committed) before its request goes out and written back
(``delivered`` with its numberid, or ``failed`` with VCC Live's refusal) after the answer. VCC
answers HTTP 200 whatever happened, so only a refusal that stored nothing (errors with an empty
answer, an HTTP 4xx) splits a batch into rows sent again alone. Add record is not idempotent: a
request whose outcome is unclear (an answer lost to a timeout, a 5xx or the process dying, a
write-back that failed, errors next to numberids, the wrong count of them) leaves its rows
``unknown``, never sent blindly again. A failed cycle makes the next one recover rows left
``sending`` (those sent a request timeout ago at least: another instance may still await its
answer); the first cycle of a process does it too.

cdrsync then looks for rows in doubt in VCC Live (``resolve_unknown``), a few records a cycle,
the scan's progress kept in memory. Record ids are given in increasing order (``[6]``, then
``[7, 8]`` in the vendor's examples), so a scan reads, one by one, the numberids after the
highest one delivered by a batch sent before the rows and compares each record's form data with
theirs (``record_verdict``: only text compares, VCC returns valueids for value fields). A row
found is ``delivered``. A row is sent again only once a scan that began ``outbox_probe_delay``
after its answer was lost has reached the first numberid of a batch sent after it (without
one: ``PROBE_MISSES`` absent ids in a row), every record read being told apart from it.
A row that some record could not be told apart from stays ``unknown`` for an operator; without
``outbox_probe`` every row in doubt does.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from cdrsync.engine.loop import StreamLoop, queue_backoff
from cdrsync.engine.outbox_probe import PROBE_MISSES, ProbeScan, judge, next_pass_at
from cdrsync.engine.plan import retry_delay
from cdrsync.engine.window import Clock, utcnow
from cdrsync.errors import AuthError, CdrsyncError, PermanentError, StoreError, TransientError
from cdrsync.store.queues import OutboxRow
from cdrsync.vendors.vcclive import AddInDoubt

if TYPE_CHECKING:
    from cdrsync.config import AccountSettings
    from cdrsync.store.store import Store, StreamLocks

log = structlog.get_logger(__name__)

PROBE_READS = 30
"""Records read at most per cycle (all projects together) while looking for rows in doubt: the
reads share the ``records`` limit with Add record and record lookups, which must not starve."""
UNKNOWN_ROWS = 500
"""Rows in doubt looked for at once, at most."""


class OutboxSink(Protocol):
    """VCC Live's record endpoints as the outbox needs them (``vendors.vcclive.VccOutbox``)."""

    async def add_records(self, projectid: int, payloads: Sequence[Mapping[str, Any]]) -> list[int]:
        """Add the records; their numberids in order. ``PermanentError``: refused, nothing
        stored; ``AddInDoubt`` or ``TransientError``: some records may have been added."""
        ...

    async def record_data(self, projectid: int, numberid: int) -> Mapping[str, Any] | None:
        """The record's form data, or None when there is no such record (404)."""
        ...


def backoff(attempts: int, base: dt.timedelta) -> dt.timedelta:
    """Wait before a failed row is sent again: base doubled per attempt, at most an hour."""
    seconds = retry_delay(attempts, base=base.total_seconds(), cap=3600.0)
    return dt.timedelta(seconds=seconds)


# ---------------------------------------------------------------------------- the stream


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
        self._probe_delay: dt.timedelta = account.option("outbox_probe_delay")
        self._in_flight = account.request_timeout
        self._recover_due = True
        self._scans: dict[int, ProbeScan] = {}
        self._next_pass: dict[int, dt.datetime] = {}
        self._unverifiable: set[int] = set()
        self._turns = 0

    def _poll_delay(self) -> float:
        """The outbox's own interval (``outbox_interval``), not the account's poll interval."""
        return self._interval

    async def cycle(self) -> bool:
        """Recover rows left in flight, look for rows in doubt, then send one batch. True when
        more rows are due already."""
        try:
            return await self._cycle()
        except CdrsyncError:
            # Rows may be left `sending` (a write-back that failed): the next cycle recovers
            # them, not the next start of the process.
            self._recover_due = True
            raise

    async def _cycle(self) -> bool:
        account = self._account
        if await self._store.load_state(self.name) is None:
            await self._store.ensure_stream(
                self.name, vendor=account.vendor, account=account.name, kind="outbox"
            )
        if self._recover_due:
            await self._recover()
        if self._probe:
            await self.resolve_unknown()
        rows = await self._queues.outbox_claim(
            account.name, now=self._clock(), limit=self._batch, batch=uuid.uuid4().hex
        )
        if rows:
            await asyncio.shield(self._deliver(rows))
        # Every cycle that ran counts, rows or not: /readyz and `status` call a stream with no
        # recent success stuck, and an idle outbox is not.
        await self._store.record_cycle(self.name, now=self._clock())
        return len(rows) >= self._batch

    async def _recover(self) -> None:
        now = self._clock()
        # A row sent less than a request timeout ago may be in flight in an instance that has
        # just lost the stream's lock: its answer is still to be written back there.
        stuck = await self._queues.outbox_recover(
            self._account.name, now=now, sent_before=now - self._in_flight
        )
        if stuck:
            self._log.warning(
                "outbox.in_doubt", rows=stuck,
                action="checking VCC Live for them before sending again",
            )  # fmt: skip
        # Between cycles nothing of this process is in flight: rows still `sending` are too
        # recent to judge, so the next cycle looks again.
        self._recover_due = await self._queues.outbox_sending(self._account.name) > 0

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
        except AddInDoubt as exc:
            await self._in_doubt(ids, exc, "VCC Live's answer does not say which records it added")
            return
        except PermanentError as exc:
            await self._refused(rows, exc)
            return
        except TransientError as exc:
            await self._in_doubt(ids, exc, "the answer was lost")
            return
        await self._queues.outbox_delivered(ids, numberids, now=self._clock())
        self._log.info("outbox.delivered", projectid=projectid, rows=len(ids),
                       ms=round((time.monotonic() - began) * 1000))  # fmt: skip

    async def _in_doubt(self, ids: list[int], exc: CdrsyncError, why: str) -> None:
        await self._queues.outbox_set_state(ids, "unknown", error=str(exc), now=self._clock())
        self._log.warning(
            "outbox.in_doubt", rows=len(ids), error=str(exc),
            action=f"{why}; checking VCC Live before resending",
        )  # fmt: skip

    async def _refused(self, rows: Sequence[OutboxRow], exc: PermanentError) -> None:
        """VCC Live refused the batch before storing any of it: alone, each row gets its own
        verdict, so one bad row does not keep the others from being delivered."""
        if len(rows) > 1:
            for index, row in enumerate(rows):
                try:
                    await self._deliver([row])
                except CdrsyncError as stopped:
                    await self._unsent(rows[index + 1 :], stopped)
                    raise
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

    async def _unsent(self, rows: Sequence[OutboxRow], exc: CdrsyncError) -> None:
        """Claimed rows whose request never went out (the cycle stopped) wait as ``pending``."""
        if rows:
            # If the store is what failed, the next cycle's recovery takes them instead.
            with contextlib.suppress(StoreError):
                await self._queues.outbox_set_state(
                    [r.id for r in rows], "pending", error=f"not sent yet: {exc}",
                    now=self._clock(),
                )  # fmt: skip

    # ------------------------------------------------------------------ rows in doubt

    async def resolve_unknown(self) -> None:
        """Look for rows in doubt in VCC Live, a few records a cycle: ``delivered`` when found,
        ``pending`` again when ruled absent, left for an operator when unverifiable."""
        unknown = await self._queues.outbox_unknown(self._account.name, limit=UNKNOWN_ROWS)
        by_project: dict[int, list[OutboxRow]] = {}
        for row in unknown:
            if row.id not in self._unverifiable:
                by_project.setdefault(row.projectid, []).append(row)
        for projectid in set(self._scans) - set(by_project):
            del self._scans[projectid]  # resolved elsewhere (an operator)
        for projectid in set(self._next_pass) - set(by_project):
            del self._next_pass[projectid]
        if not by_project:
            return
        # The budget is shared; the project served first turns, so none waits for good.
        projects = sorted(by_project)
        first = self._turns % len(projects)
        self._turns += 1
        budget, share = PROBE_READS, max(1, PROBE_READS // len(projects))
        for projectid in projects[first:] + projects[:first]:
            if budget <= 0:
                break
            reads = min(share, budget)
            budget -= await self._probe_project(projectid, by_project[projectid], reads)

    async def _probe_project(self, projectid: int, rows: list[OutboxRow], reads: int) -> int:
        """Read on in the project's scan, at most ``reads`` records; how many it read."""
        now = self._clock()
        if self._next_pass.get(projectid, now) > now:
            return 0
        sent = [r.sent_at or r.updated_at or now for r in rows]
        bounds = await self._queues.outbox_probe_bounds(
            self._account.name, projectid, first_sent=min(sent), last_sent=max(sent)
        )
        scan = self._scans.get(projectid)
        if scan is None or not scan.rebase(bounds.after):
            members = frozenset(r.id for r in rows)
            scan = ProbeScan(bounds.after, now, members, misses_allowed=PROBE_MISSES)
            self._scans[projectid] = scan
        left, found, used = list(rows), dict[int, int](), 0
        try:
            while used < reads and left:
                numberid = scan.next_numberid(bounds)
                if numberid is None:
                    break
                used += 1
                row = scan.saw(numberid, await self._sink.record_data(projectid, numberid), left)
                if row is not None:
                    found[row.id] = numberid
                    left.remove(row)
        finally:
            # Written even when a read failed: the scan has moved past these records.
            await self._found(projectid, found)
        if left and scan.next_numberid(bounds) is not None:
            tell = self._log.info if found else self._log.debug
            tell("outbox.resolved" if found else "outbox.probing", projectid=projectid,
                 delivered=len(found), in_doubt=len(left), scanned_to=scan.position)  # fmt: skip
            return used
        del self._scans[projectid]
        await self._judge(projectid, scan, left, delivered=len(found))
        return used

    async def _found(self, projectid: int, found: dict[int, int]) -> None:
        if not found:
            return
        try:
            await self._queues.outbox_delivered(list(found), list(found.values()),
                                                now=self._clock())  # fmt: skip
        except BaseException:
            # Unwritten, these rows must be found again: the next pass starts over.
            self._scans.pop(projectid, None)
            raise

    async def _judge(
        self, projectid: int, scan: ProbeScan, left: list[OutboxRow], *, delivered: int
    ) -> None:
        now = self._clock()
        verdicts = judge(scan, left, delay=self._probe_delay)
        for row in verdicts.absent:
            await self._queues.outbox_set_state(
                [row.id], "pending", error="not found in VCC Live after a lost answer; resending",
                now=now, next_attempt_at=now + backoff(row.attempts, self._retry),
            )  # fmt: skip
        if verdicts.unverifiable:
            await self._unverified(projectid, scan, verdicts.unverifiable)
        if verdicts.waiting:
            self._next_pass[projectid] = next_pass_at(
                scan, verdicts.waiting, now=now, delay=self._probe_delay
            )
        else:
            self._next_pass.pop(projectid, None)
        self._log.info("outbox.resolved", projectid=projectid, delivered=delivered,
                       resend=len(verdicts.absent), unverifiable=len(verdicts.unverifiable),
                       waiting=len(verdicts.waiting))  # fmt: skip

    async def _unverified(self, projectid: int, scan: ProbeScan, rows: Sequence[OutboxRow]) -> None:
        """Rows no record could be told apart from stay ``unknown``: never resent blindly."""
        ids = [r.id for r in rows]
        where = f"project {projectid}, numberids {scan.after + 1} to {scan.position}"
        await self._queues.outbox_set_state(
            ids, "unknown", now=self._clock(),
            error=f"may be in VCC Live ({where}): a record there could not be told apart from "
            "it (value fields come back as valueids); check, then set delivered with its "
            "numberid, or pending",
        )  # fmt: skip
        self._unverifiable.update(ids)
        self._log.warning(
            "outbox.unverifiable", projectid=projectid, outbox_ids=ids, numberids=where,
            action="look for these rows' records in VCC Live; set state 'delivered' with the "
            "numberid if found, else 'pending' to send them again",
        )  # fmt: skip
