"""The day stream: keeps one account's calls in step through a list partitioned by local day.

VCC Live lists CDRs per day of the account's time zone, by offset (``start``/``num``), in an
undocumented order, and registers a CDR minutes after its call ends. Each cycle plans days
(``dayplan.days_to_read``): open days (today and those inside the lookback) are read
incrementally from a per-day cursor, whose offset is trusted only after the rows just before it
come back unchanged; closing days (older than the lookback) are read whole from offset 0 once
more, checked against the vendor's ``totalCount``, and only then does the watermark move past
them, in the same transaction as their last rows. Every page's rows commit with the cursor that
covers them, so a crash resumes inside a day with no gap and no duplicate.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from cdrsync.engine.batchqueue import RowQueue, run_pipeline
from cdrsync.engine.dayplan import (
    DayTask,
    cap_days,
    closing_seen,
    cursor_entry,
    day_of,
    days_to_read,
    prune_cursor,
    resume_plan,
    verify_anchor,
)
from cdrsync.engine.loop import Owner, StreamLoop
from cdrsync.engine.plan import local_midnight_utc
from cdrsync.engine.window import Clock, CycleHook, utcnow
from cdrsync.errors import CdrsyncError
from cdrsync.model import CallRecord, Page, Reject, WriteResult

if TYPE_CHECKING:
    from cdrsync.config import AccountSettings
    from cdrsync.store.store import Store

log = structlog.get_logger(__name__)

Cursor = dict[str, Any]


class DaySource(Protocol):
    """A vendor list endpoint that returns one local day's calls by offset (VCC Live)."""

    vendor: str
    page_size: int

    async def fetch_day(self, day: dt.date, offset: int, num: int) -> Page:
        """Up to ``num`` calls of local ``day`` from row ``offset``; ``Page.total`` is the day's
        count, ``Page.keys`` every uuid in row order."""
        ...


@dataclass(slots=True)
class _Batch:
    records: Sequence[CallRecord]
    rejects: Sequence[Reject]
    cursor: Cursor
    """The whole cursor as it stands once these rows are stored."""
    advance_to: dt.datetime | None = None
    closes: dt.date | None = None

    def __len__(self) -> int:
        return len(self.records) + len(self.rejects)


@dataclass(slots=True)
class _Tally:
    days: int = 0
    closed: int = 0
    pages: int = 0
    rows: int = 0
    reorders: int = 0
    rereads: int = 0
    incomplete: dt.date | None = None
    written: WriteResult = field(default_factory=WriteResult)


@dataclass(slots=True)
class _Read:
    """What one pass over a day came to: its last page's batch (not yet queued), the distinct
    rows received and the day's final count."""

    last: _Batch
    received: int
    total: int


class DayStream(StreamLoop):
    """One account's day-partitioned list stream: ``run()`` until stopped, or ``cycle()``."""

    def __init__(
        self,
        *,
        name: str,
        account: AccountSettings,
        source: DaySource,
        store: Store,
        locks: Owner,
        stop: asyncio.Event,
        clock: Clock = utcnow,
        start: dt.date | None = None,
        until: dt.date | None = None,
        lookback: dt.timedelta | None = None,
        max_days_per_cycle: int = 31,
        max_rereads: int = 3,
        verify_rows: int = 3,
        write_rows: int = 5000,
        on_cycle: CycleHook | None = None,
        kind: str = "list",
    ) -> None:
        super().__init__(
            name=name, account=account, store=store, locks=locks, stop=stop, clock=clock,
            logger=log, failed_event="day.cycle_failed",
        )  # fmt: skip
        self.kind = kind
        self._zone = account.zone
        self._source = source
        self._start = start or account.start
        self._until = until
        self._lookback = account.lookback if lookback is None else lookback
        self._max_days = max_days_per_cycle
        self._max_rereads = max_rereads
        # An offset with no rows to check before it could silently skip inserted rows.
        self._verify_rows = max(1, verify_rows)
        self._write_rows = write_rows
        self._on_cycle = on_cycle
        self._cursor: Cursor = {}

    def wake(self) -> None:
        """Start the next cycle now if the loop is waiting for its poll interval (a push came)."""
        self._wake.set()

    # ------------------------------------------------------------------ the loop

    def _turn_starts(self) -> None:
        self._wake.clear()  # a push during the cycle is answered by the next one

    async def _rest(self, delay: float, failures: int) -> None:
        # After a failure a push does not cut the backoff short (account lock-outs).
        await self._sleep(delay, wakeable=failures == 0)

    # ------------------------------------------------------------------ one cycle

    async def cycle(self) -> bool:
        """One pass over the planned days. True when more closing days wait (catching up)."""
        began = time.monotonic()
        now = self._clock()
        state = await self._store.load_state(self.name)
        if state is None:
            state = await self._store.ensure_stream(
                self.name, vendor=self._account.vendor, account=self._account.name, kind=self.kind
            )
        planned = days_to_read(
            state.watermark, self._start, now, self._zone, self._lookback,
            settle=self._account.settle, until=self._until,
        )  # fmt: skip
        tasks, deferred = cap_days(planned, self._max_days)
        oldest = day_of(state.watermark, self._zone) if state.watermark else None
        self._cursor = prune_cursor(state.cursor, oldest)
        tally = _Tally(days=len(tasks))
        error = await self._pipeline(tasks, tally)
        state = await self._store.load_state(self.name) or state
        if self._until is not None and state.watermark is not None:
            self.finished = state.watermark >= local_midnight_utc(self._until, self._zone)
        if error is None:
            await self._store.record_cycle(self.name, now=self._clock())
        lag = (now - state.watermark).total_seconds() if state.watermark else None
        self._log.info(
            "day.cycle_done" if error is None else "day.cycle_partial",
            days=tally.days,
            closed=tally.closed,
            pages=tally.pages,
            rows=tally.rows,
            reorders=tally.reorders,
            rereads=tally.rereads,
            inserted=tally.written.inserted,
            updated=tally.written.updated,
            rejected=tally.written.rejected,
            watermark=state.watermark.isoformat() if state.watermark else None,
            lag_s=round(lag, 1) if lag is not None else None,
            ms=round((time.monotonic() - began) * 1000),
        )
        if self._on_cycle is not None:
            self._on_cycle(self.name, error is None, lag, tally.written)
        if error is not None:
            raise error
        return deferred > 0 and tally.incomplete is None

    async def _pipeline(self, tasks: Sequence[DayTask], tally: _Tally) -> CdrsyncError | None:
        """Read and write concurrently; on stop, no new request, but what was read commits."""
        queue: RowQueue[_Batch] = RowQueue(2 * self._write_rows)
        return await run_pipeline(
            self._read_all(tasks, queue, tally),
            self._write_all(queue, tally),
            stop=self._stop,
            name=self.name,
            on_stop=lambda: self._log.info("day.stopping", closed=tally.closed),
        )

    async def _write_all(self, queue: RowQueue[_Batch], tally: _Tally) -> CdrsyncError | None:
        """Commit batches strictly in order, coalescing those already waiting (up to
        ``write_rows`` rows): each batch's cursor covers exactly the rows committed up to it.
        The first failure ends it (``run_pipeline`` then stops the reader)."""
        ended = False
        while not ended and (batch := await queue.get()) is not None:
            batches = [batch]
            rows = len(batch)
            while (head := queue.head_rows()) is not None and rows + head <= self._write_rows:
                more = await queue.get()  # does not wait: the queue is not empty
                if more is None:
                    ended = True
                    break
                batches.append(more)
                rows += len(more)
            try:
                # The batch in hand commits even if we are being cancelled at shutdown.
                result = await asyncio.shield(self._write(batches))
            except CdrsyncError as exc:
                return exc
            tally.written += result
            for done in batches:
                if done.closes is not None:
                    tally.closed += 1
                    self._log.info("day.closed", day=done.closes.isoformat())
        return None

    async def _write(self, batches: Sequence[_Batch]) -> WriteResult:
        advances = [b.advance_to for b in batches if b.advance_to is not None]
        return await self._store.write_batch(
            self.name,
            [r for b in batches for r in b.records],
            [r for b in batches for r in b.rejects],
            now=self._clock(),
            advance_to=max(advances) if advances else None,
            cursor=batches[-1].cursor,
        )

    # ------------------------------------------------------------------ reading days

    async def _read_all(
        self, tasks: Sequence[DayTask], queue: RowQueue[_Batch], tally: _Tally
    ) -> None:
        # Fenced when this cycle runs under the stream's lock (always, in the daemon).
        fenced = self.name in self._locks.held
        try:
            for index, task in enumerate(tasks):
                if index and fenced and not await self._still_owned():
                    return
                if task.closes and tally.incomplete is not None:
                    continue  # days close strictly in order: none can close after a short one
                if task.closes:
                    await self._close_day(task, queue, tally)
                else:
                    read = await self._read_pass(task, queue, tally, closing=False, resume=True)
                    await queue.put(read.last)
        finally:
            await queue.put(None)

    async def _close_day(self, task: DayTask, queue: RowQueue[_Batch], tally: _Tally) -> None:
        """Read a closing day whole until the distinct uuids match the vendor's final count;
        then its last rows commit with the watermark past it. Else it stays open."""
        for attempt in range(1 + self._max_rereads):
            # Only the first attempt may continue a closing read a crash or stop interrupted.
            read = await self._read_pass(task, queue, tally, closing=True, resume=attempt == 0)
            if read.received == read.total:
                self._cursor.pop(task.key, None)
                read.last.cursor = dict(self._cursor)
                read.last.advance_to = task.end
                read.last.closes = task.day
                await queue.put(read.last)
                return
            # The rows are real: store them, but restart the next read from offset 0.
            self._cursor[task.key] = cursor_entry(0, (), read.total)
            read.last.cursor = dict(self._cursor)
            await queue.put(read.last)
            tally.rereads += 1
            self._log.warning(
                "day.drift",
                day=task.key,
                expected=read.total,
                received=read.received,
                attempt=attempt + 1,
            )
        tally.incomplete = task.day
        self._log.warning(
            "day.incomplete",
            day=task.key,
            rereads=self._max_rereads,
            action="the watermark stays before this day; it is read again next cycle",
        )

    async def _read_pass(
        self, task: DayTask, queue: RowQueue[_Batch], tally: _Tally, *, closing: bool, resume: bool
    ) -> _Read:
        """Page through ``task``'s day from its cursor (or offset 0), queueing every page but the
        last; each page's batch carries the cursor just past it."""
        entry = self._cursor.get(task.key) if resume else None
        seen = closing_seen(entry) if closing else 0
        start, anchor = resume_plan(entry, self._verify_rows) if seen is not None else (0, ())
        prior = (seen or 0) if anchor else 0
        keys: set[str] = set()
        keyless = repeated = 0
        # The uuids of the last rows before ``start``; None where a row had none (unnamed).
        tail: deque[str | None] = deque(maxlen=self._verify_rows)
        while True:
            page = await self._source.fetch_day(task.day, start, self._source.page_size)
            tally.pages += 1
            tally.rows += page.size
            fresh: Sequence[str] = page.keys
            if anchor:
                if not verify_anchor(anchor, page.keys):
                    # VCC Live's order is undocumented: rows were inserted or reordered before
                    # the cursor, so an offset no longer names the same rows. Read it all again.
                    tally.reorders += 1
                    self._log.info(
                        "day.reorder",
                        day=task.key,
                        offset=start + len(anchor),
                        expected=list(anchor),
                        found=list(page.keys[: len(anchor)]),
                    )
                    start, anchor, prior = 0, (), 0
                    continue
                fresh = page.keys[len(anchor) :]  # the anchor rows were counted before
                anchor = ()
            # As in ``plan.rows_received``: a uuid on two pages counts once (rows moved between
            # the requests), a uuid twice in one answer counts twice. One answer cannot have
            # been shifted, so that is VCC Live listing a row twice, and counting it once would
            # keep the day below its totalCount, never closing. (A fresh row repeating an
            # anchor row counts too: the anchor was counted before and is not in ``keys``.)
            distinct = set(fresh)
            repeated += len(fresh) - len(distinct)
            keys |= distinct
            keyless += page.size - len(page.keys)
            clean = page.size == len(page.keys)
            tail.extend(page.keys if clean else [None] * page.size)
            # Step by the rows received, not by ``num``: VCC Live seems to cap a page near 500
            # rows whatever is asked (undocumented), and says nothing else about its paging.
            start += page.size
            received = prior + len(keys) + keyless + repeated
            named = None if None in tail else [k for k in tail if k is not None]
            self._cursor[task.key] = cursor_entry(
                start, named, page.total, seen=received if closing else None
            )
            batch = _Batch(page.records, page.rejects, dict(self._cursor))
            # The count may grow while the day is read: the latest page's count decides.
            if page.size == 0 or start >= page.total:
                return _Read(batch, received, page.total)
            await queue.put(batch)
