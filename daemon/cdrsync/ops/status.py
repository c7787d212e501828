"""What ``cdrsync status`` and ``cdrsync backfill`` print: a table per stream, and progress.

Pure formatting: the states and ``now`` come in, text comes out.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Mapping, Sequence
from typing import IO, TYPE_CHECKING, Any

import orjson

from cdrsync.engine.window import Progress
from cdrsync.errors import ConfigError
from cdrsync.model import StreamState

if TYPE_CHECKING:
    from cdrsync.config import AccountSettings, Settings
    from cdrsync.engine.balance import Member
    from cdrsync.store.members import Holder


def is_active(settings: Settings, account: str) -> bool:
    """Whether ``account`` is in the configuration and enabled: the streams of one removed or
    disabled are shown, but no longer judged (they would read as lagging for ever)."""
    try:
        return settings.account(account).enabled
    except ConfigError:
        return False


def lag_threshold(settings: Settings, account: str) -> dt.timedelta | None:
    """How far behind a stream may be before ``status`` calls it lagging."""
    try:
        acc = settings.account(account)
    except ConfigError:  # a stream of an account since removed from the file
        return None
    slack = acc.settle + acc.window + 3 * acc.poll_interval
    # VCC Live's day stream keeps the days inside the lookback open: its watermark is the start
    # of the oldest open day, normally a lookback and a day behind.
    return slack + acc.lookback if acc.vendor == "vcclive" else slack


STUCK_KINDS = ("list", "lookup", "outbox")


def stuck_after(account: AccountSettings) -> dt.timedelta:
    """How long a stream of ``account`` may go without a successful cycle before ``/readyz``
    calls it stuck: a quarter of an hour beyond three polls (a catching-up cycle is long)."""
    return 3 * account.poll_interval + dt.timedelta(minutes=15)


def stuck_streams(
    states: Sequence[StreamState],
    accounts: Mapping[str, AccountSettings],
    *,
    now: dt.datetime,
    since: dt.datetime,
) -> list[str]:
    """Streams of running ``accounts`` with no successful cycle for longer than allowed
    (counted from ``since``, the daemon's start, when they never had one). Pure."""
    stuck = []
    for state in states:
        account = accounts.get(state.account)
        if account is None or state.kind not in STUCK_KINDS:
            continue
        last = max(state.last_success_at or since, since)
        if now - last > stuck_after(account):
            stuck.append(state.stream)
    return stuck


def _ago(moment: dt.datetime | None, now: dt.datetime) -> str:
    if moment is None:
        return "never"
    seconds = int((now - moment).total_seconds())
    if seconds < 120:
        return f"{seconds}s ago"
    if seconds < 7200:
        return f"{seconds // 60}m ago"
    return f"{seconds // 3600}h ago"


Depths = Mapping[tuple[str, str, str], Mapping[str, int]]
"""``(vendor, account, "lookups" | "outbox") -> {state: rows}`` (``Queues.depths``)."""
_QUEUE_OF = {"lookup": "lookups", "outbox": "outbox"}
_WAITING = ("pending", "sending", "unknown")


def queue_of(state: StreamState, depths: Depths) -> dict[str, int] | None:
    """The rows of the queue a lookup or outbox stream works on, by state (None: no queue)."""
    queue = _QUEUE_OF.get(state.kind)
    if queue is None:
        return None
    return dict(depths.get((state.vendor, state.account, queue), {}))


def assess(
    state: StreamState,
    settings: Settings,
    now: dt.datetime,
    rows_today: int | None = None,
    depths: Depths | None = None,
) -> dict[str, Any]:
    """One stream's figures and health, as ``status --json`` prints them."""
    lag = (now - state.watermark).total_seconds() if state.watermark else None
    failing = state.last_error_at is not None and (
        state.last_success_at is None or state.last_error_at > state.last_success_at
    )
    threshold = lag_threshold(settings, state.account) if state.kind == "list" else None
    lagging = bool(threshold and (lag is None or lag > threshold.total_seconds()))
    return {
        "stream": state.stream,
        "vendor": state.vendor,
        "account": state.account,
        "kind": state.kind,
        "watermark": state.watermark.isoformat() if state.watermark else None,
        "lag_s": round(lag) if lag is not None else None,
        "last_success_at": state.last_success_at.isoformat() if state.last_success_at else None,
        "last_error": state.last_error if failing else None,
        "rows_today": rows_today,
        "queue": queue_of(state, depths or {}),
        "rows_inserted": state.rows_inserted,
        "rows_updated": state.rows_updated,
        "cycles": state.cycles,
        "health": (
            "inactive"
            if not is_active(settings, state.account)
            else "failing"
            if failing
            else "lagging"
            if lagging
            else "ok"
        ),
    }


def render_status(
    states: Sequence[StreamState],
    settings: Settings,
    *,
    now: dt.datetime,
    as_json: bool = False,
    today: Mapping[tuple[str, str], int] | None = None,
    depths: Depths | None = None,
    owners: Mapping[str, Holder] | None = None,
    instances: Sequence[Member] = (),
) -> tuple[str, bool]:
    """The status report and whether any stream is failing or lagging (exit code 1).

    ``today``: calls first stored since midnight UTC, per (vendor, account); ``depths``: the
    lookup and outbox queues (the QUEUE column: rows waiting, and of them in doubt);
    ``owners``: who holds each stream's lock now (the OWNER column); ``instances``: the live
    daemons on the database, listed below the table."""
    today = today or {}
    owners = owners or {}
    rows = [assess(s, settings, now, today.get((s.vendor, s.account), 0), depths) for s in states]
    for row in rows:
        row["owner"] = _owner_json(owners.get(row["stream"]))
    unhealthy = any(
        r["health"] in ("failing", "lagging") for r in rows if r["kind"] in ("list", *_QUEUE_OF)
    )
    if as_json:
        live = [_instance_json(m, now) for m in instances]
        data = {"streams": rows, "instances": live}
        return orjson.dumps(data, option=orjson.OPT_INDENT_2).decode(), unhealthy
    if not rows:
        return "no streams yet: run `cdrsync run` first", False
    header = (
        "STREAM", "VENDOR", "OWNER", "HEALTH", "WATERMARK", "LAG", "LAST SUCCESS", "TODAY", "ROWS",
        "QUEUE", "LAST ERROR",
    )  # fmt: skip
    table = [header]
    for row, state in zip(rows, states, strict=True):
        table.append(
            (
                row["stream"],
                row["vendor"],
                _owner_text(owners.get(row["stream"])),
                row["health"],
                state.watermark.strftime("%Y-%m-%d %H:%M:%SZ") if state.watermark else "-",
                f"{row['lag_s']}s" if row["lag_s"] is not None else "-",
                _ago(state.last_success_at, now),
                str(row["rows_today"]),
                f"{state.rows_inserted}+{state.rows_updated}",
                _queue_text(row["queue"]),
                (row["last_error"] or "")[:80],
            )
        )
    widths = [max(len(str(r[i])) for r in table) for i in range(len(header))]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in table
    ]
    if instances:
        lines += ["", f"{len(instances)} live instance(s):"]
        lines += [
            f"  {m.host} pid {m.pid}, started {m.started.strftime('%Y-%m-%d %H:%M:%SZ')}, "
            f"heartbeat {_ago(m.heartbeat, now)}, {m.owned} stream(s) held"
            for m in instances
        ]
    return "\n".join(lines), unhealthy


def _owner_text(holder: Holder | None) -> str:
    """``host:pid`` of the daemon holding the stream; "-" when nobody does."""
    if holder is None:
        return "-"
    if holder.id is None:
        return "another process"  # cdrsync backfill, or a daemon of an older version
    return f"{holder.host}:{holder.pid}"


def _owner_json(holder: Holder | None) -> dict[str, Any] | None:
    if holder is None:
        return None
    started = holder.started.isoformat() if holder.started else None
    return {"instance": holder.id, "host": holder.host, "pid": holder.pid, "started": started}


def _instance_json(member: Member, now: dt.datetime) -> dict[str, Any]:
    return {
        "instance": member.id,
        "host": member.host,
        "pid": member.pid,
        "started": member.started.isoformat(),
        "heartbeat_age_s": round((now - member.heartbeat).total_seconds(), 1),
        "streams_held": member.owned,
    }


def _queue_text(queue: Mapping[str, int] | None) -> str:
    """``"12 waiting"`` (``", 2 in doubt"`` for outbox rows whose answer was lost)."""
    if queue is None:
        return "-"
    waiting = sum(queue.get(state, 0) for state in _WAITING)
    text = f"{waiting} waiting"
    if queue.get("unknown"):
        text += f", {queue['unknown']} in doubt"
    if queue.get("failed") or queue.get("gave_up"):
        text += f", {queue.get('failed', 0) + queue.get('gave_up', 0)} given up"
    return text


class ProgressPrinter:
    """Backfill progress: a rewritten line on a terminal, a plain line a window otherwise."""

    def __init__(self, out: IO[str], *, clock: Any = time.monotonic) -> None:
        self._out = out
        self._tty = out.isatty()
        self._clock = clock
        self._began = clock()
        self._first: Progress | None = None
        self._dirty = False

    def line(self, progress: Progress) -> str:
        """The progress text: span done, rows, rate and time left."""
        if self._first is None:
            self._first = progress
        elapsed = max(self._clock() - self._began, 1e-6)
        rate = progress.rows_written / elapsed
        mark = progress.watermark.strftime("%Y-%m-%d %H:%M")
        windows = f"{progress.windows_done}"
        if progress.windows_total:
            windows += f"/{progress.windows_total}"
        text = (
            f"{progress.stream}: up to {mark} UTC, {windows} windows, "
            f"{progress.rows_written} rows, {rate:.0f} rows/s"
        )
        if progress.until is not None and progress.until > progress.start:
            span = (progress.until - progress.start).total_seconds()
            done = (progress.watermark - progress.start).total_seconds()
            moved = (progress.watermark - self._first.watermark).total_seconds()
            text += f", {min(100.0, 100 * done / span):.0f}%"
            if moved > 0:
                left = (progress.until - progress.watermark).total_seconds() * elapsed / moved
                text += f", ETA {dt.timedelta(seconds=round(left))}"
        return text

    def __call__(self, progress: Progress) -> None:
        text = self.line(progress)
        if self._tty:
            self._out.write("\r\x1b[2K" + text)
            self._dirty = True
        else:
            self._out.write(text + "\n")
        self._out.flush()

    def close(self) -> None:
        """End the progress line."""
        if self._dirty:
            self._out.write("\n")
            self._out.flush()
