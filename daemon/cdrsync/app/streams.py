"""Which streams an account runs, per vendor: the composition the daemon starts.

- Acefone: one window stream over ``/v1/call/records``.
- Ozonetel: a live window stream (newest windows, the bulk budget first), a backlog stream of
  whole IST days that spends what the live stream leaves (until it reaches where the live stream
  began), and a lookup stream for the CallBacks confirmations that pushes queue.
- VCC Live: a day stream over ``/v2/cdrs/{y}/{m}/{d}``, a lookup stream (CDR by uuid after a
  disposition webhook, record details) and the outbox stream (Add record).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, cast

import structlog

from cdrsync.engine.plan import local_midnight_utc
from cdrsync.engine.window import (
    Clock,
    CycleHook,
    StreamHooks,
    WindowRange,
    WindowStream,
    WindowTuning,
    utcnow,
)
from cdrsync.errors import StoreError
from cdrsync.http.limiter import LowPriority, SlidingWindowLimiter
from cdrsync.vendors import lookup_source_factory, window_source_factory

if TYPE_CHECKING:
    from cdrsync.app.runtime import Runtime
    from cdrsync.config import AccountSettings

log = structlog.get_logger(__name__)
_HISTORY = re.compile(r"history:\.\.(\S+)")


class Stream(Protocol):
    """What the daemon runs: a named loop until the stop event."""

    name: str

    async def run(self) -> None:
        """Work until stopped."""


@dataclass(slots=True)
class AccountStreams:
    """An account's streams, the ones a push wakes, and the limiters they share."""

    streams: list[Stream] = field(default_factory=list)
    wake: list[Any] = field(default_factory=list)
    limiters: dict[str, SlidingWindowLimiter] = field(default_factory=dict)


LIST_GROUP = {"acefone": "list", "ozonetel": "bulk", "vcclive": "list"}
"""The rate-limit group of each vendor's list endpoint (what a backfill spends)."""


def stream_name(account: str, kind: str = "list") -> str:
    """The ``sync_state.stream`` key of an account's stream."""
    return f"{account}/{kind}"


def limiters_for(account: AccountSettings) -> dict[str, SlidingWindowLimiter]:
    """One sliding-window limiter per rate-limited endpoint group of the account, shared by
    every stream of the account (the vendor counts them together)."""
    return {
        name: SlidingWindowLimiter(rate.requests, rate.period_s, name=f"{account.name}:{name}")
        for name, rate in account.rate_limits.items()
    }


async def shared_limiters(rt: Runtime, account: AccountSettings) -> dict[str, SlidingWindowLimiter]:
    """The account's limiters, with its scarce budgets (at most a request a second on average,
    such as Ozonetel's 2 bulk reports a minute) shared through PostgreSQL.

    Stream locks are per stream, but a budget is per account: a backfill process, or a second
    daemon that took another stream of the account, spends the same vendor window. So every
    scarce grant is also taken in table ``rate_grants`` (``Queues.take_grant``: an advisory
    lock, a count on the database's clock, the insert) before its request goes out, and a
    process whose share is spent waits there for the other processes' grants to age out. A new
    process also seeds its limiter with the window's grants, for the budget metrics and for an
    outage. If the database cannot be reached the request still goes out under this process's
    limiter alone (``rate.grant_not_recorded``): during the outage another process on the
    account could spend the same window.
    """
    limiters = limiters_for(account)
    queues = rt.store.queues
    await queues.prune_grants(before=dt.datetime.now(dt.UTC) - dt.timedelta(days=1))
    for group, limiter in limiters.items():
        if not limiter.scarce:
            continue
        limiter.seed(await queues.grant_ages(account.name, group, within=limiter.window))
        limiter.gate = _database_gate(rt, account.name, group, limiter)
    return limiters


def _database_gate(
    rt: Runtime, account: str, group: str, limiter: SlidingWindowLimiter
) -> Callable[[], Awaitable[float]]:
    """``limiter``'s gate: the grant taken in ``rate_grants`` (0), or the seconds to wait."""

    async def gate() -> float:
        try:
            return await rt.store.queues.take_grant(
                account, group, limit=limiter.limit, window=limiter.window
            )
        except StoreError as exc:
            # A database outage must not stop the sync: the request goes out under this
            # process's limiter alone; only another process on the account could overspend.
            log.warning("rate.grant_not_recorded", account=account, group=group, error=str(exc))
            return 0.0

    return gate


async def build_account(
    rt: Runtime,
    account: AccountSettings,
    stop: asyncio.Event,
    *,
    clock: Clock = utcnow,
    on_cycle: CycleHook | None = None,
) -> AccountStreams:
    """Every stream of one account, sharing one set of limiters."""
    limiters = await shared_limiters(rt, account)
    built = AccountStreams(limiters=limiters)
    if account.vendor == "vcclive":
        built.streams += _vcclive(
            rt, account, stop, limiters=limiters, clock=clock, on_cycle=on_cycle
        )
    elif account.vendor == "ozonetel":
        built.streams += await _ozonetel(
            rt, account, stop, limiters=limiters, clock=clock, on_cycle=on_cycle
        )
    else:
        built.streams.append(window_stream(rt, account, stop, limiters, clock=clock,
                                           on_cycle=on_cycle))  # fmt: skip
    lookup = _lookup_stream(rt, account, stop, limiters=limiters, clock=clock, on_cycle=on_cycle)
    if lookup is not None:
        built.streams.append(lookup)
        built.wake.append(lookup)
    if account.webhook_secret is not None:
        await rt.store.ensure_stream(
            stream_name(account.name, "push"), vendor=account.vendor, account=account.name,
            kind="push",
        )  # fmt: skip
    return built


def window_stream(
    rt: Runtime,
    account: AccountSettings,
    stop: asyncio.Event,
    limiters: Mapping[str, Any],
    *,
    kind: str = "list",
    clock: Clock = utcnow,
    on_cycle: CycleHook | None = None,
    reads: WindowRange = WindowRange(),
    tuning: WindowTuning = WindowTuning(),
) -> WindowStream:
    """A window stream of the account."""
    name = stream_name(
        account.name, kind.split(":", maxsplit=1)[0] if kind.startswith("history") else kind
    )
    source = window_source_factory(account.vendor)(account, rt.transport, limiters, name)
    return WindowStream(
        name=name, account=account, source=source, store=rt.store, locks=rt.locks, stop=stop,
        clock=clock, kind=kind, reads=reads, tuning=tuning, hooks=StreamHooks(on_cycle=on_cycle),
    )  # fmt: skip


def _lookup_stream(
    rt: Runtime,
    account: AccountSettings,
    stop: asyncio.Event,
    *,
    limiters: Mapping[str, SlidingWindowLimiter],
    clock: Clock,
    on_cycle: CycleHook | None,
) -> Any:
    factory = lookup_source_factory(account.vendor)
    if factory is None:
        return None
    from cdrsync.engine.lookup import LookupStream

    name = stream_name(account.name, "lookup")
    source = factory(account, rt.transport, limiters, name)
    return LookupStream(
        name=name, account=account, source=source, store=rt.store, locks=rt.locks, stop=stop,
        clock=clock, on_cycle=on_cycle,
    )  # fmt: skip


def _vcclive(
    rt: Runtime,
    account: AccountSettings,
    stop: asyncio.Event,
    *,
    limiters: Mapping[str, SlidingWindowLimiter],
    clock: Clock,
    on_cycle: CycleHook | None,
) -> list[Stream]:
    from cdrsync.engine.day import DayStream
    from cdrsync.engine.outbox import OutboxStream
    from cdrsync.vendors.vcclive import VccDaySource, VccOutbox

    name = stream_name(account.name)
    days = DayStream(
        name=name, account=account, source=VccDaySource(account, rt.transport, limiters, name),
        store=rt.store, locks=rt.locks, stop=stop, clock=clock, on_cycle=on_cycle,
        verify_rows=int(account.option("verify_rows")),
    )  # fmt: skip
    outbox_name = stream_name(account.name, "outbox")
    outbox = OutboxStream(
        name=outbox_name, account=account,
        sink=VccOutbox(account, rt.transport, limiters, outbox_name),
        store=rt.store, locks=rt.locks, stop=stop, clock=clock,
    )  # fmt: skip
    return [days, outbox]


async def _ozonetel(
    rt: Runtime,
    account: AccountSettings,
    stop: asyncio.Event,
    *,
    limiters: Mapping[str, SlidingWindowLimiter],
    clock: Clock,
    on_cycle: CycleHook | None,
) -> list[Stream]:
    """The live stream starts at the IST midnight before its lookback (or where it stood); a
    backlog stream reads from ``start`` (clamped to the 15-day horizon) up to there, in whole
    days, with the bulk requests the live stream leaves."""
    from cdrsync.vendors.ozonetel import earliest_available

    zone = account.zone
    retention = account.option("retention")

    def earliest(now: dt.datetime) -> dt.datetime:
        return earliest_available(now, zone, retention)

    now = clock()
    configured = local_midnight_utc(account.start, zone)
    if configured < earliest(now):
        log.warning(
            "ozonetel.start_clamped", account=account.name, start=account.start.isoformat(),
            earliest=earliest(now).isoformat(),
            action="Ozonetel's bulk API serves the last "
            f"{retention.days} days only: calls before {earliest(now).date()} cannot be fetched",
        )  # fmt: skip
    live = await rt.store.load_state(stream_name(account.name))
    history = await rt.store.load_state(stream_name(account.name, "history"))
    if live is not None and live.watermark is not None:
        resume = live.watermark - account.lookback
        live_start = local_midnight_utc(resume.astimezone(zone).date(), zone)
    else:
        # A call that started shortly before midnight is listed only once it has ended: the
        # day of now - lookback - settle goes to the live stream, which re-reads its lookback,
        # not to the backlog, which reads each day once.
        recent = (now - account.lookback - account.settle).astimezone(zone).date()
        live_start = max(configured, local_midnight_utc(recent, zone))
    split = live_start
    if history is not None and (found := _HISTORY.fullmatch(history.kind)):
        split = dt.datetime.fromisoformat(found[1])
        if live is None or live.watermark is None:
            # An earlier start split the account here and its live stream never committed
            # (wrong credentials, say): the live stream starts at the split again, or the days
            # from the split to today's start would be read by neither stream.
            live_start = min(live_start, split)
    elif live is not None and live.watermark is not None:
        split = configured  # an earlier install read everything in the live stream
    streams: list[Stream] = [
        window_stream(
            rt,
            account,
            stop,
            limiters,
            clock=clock,
            on_cycle=on_cycle,
            reads=WindowRange(
                start=live_start,
                earliest=earliest,
                # After an outage the days behind the lookback are read a day a window: at
                # 2 bulk requests a minute, hourly windows would hold the live window back for
                # some 12 minutes per day missed.
                coarse=account.option("history_window"),
            ),
        )
    ]
    backlog_from = max(configured, earliest(now))
    done = history is not None and history.watermark is not None and history.watermark >= split
    if backlog_from < split and not done:
        slow = {**limiters, "bulk": cast(SlidingWindowLimiter, LowPriority(limiters["bulk"]))}
        kind = f"history:..{split.isoformat()}"
        # Registered before the live stream commits anything: after a crash the split point is
        # read back from here, so the days before it are never taken for done.
        await rt.store.ensure_stream(
            stream_name(account.name, "history"), vendor=account.vendor, account=account.name,
            kind=kind,
        )  # fmt: skip
        streams.append(
            window_stream(
                rt,
                account,
                stop,
                slow,
                kind=kind,
                clock=clock,
                on_cycle=on_cycle,
                reads=WindowRange(
                    start=configured,
                    until=split,
                    lookback=dt.timedelta(0),
                    window=account.option("history_window"),
                    earliest=earliest,
                ),
                tuning=WindowTuning(audit=False),
            )
        )
    return streams


def bounded_stream(
    rt: Runtime,
    account: AccountSettings,
    stop: asyncio.Event,
    *,
    kind: str,
    start: dt.datetime,
    until: dt.datetime,
    limiters: Mapping[str, SlidingWindowLimiter],
    low_priority: bool = False,
    clock: Clock = utcnow,
    on_progress: Any = None,
) -> Any:
    """A stream over ``[start, until)`` that ends there (``backfill``): windows read once, in
    order, nothing re-read. ``low_priority``: it spends only what the live streams leave."""
    group = LIST_GROUP.get(account.vendor, "list")
    if low_priority:
        limiters = {**limiters, group: cast(SlidingWindowLimiter, LowPriority(limiters[group]))}
    name = stream_name(account.name, kind)
    if account.vendor == "vcclive":
        from cdrsync.engine.day import DayStream
        from cdrsync.vendors.vcclive import VccDaySource

        zone = account.zone
        return DayStream(
            name=name, account=account, kind=kind, clock=clock, stop=stop, store=rt.store,
            locks=rt.locks, source=VccDaySource(account, rt.transport, limiters, name),
            start=start.astimezone(zone).date(), until=until.astimezone(zone).date(),
            lookback=dt.timedelta(0), verify_rows=int(account.option("verify_rows")),
        )  # fmt: skip
    source = window_source_factory(account.vendor)(account, rt.transport, limiters, name)
    earliest = None
    window = None
    if account.vendor == "ozonetel":
        window = account.option("history_window")  # whole days: every bulk request counts
        from cdrsync.vendors.ozonetel import earliest_available

        retention = account.option("retention")

        def earliest(now: dt.datetime) -> dt.datetime:
            return earliest_available(now, account.zone, retention)

    return WindowStream(
        name=name, account=account, source=source, store=rt.store, locks=rt.locks, stop=stop,
        clock=clock, kind=kind,
        reads=WindowRange(
            start=start, until=until, lookback=dt.timedelta(0), window=window, earliest=earliest
        ),
        tuning=WindowTuning(audit=False), hooks=StreamHooks(on_progress=on_progress),
    )  # fmt: skip
