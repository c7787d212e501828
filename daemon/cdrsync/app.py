"""The composition root: settings -> database, store, transport, limiters, streams -> one TaskGroup.

``run`` is the daemon; ``backfill`` runs one bounded stream to its end. Both open every resource
with an ``AsyncExitStack`` so that whatever was opened is closed, in reverse, however they end.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog
from aiohttp import web

from cdrsync import __version__
from cdrsync.errors import CdrsyncError, StoreError, TransientError
from cdrsync.limiter import SlidingWindowLimiter
from cdrsync.metrics import CONTENT_TYPE, Metrics
from cdrsync.model import WriteResult
from cdrsync.observability import StatusBoard, sd_notify, watchdog_interval
from cdrsync.plan import retry_delay
from cdrsync.store import Store, StreamLocks
from cdrsync.streams import AccountStreams, Stream, build_account, limiters_for, stream_name
from cdrsync.sync import Clock, CycleHook, ProgressHook, WindowStream, utcnow
from cdrsync.transport import Transport
from cdrsync.vendors import window_source_factory
from cdrsync.webhooks import Receiver

if TYPE_CHECKING:
    from cdrsync.config import AccountSettings, Settings

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Runtime:
    """The open resources streams share."""

    settings: Settings
    store: Store
    transport: Transport
    locks: StreamLocks
    metrics: Metrics


async def database_dsn(
    settings: Settings, stack: contextlib.AsyncExitStack, *, own_database: bool = True
) -> str:
    """``database.dsn``, or a private embedded PostgreSQL under ``daemon.state_dir``.

    The daemon owns the embedded server and stops it on exit. A one-shot command
    (``own_database=False``: status, migrate, backfill) stops it only if it started it, so
    asking ``status`` beside a running daemon leaves the daemon's server alone."""
    if settings.database.dsn is not None:
        return settings.database.dsn.reveal()
    from cdrsync.embedded import EmbeddedPostgres

    server = EmbeddedPostgres()
    data_dir = settings.daemon.state_dir / "postgres"
    log.info("db.embedded_starting", data_dir=str(data_dir))
    dsn = await asyncio.to_thread(server.start, data_dir)
    if own_database or server.started:
        stack.push_async_callback(asyncio.to_thread, server.stop)
    return dsn


async def connect_store(settings: Settings, dsn: str, stop: asyncio.Event) -> Store | None:
    """Connect and migrate, retrying while PostgreSQL is unreachable; None if stopped first."""
    failures = 0
    while not stop.is_set():
        try:
            store = await Store.connect(
                dsn, schema=settings.database.schema, pool_size=settings.database.pool_size
            )
        except StoreError as exc:
            failures += 1
            wait = retry_delay(failures, cap=30.0)
            log.warning("db.unavailable", error=str(exc), retry_in_s=wait)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=wait)
            continue
        try:
            applied = await store.migrate()
        except BaseException:
            await store.close()
            raise
        if applied:
            log.info("db.migrated", applied=applied)
        return store
    return None


@contextlib.asynccontextmanager
async def runtime(
    settings: Settings, stop: asyncio.Event, *, own_database: bool = True
) -> AsyncIterator[Runtime | None]:
    """Open the database, the HTTP client and the lock session; None if stopped while waiting."""
    async with contextlib.AsyncExitStack() as stack:
        dsn = await database_dsn(settings, stack, own_database=own_database)
        store = await connect_store(settings, dsn, stop)
        if store is None:
            yield None
            return
        stack.push_async_callback(store.close)
        locks = store.lock_session()
        stack.push_async_callback(locks.close)
        metrics = Metrics()
        transport = await stack.enter_async_context(
            Transport.open(user_agent=f"cdrsync/{__version__}", observer=metrics)
        )
        yield Runtime(settings, store, transport, locks, metrics)


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
        start=start,
        until=until,
        lookback=lookback,
        on_progress=on_progress,
        on_cycle=on_cycle,
        kind=kind,
    )


async def _health_server(
    rt: Runtime, stack: contextlib.AsyncExitStack, receiver: Receiver | None = None
) -> None:
    listen = rt.settings.daemon.http_listen
    if listen is None:
        return

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "version": __version__})

    async def readyz(request: web.Request) -> web.Response:
        try:
            await rt.store.ping()
        except StoreError as exc:
            return web.json_response({"status": "unavailable", "database": str(exc)}, status=503)
        return web.json_response({"status": "ready", "database": "ok"})

    async def metrics(request: web.Request) -> web.Response:
        # Queue depths are read at scrape time; a database outage leaves the last values.
        with contextlib.suppress(StoreError):
            rt.metrics.set_queues(await rt.store.queues.depths())
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


async def _run_streams(streams: Sequence[Stream], stop: asyncio.Event, grace: float) -> None:
    """Run every stream as a named task; after ``stop``, give them ``grace`` seconds to commit
    the batch in hand, then cancel what is left."""
    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(s.run(), name=s.name) for s in streams]
        all_done = asyncio.ensure_future(asyncio.wait(tasks))
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait({all_done, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if not all_done.done():
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                log.warning("stream.cancelled_after_grace", stream=task.get_name())
                task.cancel()
        all_done.cancel()


async def run(settings: Settings, *, stop: asyncio.Event, clock: Clock = utcnow) -> None:
    """The daemon: every enabled account's streams until ``stop`` is set."""
    async with contextlib.AsyncExitStack() as stack:
        rt = await stack.enter_async_context(runtime(settings, stop))
        if rt is None:
            return
        board = StatusBoard()

        def cycled(stream: str, ok: bool, lag_s: float | None, written: WriteResult) -> None:
            rt.metrics.on_cycle(stream, ok, lag_s, written)
            line = board.update(stream, ok=ok, lag_s=lag_s, rows=written.written)
            sd_notify(f"STATUS={line}")

        built: dict[str, AccountStreams] = {}
        for account in settings.accounts:
            if account.enabled:
                built[account.name] = await build_account(
                    rt, account, stop, clock=clock, on_cycle=cycled
                )
        streams = [s for b in built.values() for s in b.streams]

        def wake(name: str) -> None:
            for stream in built[name].wake if name in built else ():
                stream.wake()

        receiver = Receiver(
            {a.name: a for a in settings.accounts if a.enabled}, rt.store, wake=wake,
            observe=rt.metrics.on_push,
        )  # fmt: skip
        await _health_server(rt, stack, receiver)
        sd_notify("READY=1", f"STATUS=syncing {len(streams)} streams")
        log.info("daemon.started", streams=[s.name for s in streams], version=__version__)
        watchdog = asyncio.create_task(_watchdog(watchdog_interval()), name="watchdog")
        try:
            await _run_streams(streams, stop, settings.daemon.shutdown_grace.total_seconds())
        finally:
            watchdog.cancel()
            sd_notify("STOPPING=1")
            log.info("daemon.stopped")


async def _watchdog(interval: float | None) -> None:
    """Ping systemd's watchdog from the event loop itself: a loop that stops turning stops the
    pings, and systemd restarts the service (``WatchdogSec=``)."""
    if interval is None:
        return
    while True:
        sd_notify("WATCHDOG=1")
        await asyncio.sleep(interval)


async def backfill(
    settings: Settings,
    account_name: str,
    since: dt.date,
    until: dt.date | None,
    *,
    stop: asyncio.Event,
    on_progress: ProgressHook | None = None,
    clock: Clock = utcnow,
) -> bool:
    """Sync one account's calls that started in ``[since, until)`` (days in the account's zone).
    Resumable: the same range continues from its own watermark. True when the range is done."""
    import zoneinfo

    from cdrsync.plan import local_midnight_utc

    account = settings.account(account_name)
    zone = zoneinfo.ZoneInfo(account.timezone)
    start = local_midnight_utc(since, zone)
    end = local_midnight_utc(until, zone) if until else clock() - account.settle
    async with runtime(settings, stop, own_database=False) as rt:
        if rt is None:
            return False
        # Rate limits are per account: a backfill beside a running daemon would double the
        # request rate, so it runs only while it owns the account's live stream too.
        live = stream_name(account.name)
        if not await rt.locks.try_acquire(live):
            raise TransientError(
                f"account {account.name} is being synced by a running cdrsync; a parallel backfill "
                "would exceed the vendor's rate limit. Stop the daemon (or wait), then run again."
            )
        kind = f"backfill:{since.isoformat()}..{until.isoformat() if until else 'latest'}"
        # A past range has nothing to re-read: its windows are read once, in order.
        stream = build_stream(
            rt,
            account,
            stop,
            clock=clock,
            kind=kind,
            start=start,
            until=end,
            lookback=dt.timedelta(0),
            on_progress=on_progress,
        )
        await stream.run()
        return stream.finished
