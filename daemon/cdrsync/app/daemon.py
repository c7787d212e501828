"""The composition root: settings -> database, store, transport, limiters, streams -> one TaskGroup.

``run`` is the daemon; ``backfill`` runs one bounded stream to its end. Both open every resource
with an ``AsyncExitStack`` so that whatever was opened is closed, in reverse, however they end.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog
from aiohttp import web

from cdrsync import __version__
from cdrsync.app.members import BalancedLocks
from cdrsync.app.runtime import Runtime, runtime
from cdrsync.app.streams import limiters_for, shared_limiters, stream_name
from cdrsync.app.supervisor import Supervisor, enabled
from cdrsync.app.webhooks import Receiver
from cdrsync.engine.window import (
    Clock,
    CycleHook,
    ProgressHook,
    StreamHooks,
    WindowRange,
    WindowStream,
    utcnow,
)
from cdrsync.errors import CdrsyncError, ConfigError, StoreError
from cdrsync.http.limiter import SlidingWindowLimiter
from cdrsync.model import WriteResult
from cdrsync.ops.metrics import CONTENT_TYPE
from cdrsync.ops.observability import StatusBoard, sd_notify, watchdog_interval
from cdrsync.ops.status import stuck_streams
from cdrsync.vendors import window_source_factory

if TYPE_CHECKING:
    from cdrsync.config import AccountSettings, Settings

log = structlog.get_logger(__name__)


def build_stream(
    rt: Runtime,
    account: AccountSettings,
    stop: asyncio.Event,
    *,
    clock: Clock = utcnow,
    limiters: dict[str, SlidingWindowLimiter] | None = None,
    kind: str = "list",
    start: dt.datetime | None = None,
    until: dt.datetime | None = None,
    lookback: dt.timedelta | None = None,
    on_progress: ProgressHook | None = None,
    on_cycle: CycleHook | None = None,
) -> WindowStream:
    """The window stream of one account."""
    name = stream_name(account.name, kind)
    limiters = limiters or limiters_for(account)
    for group, limiter in limiters.items():
        rt.metrics.watch_limiter(account.name, group, limiter)
    source = window_source_factory(account.vendor)(account, rt.transport, limiters, name)
    return WindowStream(
        name=name,
        account=account,
        source=source,
        store=rt.store,
        locks=rt.locks,
        stop=stop,
        clock=clock,
        kind=kind,
        reads=WindowRange(start=start, until=until, lookback=lookback),
        hooks=StreamHooks(on_progress=on_progress, on_cycle=on_cycle),
    )


async def _health_server(
    rt: Runtime, stack: contextlib.AsyncExitStack, receiver: Receiver | None = None
) -> None:
    listen = rt.settings.daemon.http_listen
    if listen is None:
        return

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "version": __version__})

    started = dt.datetime.now(dt.UTC)

    async def readyz(request: web.Request) -> web.Response:
        try:
            states = await rt.store.states()
        except StoreError as exc:
            return web.json_response({"status": "unavailable", "database": str(exc)}, status=503)
        accounts = receiver.accounts if receiver is not None else {}
        stuck = stuck_streams(states, accounts, now=dt.datetime.now(dt.UTC), since=started)
        if stuck:
            return web.json_response(
                {"status": "stuck", "database": "ok", "stuck_streams": stuck}, status=503
            )
        return web.json_response({"status": "ready", "database": "ok", "stuck_streams": []})

    async def metrics(request: web.Request) -> web.Response:
        # Queue depths and rejects are read at scrape time; a database outage leaves the
        # last values.
        with contextlib.suppress(StoreError):
            rt.metrics.set_queues(await rt.store.queues.depths())
            rt.metrics.set_rejects(await rt.store.reject_counts())
        return web.Response(body=rt.metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    # A push bigger than this is refused with 413 before it is read whole.
    app = web.Application(client_max_size=1024 * 1024)
    if receiver is not None:
        receiver.routes(app)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    site = web.TCPSite(runner, listen[0], listen[1])
    try:
        await site.start()
    except OSError as exc:
        raise CdrsyncError(
            f"cannot listen on {listen[0]}:{listen[1]} (daemon.http_listen): {exc.strerror}; "
            "another process may hold the port: stop it, or set another daemon.http_listen"
        ) from None
    log.info("http.listening", host=listen[0], port=listen[1])


Reloader = Callable[[], "Settings"]
"""Reads the configuration file again (``cdrsync run``: on SIGHUP); raises ConfigError."""


async def run(
    settings: Settings,
    *,
    stop: asyncio.Event,
    clock: Clock = utcnow,
    reload: asyncio.Event | None = None,
    reloader: Reloader | None = None,
) -> None:
    """The daemon: every enabled account's streams until ``stop`` is set.

    When ``reload`` is set (SIGHUP), ``reloader`` reads the file again and the accounts are
    brought in line with it; a file with errors is refused and the running ones carry on."""
    async with contextlib.AsyncExitStack() as stack:
        rt = await stack.enter_async_context(runtime(settings, stop, balanced=True))
        if rt is None:
            return
        board = StatusBoard()
        stopping = False

        def cycled(stream: str, ok: bool, lag_s: float | None, written: WriteResult) -> None:
            rt.metrics.on_cycle(stream, ok, lag_s, written)
            line = board.update(stream, ok=ok, lag_s=lag_s, rows=written.written)
            if not stopping:  # a cycle ending while streams drain must not follow STOPPING=1
                sd_notify(f"STATUS={line}")

        grace = settings.daemon.shutdown_grace.total_seconds()
        sup = Supervisor(rt, clock=clock, on_cycle=cycled, grace=grace, on_forget=board.forget)
        if isinstance(rt.locks, BalancedLocks):
            # Registered first, so it runs last: the heartbeat goes on while streams drain,
            # then the row is deleted once their locks are given back.
            sup.watch(await _join(rt.locks, stack))
        stack.push_async_callback(sup.stop_all)
        accounts = enabled(settings)
        for account in accounts.values():
            # Spread over the first half poll: a thousand accounts must not stampede at once.
            await sup.start(account, starting=len(accounts))
        receiver = Receiver(sup.accounts, rt.store, wake=sup.wake, observe=rt.metrics.on_push)
        await _health_server(rt, stack, receiver)
        sd_notify("READY=1", f"STATUS=syncing {len(sup.stream_names)} streams")
        log.info("daemon.started", streams=sup.stream_names, version=__version__)
        watchdog = asyncio.create_task(_watchdog(watchdog_interval()), name="watchdog")
        backfills = asyncio.create_task(sup.watch_backfills(stop), name="backfills")
        try:
            await _serve(sup, settings, stop, reload or asyncio.Event(), reloader)
        finally:
            watchdog.cancel()
            backfills.cancel()
            stopping = True
            sd_notify("STOPPING=1")
            await sup.stop_all()
            log.info("daemon.stopped")


async def _join(locks: BalancedLocks, stack: contextlib.AsyncExitStack) -> asyncio.Task[None]:
    """Beat in the background from now on (the task); on the way out stop beating and leave."""
    quit_beating = asyncio.Event()
    beating = asyncio.create_task(locks.run(quit_beating), name="heartbeat")

    async def leave() -> None:
        quit_beating.set()
        # A crashed heartbeat already stopped the daemon (Supervisor.watch): leave anyway.
        await asyncio.gather(beating, return_exceptions=True)
        await locks.leave()
        log.info("instance.left", instance=locks.me.id)

    stack.push_async_callback(leave)
    log.info("instance.joined", instance=locks.me.id)
    return beating


async def _serve(
    sup: Supervisor,
    settings: Settings,
    stop: asyncio.Event,
    reload: asyncio.Event,
    reloader: Reloader | None,
) -> None:
    """Wait for the stop event, a stream's crash or the end of every stream; apply reloads."""
    current = settings
    while True:
        waits = {
            asyncio.ensure_future(stop.wait()),
            asyncio.ensure_future(reload.wait()),
            asyncio.ensure_future(sup.failure.wait()),
            asyncio.ensure_future(sup.wait_finished()),
        }
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waits:
                waiter.cancel()
        if sup.error is not None:
            raise sup.error
        if stop.is_set() or (not reload.is_set() and not sup.stream_names):
            return
        if reload.is_set():
            reload.clear()
            current = await _reload(sup, current, reloader)


async def _reload(sup: Supervisor, current: Settings, reloader: Reloader | None) -> Settings:
    """Apply a new configuration file; keep ``current`` when it has errors."""
    if reloader is None:
        log.warning("config.reload_unavailable", action="restart the daemon to apply changes")
        return current
    # MONOTONIC_USEC lets systemd (253+) match the reload it asked for with this one.
    sd_notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
    try:
        new = reloader()
    except ConfigError as exc:
        log.warning(
            "config.reload_refused", problems=exc.problems,
            action="the running configuration is kept; fix the file and send SIGHUP again",
        )  # fmt: skip
        sd_notify("READY=1")
        return current
    ignored = [
        name for name in ("database", "daemon") if getattr(new, name) != getattr(current, name)
    ]
    if ignored:
        log.warning(
            "config.reload_partial", sections=ignored,
            action="changes to [database] and [daemon] take effect at the next restart",
        )  # fmt: skip
        new = dataclasses.replace(new, database=current.database, daemon=current.daemon)
    try:
        changes = await sup.apply(new)
    except StoreError as exc:
        # Building the new accounts' streams needs PostgreSQL; apply() changed nothing yet.
        log.warning(
            "config.reload_failed", error=str(exc),
            action="the running configuration is kept, nothing of the new one was applied; "
            "send SIGHUP again once PostgreSQL is reachable",
        )  # fmt: skip
        sd_notify("READY=1", "STATUS=reload failed (database unreachable); running as before")
        return current
    # The same settings too: a refusal may have been fixed on the vendor's side.
    lifted = sup.lift_holds()
    log.info(
        "config.reloaded", added=list(changes.added), removed=list(changes.removed),
        restarted=list(changes.restarted), streams=sup.stream_names, holds_lifted=lifted,
    )  # fmt: skip
    sd_notify("READY=1", f"STATUS=reloaded; syncing {len(sup.stream_names)} streams")
    return new


async def _watchdog(interval: float | None) -> None:
    """Ping systemd's watchdog from the event loop itself: a loop that stops turning stops the
    pings, and systemd restarts the service (``WatchdogSec=``)."""
    if interval is None:
        return
    while True:
        sd_notify("WATCHDOG=1")
        await asyncio.sleep(interval)


@dataclass(frozen=True, slots=True)
class BackfillRun:
    """How ``backfill`` went: ``done`` (the range is complete), or ``handed`` to the running
    daemon that owns the account (``stream`` then shows its progress)."""

    stream: str
    done: bool
    handed: bool = False
    start: dt.datetime | None = None
    until: dt.datetime | None = None


async def backfill(
    settings: Settings,
    account_name: str,
    since: dt.date,
    until: dt.date | None,
    *,
    stop: asyncio.Event,
    on_progress: ProgressHook | None = None,
    clock: Clock = utcnow,
) -> BackfillRun:
    """Sync one account's calls that started in ``[since, until)`` (days in the account's zone).
    Resumable: the same range continues from its own watermark.

    Rate limits are per account: a second process beside a running daemon would double the
    request rate. So when a daemon owns the account, the backfill is handed to it (it runs it
    with the budget it already holds, live data first) and this returns at once."""
    from cdrsync.app.streams import bounded_stream
    from cdrsync.engine.plan import local_midnight_utc

    account = settings.account(account_name)
    zone = account.zone
    start = local_midnight_utc(since, zone)
    end = local_midnight_utc(until, zone) if until else clock() - account.settle
    kind = f"backfill:{since.isoformat()}..{until.isoformat() if until else 'latest'}"
    name = stream_name(account.name, kind)
    async with runtime(settings, stop, own_database=False) as rt:
        if rt is None:
            return BackfillRun(name, done=False)
        state = await rt.store.ensure_stream(
            name, vendor=account.vendor, account=account.name, kind=kind
        )
        if not await rt.locks.try_acquire(stream_name(account.name)):
            await rt.store.queues.request_backfill(name, account.name, start=start, until=end,
                                                   now=clock())  # fmt: skip
            log.info("backfill.handed", stream=name, account=account.name)
            done = state.watermark is not None and state.watermark >= end
            return BackfillRun(name, done=done, handed=True, start=start, until=end)
        limiters = await shared_limiters(rt, account)
        stream = bounded_stream(
            rt, account, stop, kind=kind, start=start, until=end, limiters=limiters,
            clock=clock, on_progress=on_progress,
        )  # fmt: skip
        await stream.run()
        return BackfillRun(name, done=stream.finished, start=start, until=end)


async def follow_backfill(
    settings: Settings,
    run: BackfillRun,
    *,
    stop: asyncio.Event,
    on_progress: ProgressHook | None = None,
    every: float = 1.0,
) -> bool:
    """Report a handed-over backfill's progress from its ``sync_state`` row until its range is
    complete (True) or ``stop`` is set (False)."""
    from cdrsync.engine.window import Progress

    async with runtime(settings, stop, own_database=False) as rt:
        if rt is None or run.start is None or run.until is None:
            return False
        while not stop.is_set():
            # The daemon marks the request finished: a day stream's watermark (VCC Live) stops
            # at a local midnight and never reaches an "up to now" end.
            if await rt.store.queues.backfill_done(run.stream, until=run.until):
                return True
            state = await rt.store.load_state(run.stream)
            if state is not None and state.watermark is not None and on_progress is not None:
                on_progress(
                    Progress(
                        run.stream,
                        state.cycles,
                        state.rows_inserted + state.rows_updated,
                        state.watermark,
                        run.start,
                        run.until,
                    )
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=every)
    return False
