"""What a window stream is given: which windows it reads, how hard, and whom it tells.

Split from ``engine.window`` (which re-exports every name) to keep that module readable.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cdrsync.model import WriteResult

if TYPE_CHECKING:
    from cdrsync.config import AccountSettings


@dataclass(frozen=True, slots=True)
class Progress:
    """Where a stream stands, reported after every committed window."""

    stream: str
    windows_done: int
    rows_written: int
    watermark: dt.datetime
    start: dt.datetime
    until: dt.datetime | None
    windows_total: int | None = None
    """Grid windows between start and until (a bounded stream), for "done / total"."""


ProgressHook = Callable[[Progress], None]
CycleHook = Callable[[str, bool, "float | None", WriteResult], None]
"""Called after every cycle with (stream, succeeded, watermark lag in seconds, what it wrote)."""


@dataclass(frozen=True, slots=True)
class WindowRange:
    """Which windows a stream reads. Every field left None takes the account's setting."""

    start: dt.datetime | None = None
    """The oldest instant read (default: the account's ``start``, local midnight)."""
    until: dt.datetime | None = None
    """A bounded stream (backfill, history) ends here; None follows now."""
    lookback: dt.timedelta | None = None
    """Re-read behind the watermark every cycle (default: the account's ``lookback``)."""
    window: dt.timedelta | None = None
    """The grid step (default: the account's ``window``)."""
    coarse: dt.timedelta | None = None
    """Whole cells of this size for what is older than the lookback (Ozonetel: a day)."""
    earliest: Callable[[dt.datetime], dt.datetime] | None = None
    """The oldest instant the vendor still serves, given now (Ozonetel: 15 days)."""


@dataclass(frozen=True, slots=True)
class WindowTuning:
    """How hard a stream reads: per-cycle bounds, concurrency and the audit."""

    max_windows_per_cycle: int = 48
    page_concurrency: int = 4
    max_rereads: int = 3
    audit_per_cycle: int | None = None
    """Closed windows re-counted per cycle (default: ``audit_budget``)."""
    write_rows: int = 5000
    audit: bool = True
    """Re-count closed windows at all (off for bounded streams)."""


@dataclass(frozen=True, slots=True)
class StreamHooks:
    """Callbacks of the daemon, the backfill command and the tests."""

    on_progress: ProgressHook | None = None
    on_cycle: CycleHook | None = None


def audit_budget(account: AccountSettings) -> int:
    """Windows to re-count per cycle: twice what keeps every window of the horizon checked once
    an interval (at least 4), so a backlog of due windows drains."""
    windows = account.audit_horizon / account.window
    cycles = max(1.0, account.audit_interval / account.poll_interval)
    return max(4, math.ceil(2 * windows / cycles))
