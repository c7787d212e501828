"""The simulated Acefone records as compact arrays, and the draws that create them.

Per record the table keeps only numbers (about 40 bytes), in parallel ``array`` columns sorted
by (start, id), so a million records fit in tens of megabytes and a window is two bisects.
The order inside one start second follows the id because the vendor sorts by start time, then
id (ids are ObjectId-like: the insert instant, a per-process value, then ``serial``).
"""

from __future__ import annotations

import math
import random
from array import array
from bisect import bisect_left, bisect_right

from cdrsync.simulator.acefone_config import AcefoneSimConfig
from cdrsync.simulator.acefone_payload import (
    ANSWERED,
    CHANGE_NOTES,
    CHANGE_RECORDING,
    CHANGE_SHIFT,
    CHANGE_STATUS,
    LATE,
    MALFORMED_SHIFT,
)

_INF = math.inf
_MAX_TALK_S = 1500
_CHANGES_ANSWERED = (CHANGE_RECORDING, CHANGE_NOTES, CHANGE_STATUS)
_CHANGES_MISSED = (CHANGE_NOTES, CHANGE_STATUS)  # a missed call has no recording to add


# (flags, ring, dur, delay, change_delay): the random facts of one call, before it has a
# place in the table. A plain tuple because a million of them are drawn at start-up.
Draw = tuple[int, int, int, float, float]
# One table row: (start, dur, ring, vis, change_at, serial, flags), the order of the columns.
Row = tuple[int, int, int, float, float, int, int]


def draw_call(rng: random.Random, cfg: AcefoneSimConfig) -> Draw:
    """Draw one call: outcome (~70 % answered), ring and talk time, delays, change, breakage."""
    r = rng.random
    if r() < 0.7:
        flags = ANSWERED
        ring = 3 + int(r() * 20)
        talk = -150.0 * math.log(1.0 - r())  # exponential talk time, mean 2.5 minutes
        dur = ring + 1 + (int(talk) if talk < _MAX_TALK_S else _MAX_TALK_S)
    else:
        flags = 0
        ring = dur = 5 + int(r() * 40)
    if r() < cfg.late_fraction:
        flags |= LATE
        lo, hi = cfg.late_delay_s
    else:
        lo, hi = cfg.visible_delay_s
    delay = lo + (hi - lo) * r()
    change_delay = _INF
    if cfg.change_fraction and r() < cfg.change_fraction:
        kinds = _CHANGES_ANSWERED if flags & ANSWERED else _CHANGES_MISSED
        flags |= kinds[int(r() * len(kinds))] << CHANGE_SHIFT
        clo, chi = cfg.change_delay_s
        change_delay = clo + (chi - clo) * r()
    if cfg.malformed_fraction and r() < cfg.malformed_fraction:
        flags |= (1 + int(r() * 3)) << MALFORMED_SHIFT
    return flags, ring, dur, delay, change_delay


class RecordTable:
    """Parallel array columns of every record, sorted by (start, id)."""

    __slots__ = ("change_at", "durs", "flags", "max_lag", "rings", "serials", "starts", "vis")

    def __init__(self) -> None:
        self.starts = array("q")  # start, epoch seconds (the vendor's date + time)
        self.durs = array("l")  # call_duration, seconds
        self.rings = array("B")  # agent ring time, seconds
        self.vis = array("d")  # instant the record first appears in the API
        self.change_at = array("d")  # instant version 2 replaces version 1 (inf: never)
        self.serials = array("q")  # creation number: seeds the payload, ends the id
        self.flags = array("B")
        self.max_lag = 0.0  # bound on vis - start: older starts are surely visible

    def __len__(self) -> int:
        return len(self.starts)

    def build_backlog(self, cfg: AcefoneSimConfig, t0: float) -> None:
        """Fill the table with ``cfg.backlog`` calls that started in the days before ``t0``.

        Columns are drawn in creation order, then permuted once by a sort of packed integer
        keys, which keeps a million records to a few seconds and well under 100 MB.
        """
        rng = random.Random(cfg.seed)
        lo_s = math.ceil(t0 - cfg.backlog_days * 86400)
        hi_s = math.ceil(t0) - 1  # the last whole second before t0
        span = max(hi_s - lo_s, 0)
        raw = RecordTable()
        starts, durs, rings, vis_col, changes, flag_col = (
            raw.starts.append, raw.durs.append, raw.rings.append,
            raw.vis.append, raw.change_at.append, raw.flags.append,
        )  # fmt: skip
        uniform, max_lag = rng.random, 0.0
        # A few calls end just before t0, inside their processing delay, so that even a small
        # backlog has rows that appear after start-up (as a real account would mid-day).
        near_t0 = min(cfg.backlog, max(3, cfg.backlog // 200))
        for i in range(cfg.backlog):
            flags, ring, dur, delay, change_delay = draw_call(rng, cfg)
            if dur > span:  # the call must both start and end before t0
                dur = span
                ring = min(ring, dur)
            if i < near_t0:
                end = min(hi_s, math.floor(t0 - uniform() * delay))
                start = max(lo_s, end - dur)
                dur = end - start
                ring = min(ring, dur)
            else:
                start = lo_s + int(uniform() * (span - dur + 1))
            vis = start + dur + delay
            starts(start)
            durs(dur)
            rings(ring)
            vis_col(vis)
            changes(vis + change_delay)
            flag_col(flags)
            max_lag = max(max_lag, dur + delay)
        raw.max_lag = max_lag
        n = len(raw)
        shift = max(n.bit_length(), 1)
        keys = [
            (((s << 32) | (int(v) - s)) << shift) | i
            for i, (s, v) in enumerate(zip(raw.starts, raw.vis, strict=True))
        ]
        keys.sort()
        mask = (1 << shift) - 1
        order = array("q", (k & mask for k in keys))
        del keys
        self.starts = array("q", map(raw.starts.__getitem__, order))
        self.durs = array("l", map(raw.durs.__getitem__, order))
        self.rings = array("B", map(raw.rings.__getitem__, order))
        self.vis = array("d", map(raw.vis.__getitem__, order))
        self.change_at = array("d", map(raw.change_at.__getitem__, order))
        self.flags = array("B", map(raw.flags.__getitem__, order))
        self.serials = array("q", range(n))
        self.max_lag = raw.max_lag

    def insert(self, row: Row) -> None:
        """Insert a record at its (start, id) place; live calls land near the end: cheap."""
        start, dur, ring, vis, change_at, serial, flags = row
        starts, vis_col, serials = self.starts, self.vis, self.serials
        pos = bisect_right(starts, start)
        key = (int(vis), serial)
        while (
            pos > 0 and starts[pos - 1] == start and (int(vis_col[pos - 1]), serials[pos - 1]) > key
        ):
            pos -= 1
        starts.insert(pos, start)
        self.durs.insert(pos, dur)
        self.rings.insert(pos, ring)
        vis_col.insert(pos, vis)
        self.change_at.insert(pos, change_at)
        serials.insert(pos, serial)
        self.flags.insert(pos, flags)
        self.max_lag = max(self.max_lag, vis - start)

    def remove(self, doomed: set[int]) -> None:
        """Remove the records at the given positions (rare: stop_live in the past)."""
        for name in ("starts", "durs", "rings", "vis", "change_at", "serials", "flags"):
            column = getattr(self, name)
            kept = array(column.typecode, (v for i, v in enumerate(column) if i not in doomed))
            setattr(self, name, kept)

    def window(self, first: int, last: int, t: float) -> tuple[int, int, list[int]]:
        """Return (lo, hi, hidden) for starts in [first, last]: hidden = positions invisible at t.

        Only records that started less than ``max_lag`` before ``t`` can still be invisible,
        so the scan is limited to that short tail of the window; hidden is in descending order.
        """
        starts = self.starts
        lo = bisect_left(starts, first)
        hi = bisect_right(starts, last)
        tail = max(lo, bisect_right(starts, math.floor(t - self.max_lag)))
        vis = self.vis
        hidden = [i for i in range(hi - 1, tail - 1, -1) if vis[i] > t]
        return lo, hi, hidden

    def visible_positions(self, t: float) -> list[int]:
        """Positions of every record visible at ``t``, oldest first."""
        lo, hi, hidden = self.window(-(1 << 62), 1 << 62, t)
        if not hidden:
            return list(range(lo, hi))
        gone = set(hidden)
        return [i for i in range(lo, hi) if i not in gone]


def page_positions(lo: int, hi: int, hidden: list[int], offset: int, limit: int) -> list[int]:
    """Positions of one page, newest first: skip ``offset`` visible rows of [lo, hi), take limit.

    The first row is found without walking the skipped rows: start as if nothing were hidden
    and step down once per hidden position at or above the candidate (hidden is descending).
    """
    if offset >= hi - lo - len(hidden) or limit <= 0:
        return []
    pos = hi - 1 - offset
    for h in hidden:
        if h >= pos:
            pos -= 1
        else:
            break
    gone = set(hidden)
    rows: list[int] = []
    while pos >= lo and len(rows) < limit:
        if pos not in gone:
            rows.append(pos)
        pos -= 1
    return rows
