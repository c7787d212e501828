"""The window stream: keeps one account's calls in step through a vendor's list endpoint.

Each cycle plans windows (``plan.plan_windows``), reads each one completely (all pages, with the
vendor's count checked against the distinct keys received, re-read on drift, split when it is too
deep to page), and hands the rows to a writer that upserts them and advances the watermark in the
same transaction as the window's rows. Reading and writing overlap: the reader fetches the next
window while the writer commits the last one, and the writer commits windows strictly in order, so
the watermark never passes a window that is not committed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import time
import zoneinfo
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

import structlog

from cdrsync.engine.batchqueue import RowQueue, run_pipeline
from cdrsync.engine.loop import Owner, StreamLoop
from cdrsync.engine.plan import (
    audit_next_due,
    audit_span,
    check_complete,
    check_paged,
    count_is_per_page,
    local_midnight_utc,
    on_grid,
    pages_for,
    plan_windows,
    rows_received,
    split_window,
    too_deep,
)
from cdrsync.engine.stored import StoredHashes
from cdrsync.engine.window_settings import (
    CycleHook,
    Progress,
    ProgressHook,
    StreamHooks,
    WindowRange,
    WindowTuning,
    audit_budget,
)
from cdrsync.errors import CdrsyncError
from cdrsync.model import CallRecord, Page, Reject, StreamState, Window, WriteResult
from cdrsync.vendors import SkipsStored

if TYPE_CHECKING:
    from cdrsync.config import AccountSettings
    from cdrsync.store.store import Store, StreamLocks
    from cdrsync.vendors import WindowSource

log = structlog.get_logger(__name__)

__all__ = [
    "Clock",
    "CycleHook",
    "Progress",
    "ProgressHook",
    "StreamHooks",
    "WindowRange",
    "WindowStream",
    "WindowTuning",
    "audit_budget",
    "utcnow",
]

Clock = Callable[[], dt.datetime]
T = TypeVar("T")
FAR_FUTURE = dt.datetime.max.replace(tzinfo=dt.UTC)


def utcnow() -> dt.datetime:
    """The current time in UTC (the default clock)."""
    return dt.datetime.now(dt.UTC)


@dataclass(slots=True)
class _Batch:
    records: Sequence[CallRecord]
    rejects: Sequence[Reject]
    advance_to: dt.datetime | None
    window: Window | None = None
    """A whole grid window read completely: recorded with ``vendor_count`` for the audit."""
    vendor_count: int | None = None
    unchanged: int = 0
    """Records received identical to their stored list copies (``Page.unchanged``)."""

    def __len__(self) -> int:
        return len(self.records) + len(self.rejects)


@dataclass(slots=True)
class _Cycle:
    windows: int = 0
    windows_done: int = 0
    pages: int = 0
    rereads: int = 0
    splits: int = 0
    audited: int = 0
    recounted: int = 0
    reread_from: dt.datetime = FAR_FUTURE
    """Windows ending after this are read again by the next cycle (inside the lookback)."""
    incomplete: Window | None = None
    written: WriteResult = field(default_factory=WriteResult)
    skipped: int = 0
    """Of ``written.unchanged``: records left out before normalizing (bytes already stored)."""


AuditSpan = tuple[dt.datetime, dt.datetime, dt.datetime]


@dataclass(frozen=True, slots=True)
class _Recorded:
    """A marker in the read queue: record ``window`` (whose parts are done) with ``count``;
    with ``summed``, ``count`` is the rows closed before the split, and the window is recorded
    with the rows its parts closed (there was no window count to record)."""

    window: Window
    count: int
    summed: bool = False


class WindowStream(StreamLoop):
    """One account's list stream: ``run()`` until stopped, or once per ``cycle()`` in tests."""

    def __init__(
        self,
        *,
        name: str,
        account: AccountSettings,
        source: WindowSource,
        store: Store,
        locks: StreamLocks | Owner,
        stop: asyncio.Event,
        clock: Clock = utcnow,
        kind: str = "list",
        reads: WindowRange = WindowRange(),
        tuning: WindowTuning = WindowTuning(),
        hooks: StreamHooks = StreamHooks(),
    ) -> None:
        super().__init__(
            name=name, account=account, store=store, locks=locks, stop=stop, clock=clock,
            logger=log, failed_event="sync.cycle_failed",
        )  # fmt: skip
        self.kind = kind
        self._source = source
        zone = zoneinfo.ZoneInfo(account.timezone)
        self._start = reads.start or local_midnight_utc(account.start, zone)
        self._until = reads.until
        self._lookback = account.lookback if reads.lookback is None else reads.lookback
        self._step = reads.window or account.window
        # Whole-cell windows for what is older than the lookback (see plan_windows).
        self._coarse = reads.coarse
        # The oldest instant the vendor still serves, given now (Ozonetel: 15 days): windows
        # before it are not requested (the vendor answers them empty, not with an error).
        self._earliest = reads.earliest
        self._audit_on = tuning.audit
        self._max_windows = tuning.max_windows_per_cycle
        self._concurrency = tuning.page_concurrency
        self._max_rereads = tuning.max_rereads
        self._audit_per_cycle = tuning.audit_per_cycle or audit_budget(account)
        # Rows per transaction the writer aims at, and rows the reader may read ahead of it:
        # enough to coalesce small windows, bounded so memory does not grow with window size.
        self._write_rows = tuning.write_rows
        self._on_progress = hooks.on_progress
        self._on_cycle = hooks.on_cycle
        self._windows_done_total = 0
        self._rows_total = 0
        # No window can be due for the audit before this (None: ask); see audit_next_due.
        self._audit_next: dt.datetime | None = None
        # The state the last cycle left, as record_cycle returned it: only this process
        # writes the stream while it holds the lock, so the next cycle need not read it again.
        self._known: StreamState | None = None
        self._stored = StoredHashes(store, account.vendor, account.name)
        # Page 1 of the cycle's next window, asked for while this window's other pages are read
        # (``_prefetch_next``), and the stored hashes it was parsed with.
        self._next_window: Window | None = None
        self._prefetched: dict[Window, asyncio.Task[tuple[frozenset[bytes] | None, Page]]] = {}

    # ------------------------------------------------------------------ one cycle

    async def cycle(self) -> bool:
        """One pass over the planned windows. True when more windows wait (catching up)."""
        began = time.monotonic()
        now = self._clock()
        state, self._known = self._known or await self._store.load_state(self.name), None
        if state is None:
            state = await self._store.ensure_stream(
                self.name, vendor=self._account.vendor, account=self._account.name, kind=self.kind
            )
        planned = plan_windows(
            watermark=state.watermark,
            start=self._horizon(now, state.watermark),
            now=now,
            lookback=self._lookback,
            settle=self._account.settle,
            step=self._step,
            until=self._until,
            coarse=self._coarse,
        )
        windows = planned[: self._max_windows]
        tally = _Cycle(windows=len(windows), reread_from=now - self._lookback)
        audit = None
        quiet = self._audit_next is not None and now < self._audit_next
        # Catch up first, audit after; and no query while no window can be due.
        if self._audit_on and len(windows) == len(planned) and not quiet:
            audit = audit_span(
                watermark=state.watermark,
                now=now,
                horizon=self._account.audit_horizon,
                interval=self._account.audit_interval,
            )
        error = await self._pipeline(windows, tally, audit)
        if error is None:
            # One statement counts the cycle and reads where the writer left the watermark.
            state = self._known = await self._store.record_cycle(self.name, now=self._clock())
        else:
            state = await self._store.load_state(self.name) or state
        if self._until is not None and state.watermark is not None:
            self.finished = state.watermark >= self._until
        lag = (now - state.watermark).total_seconds() if state.watermark else None
        self._log.info(
            "sync.cycle_done" if error is None else "sync.cycle_partial",
            windows=tally.windows,
            windows_done=tally.windows_done,
            pages=tally.pages,
            rereads=tally.rereads,
            splits=tally.splits,
            audited=tally.audited,
            recounted=tally.recounted,
            inserted=tally.written.inserted,
            updated=tally.written.updated,
            unchanged=tally.written.unchanged,
            skipped=tally.skipped,
            rejected=tally.written.rejected,
            watermark=state.watermark.isoformat() if state.watermark else None,
            lag_s=round(lag, 1) if lag is not None else None,
            ms=round((time.monotonic() - began) * 1000),
        )
        if self._on_cycle is not None:
            self._on_cycle(self.name, error is None, lag, tally.written)
        if error is not None:
            raise error
        return len(planned) > len(windows) and tally.incomplete is None

    def _ownership_taken(self) -> None:
        """The lock was taken again: read the state afresh next cycle."""
        self._known = None

    def _horizon(self, now: dt.datetime, watermark: dt.datetime | None) -> dt.datetime:
        """The start of this cycle's plan: the stream's start, or the vendor's horizon when
        that is later (saying once what can no longer be fetched)."""
        if self._earliest is None:
            return self._start
        earliest = self._earliest(now)
        if earliest <= self._start:
            return self._start
        if watermark is None or watermark < earliest:
            self._log.warning(
                "sync.beyond_horizon",
                lost_from=(watermark or self._start).isoformat(),
                lost_until=earliest.isoformat(),
                action="the vendor no longer serves these calls; they cannot be fetched",
            )
        return earliest

    async def _pipeline(
        self, windows: Sequence[Window], tally: _Cycle, audit: AuditSpan | None
    ) -> CdrsyncError | None:
        # The rows in memory (queued, being written, and the window being read) stay within
        # three write targets, however many calls a window holds: a backfill's windows grow
        # with the account's call volume (issue 11: the peak RSS rose from 104 to 119 MB when
        # the same rows came in windows five times as dense). Three, not two: the room sparse
        # windows had before (one batch being written, two queued); two measured slower.
        queue: RowQueue[_Batch] = RowQueue(3 * self._write_rows, hold=True)

        def stopping() -> None:
            # SIGTERM: no new requests; what was already read is still committed.
            self._log.info("sync.stopping", windows_done=tally.windows_done)

        return await run_pipeline(
            self._read_all(windows, queue, tally, audit),
            self._write_all(queue, tally),
            stop=self._stop,
            name=self.name,
            on_stop=stopping,
        )

    async def _read_all(
        self,
        windows: Sequence[Window],
        queue: RowQueue[_Batch],
        tally: _Cycle,
        audit: AuditSpan | None,
    ) -> None:
        # Fenced when this cycle runs under the stream's lock (always, in the daemon).
        fenced = self.name in self._locks.held
        try:
            if isinstance(self._source, SkipsStored):
                await self._stored.read_cycle(windows)
            for index, window in enumerate(windows):
                if index and fenced and not await self._still_owned():
                    return
                self._next_window = windows[index + 1] if index + 1 < len(windows) else None
                if not await self._read_window(window, queue, tally):
                    return
            self._next_window = None
            if audit is not None:
                await self._audit(audit, queue, tally)
        finally:
            self._next_window = None
            await self._drop_prefetched()
            self._stored.clear()  # not held between cycles: a thousand accounts' sets add up
            await queue.put(None)

    def _prefetch_next(self) -> None:
        """Ask for page 1 of the cycle's next window now, while this window's other pages are
        read: the window's page 1 was the one request with nothing else in flight, and the
        vendor's answer to it (and the stored-hash read before it) left a gap per window (a
        re-read at 200 000 records spent a fifth of its time there, issue 11). Called once the
        queue has room for this window, so what is held stays within the bound (a window, the
        queue, and a page)."""
        window = self._next_window
        # Only a source that says so: under Ozonetel's bulk budget (2 a minute) an early
        # page 1 would only take a grant ahead of this window's own pages, and go stale.
        if window is None or window in self._prefetched:
            return
        if getattr(self._source, "prefetch_first_page", False) is not True:
            return
        self._prefetched[window] = asyncio.ensure_future(self._first_page(window))

    async def _first_page(self, window: Window) -> tuple[frozenset[bytes] | None, Page]:
        if not isinstance(self._source, SkipsStored):
            return None, await self._source.fetch_page(window, 1)
        known = await self._stored.of(window)
        self._source.remember(window, known)
        try:
            return known, await self._source.fetch_page(window, 1)
        finally:
            self._source.forget(window)

    async def _drop_prefetched(self) -> None:
        """Cancel a prefetch no window will read (the cycle stopped early); its failure, if
        any, was never an answer to anything."""
        tasks, self._prefetched = list(self._prefetched.values()), {}
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _audit(self, span: AuditSpan, queue: RowQueue[_Batch], tally: _Cycle) -> None:
        """Re-ask the vendor's count of closed windows; read again those whose count moved.

        This answers Acefone selecting calls by start time but listing a call only after it
        ends: a call longer than the lookback surfaces in a window the lookback no longer
        re-reads. One one-record request per window keeps it cheap."""
        since, until, checked_before = span
        due, least_checked = await self._store.windows_due(
            self.name, since=since, until=until, checked_before=checked_before,
            limit=self._audit_per_cycle,
        )  # fmt: skip
        interval = self._account.audit_interval
        self._audit_next = audit_next_due(
            due=len(due), least_checked=least_checked, asked_at=checked_before + interval,
            interval=interval,
        )  # fmt: skip
        for window, recorded in due:
            tally.audited += 1
            counted = await self._source.count(window)
            if counted == recorded:
                await self._store.window_checked(self.name, window, now=self._clock())
                continue
            tally.recounted += 1
            self._log.info(
                "sync.window_recount", window=str(window), recorded=recorded, counted=counted
            )
            if not await self._read_window(window, queue, tally):
                return

    async def _write_all(self, queue: RowQueue[_Batch], tally: _Cycle) -> CdrsyncError | None:
        """Commit batches in order. Windows already waiting in the queue are committed together
        while the transaction stays within ``write_rows`` rows: a small window then costs no
        transaction of its own. The first failure ends it (``run_pipeline`` then stops the
        reader): nothing after a batch that did not commit may commit."""
        ended = False
        while not ended and (batch := await queue.get()) is not None:
            batches = [batch]
            rows = len(batch.records)
            while (head := queue.head_rows()) is not None and rows + head <= self._write_rows:
                more = await queue.get()  # does not wait: the queue is not empty
                if more is None:
                    ended = True
                    break
                batches.append(more)
                rows += len(more.records)
            try:
                # The batch in hand commits even if we are being cancelled at shutdown.
                result = await asyncio.shield(self._write(batches))
            except CdrsyncError as exc:
                return exc
            await queue.done()
            skipped = sum(done.unchanged for done in batches)
            tally.written += result + WriteResult(unchanged=skipped)
            tally.skipped += skipped
            self._rows_total += result.written
            for done in batches:
                if done.advance_to is not None:
                    tally.windows_done += 1
                    self._windows_done_total += 1
                    self._report(done.advance_to)
        return None

    async def _write(self, batches: Sequence[_Batch]) -> WriteResult:
        advances = [b.advance_to for b in batches if b.advance_to is not None]
        return await self._store.write_batch(
            self.name,
            [r for b in batches for r in b.records],
            [r for b in batches for r in b.rejects],
            now=self._clock(),
            advance_to=max(advances) if advances else None,
            windows=[
                (b.window, b.vendor_count)
                for b in batches
                if b.window and b.vendor_count is not None
            ],
        )

    def _report(self, watermark: dt.datetime) -> None:
        if self._on_progress is not None:
            self._on_progress(
                Progress(
                    stream=self.name,
                    windows_done=self._windows_done_total,
                    rows_written=self._rows_total,
                    watermark=watermark,
                    start=self._start,
                    until=self._until,
                    windows_total=self._windows_total(),
                )
            )

    def _windows_total(self) -> int | None:
        if self._until is None:
            return None
        return math.ceil((self._until - self._start) / self._step)

    # ------------------------------------------------------------------ one window

    async def _read_window(self, window: Window, queue: RowQueue[_Batch], tally: _Cycle) -> bool:
        """Read ``window`` until complete (splitting it when too deep). False if it stayed short.

        A whole grid window is recorded with the vendor's count once read, for the audit; a
        grid window that had to be split is recorded, with the count that made it split, after
        all its parts are complete. When the count is per page (Acefone, ``count_mode`` page)
        a split has no window count: the window is recorded with the rows its parts closed,
        so the audit still re-counts it (it may then re-read it each audit interval: a count
        read in max_page_depth pages falls short of it)."""
        pending: list[Window | _Recorded] = [window]
        closed = 0  # rows of the parts closed so far
        while pending:
            part = pending.pop(0)
            if isinstance(part, _Recorded):
                count = closed - part.count if part.summed else part.count
                await queue.put(_Batch((), (), None, part.window, count))
                continue
            verdict, total = await self._read_skipping_stored(part, queue, tally)
            if verdict == "split":
                tally.splits += 1
                after: list[Window | _Recorded] = [*split_window(part)]
                if self._on_grid(part):
                    marker = _Recorded(part, total) if total is not None else None
                    after.append(marker or _Recorded(part, closed, summed=True))
                pending[0:0] = after
            elif verdict == "complete":
                closed += total or 0
            elif verdict == "incomplete":
                tally.incomplete = part
                return False
        return True

    def _on_grid(self, window: Window) -> bool:
        return on_grid(window, self._step, self._start)

    async def _read_skipping_stored(
        self, window: Window, queue: RowQueue[_Batch], tally: _Cycle
    ) -> tuple[str, int | None]:
        """``_read_part``; a source that can skip records identical to their stored list copies
        (Acefone) is told their hashes first (read once per cycle, ``StoredHashes``), so an
        unchanged re-read normalizes nothing."""
        prefetched = self._prefetched.pop(window, None)
        first = await prefetched if prefetched is not None else None
        if not isinstance(self._source, SkipsStored):
            return await self._read_part(window, queue, tally, first)
        known = first[0] if first is not None and first[0] is not None else None
        self._source.remember(window, known if known is not None else await self._stored.of(window))
        try:
            return await self._read_part(window, queue, tally, first)
        finally:
            self._source.forget(window)

    async def _read_part(
        self,
        window: Window,
        queue: RowQueue[_Batch],
        tally: _Cycle,
        prefetched: tuple[frozenset[bytes] | None, Page] | None = None,
    ) -> tuple[str, int | None]:
        reread_later = window.end > tally.reread_from
        for attempt in range(1 + self._max_rereads):
            if attempt == 0 and prefetched is not None:
                first = prefetched[1]
            else:
                first = await self._source.fetch_page(window, 1)
            tally.pages += 1
            # Read after the first page: the source may have found the vendor's real page cap.
            page_size = self._source.page_size
            if too_deep(first.total, page_size, self._account.max_page_depth, window):
                return "split", first.total
            await queue.wait_room(first.total)
            if pages_for(first.total, page_size) > 1:  # else nothing to overlap it with
                self._prefetch_next()
            pages = await self._read_pages(window, first)
            tally.pages += len(pages) - 1
            received = rows_received([(p.size, p.keys) for p in pages])
            if count_is_per_page([(p.total, p.size) for p in pages], received):
                verdict = check_paged([p.size for p in pages], received, page_size)
                if not verdict.closes and window.seconds > 1:
                    return "split", None  # full pages down to max_page_depth: too deep
            else:
                totals = [p.total for p in pages]
                verdict = check_complete(totals, received, reread_later=reread_later)
            records = [r for p in pages for r in p.records]
            rejects = [r for p in pages for r in p.rejects]
            unchanged = sum(p.unchanged for p in pages)
            if verdict.closes:
                # A provisional close records what was received: if the vendor later counts
                # more, the audit reads the window again.
                grid = self._on_grid(window)
                count = verdict.expected if verdict.exact else verdict.received
                batch = _Batch(
                    records, rejects, window.end, window if grid else None, count, unchanged
                )
                await queue.put(batch)
                if not verdict.exact:
                    self._log.info(
                        "sync.window_provisional",
                        window=str(window),
                        expected=verdict.expected,
                        received=verdict.received,
                    )
                return "complete", count
            # Rows of a short read are real rows: keep them, but do not close the window.
            await queue.put(_Batch(records, rejects, None, unchanged=unchanged))
            tally.rereads += 1
            self._log.warning(
                "sync.window_drift",
                window=str(window),
                expected=verdict.expected,
                received=verdict.received,
                reason=verdict.reason,
                attempt=attempt + 1,
            )
        self._log.warning(
            "sync.window_incomplete",
            window=str(window),
            rereads=self._max_rereads,
            action="the watermark stays before this window; it is read again next cycle",
        )
        return "incomplete", 0

    async def _read_pages(self, window: Window, first: Page) -> list[Page]:
        """Page 1 and the pages its count calls for; while rows keep appearing (the count grows
        and the last page came back full), the pages they pushed the tail onto, too."""
        page_size = self._source.page_size
        pages = [first]
        # A window that can no longer be split (one second) is read to max_page_depth pages at
        # most: a vendor's absurd count (a million calls in a second) must not turn into
        # thousands of requests; the window then stays short, and is read again next cycle.
        depth = self._account.max_page_depth
        if pages_for(first.total, page_size) > depth:
            self._log.warning(
                "sync.count_implausible", window=str(window), count=first.total, pages=depth,
                action="the vendor's count cannot be read in max_page_depth pages; reading "
                "that many and retrying the window next cycle",
            )  # fmt: skip
        for _ in range(1 + self._max_rereads):
            wanted = min(pages_for(max(p.total for p in pages), page_size), depth)
            if len(pages) >= wanted or (len(pages) > 1 and pages[-1].size < page_size):
                break
            pages += await self._fetch_pages(window, range(len(pages) + 1, wanted + 1))
        # Acefone's count may be the rows of one page, not the window's ("Number of records
        # that are fetched"): unless some page counted more rows than it holds (a total), keep
        # paging while pages come back full. A window of exactly one full page then costs one
        # more (empty) page.
        while (
            pages[-1].size >= page_size
            and len(pages) < depth
            and not any(p.total > p.size for p in pages)
        ):
            pages.append(await self._source.fetch_page(window, len(pages) + 1))
        return pages

    async def _fetch_pages(self, window: Window, numbers: range) -> list[Page]:
        if not numbers:
            return []
        gate = asyncio.Semaphore(self._concurrency)

        async def one(number: int) -> Page:
            async with gate:
                return await self._source.fetch_page(window, number)

        return await gather_or_first_error([one(n) for n in numbers])


async def gather_or_first_error(awaitables: Sequence[Awaitable[T]]) -> list[T]:
    """Run all; on the first failure cancel the rest and raise that failure (not a group)."""
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
