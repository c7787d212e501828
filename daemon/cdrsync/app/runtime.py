"""The open resources that the streams share (``Runtime``), and how they are opened.

Below ``streams``, ``supervisor`` and ``daemon``, which all take a ``Runtime``: it imports none
of them, so the composition root has no import circle.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from cdrsync import __version__
from cdrsync.engine.plan import retry_delay
from cdrsync.errors import StoreError
from cdrsync.http.transport import Transport
from cdrsync.ops.metrics import Metrics
from cdrsync.store.lock import PROBE_EVERY_S
from cdrsync.store.pooler import check_session_pooling
from cdrsync.store.store import Store, StreamLocks

if TYPE_CHECKING:
    from cdrsync.config import Settings

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
    from cdrsync.store.embedded import EmbeddedPostgres

    server = EmbeddedPostgres()
    data_dir = settings.daemon.state_dir / "postgres"
    log.info("db.embedded_starting", data_dir=str(data_dir))
    dsn = await asyncio.to_thread(server.start, data_dir)
    if own_database or server.started:
        stack.push_async_callback(asyncio.to_thread, server.stop)
    return dsn


async def connect_store(
    settings: Settings,
    dsn: str,
    stop: asyncio.Event,
    *,
    patience: float | None = None,
    sessions: bool = False,
) -> Store | None:
    """Connect and migrate, retrying while PostgreSQL is unreachable; None if stopped first,
    or once ``patience`` seconds have gone by (one-shot commands: a monitoring check must fail,
    exit 75, not hang while the database is down). ``sessions`` (the daemon, whose stream
    locks are session advisory locks): refuse a pooler that hands sessions out per
    transaction, before anything runs through it."""
    failures = 0
    give_up = None if patience is None else time.monotonic() + patience
    while not stop.is_set():
        try:
            if sessions:
                await check_session_pooling(dsn, settings.database.schema)
            store = await Store.connect(
                dsn, schema=settings.database.schema, pool_size=settings.database.pool_size
            )
        except StoreError as exc:
            failures += 1
            wait = retry_delay(failures, cap=30.0)
            if give_up is not None:
                left = give_up - time.monotonic()
                if left <= 0:
                    log.warning(
                        "db.gave_up", error=str(exc), waited_s=patience,
                        action="check that PostgreSQL is up and database.dsn, then try again",
                    )  # fmt: skip
                    return None
                wait = min(wait, left)
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
    settings: Settings,
    stop: asyncio.Event,
    *,
    own_database: bool = True,
    patience: float | None = None,
    balanced: bool = False,
    sessions: bool = False,
) -> AsyncIterator[Runtime | None]:
    """Open the database, the HTTP client and the lock session; None if stopped while waiting
    (or after ``patience`` seconds without a database). ``balanced`` (the daemon): the lock
    session shares the streams out with the other daemons on the database; it and
    ``sessions`` (``doctor``) refuse a pooler that hands sessions out per transaction."""
    async with contextlib.AsyncExitStack() as stack:
        dsn = await database_dsn(settings, stack, own_database=own_database)
        store = await connect_store(
            settings, dsn, stop, patience=patience, sessions=balanced or sessions
        )
        if store is None:
            yield None
            return
        stack.push_async_callback(store.close)
        metrics = Metrics()
        locks = store.lock_session(probe_every=PROBE_EVERY_S)
        if balanced:
            from cdrsync.app.members import BalancedLocks, this_instance

            locks = BalancedLocks(
                dsn, me=this_instance(dt.datetime.now(dt.UTC)),
                timeout=settings.daemon.instance_timeout, metrics=metrics, schema=store.schema,
                probe_every=PROBE_EVERY_S,
            )  # fmt: skip
        stack.push_async_callback(locks.close)
        transport = await stack.enter_async_context(
            Transport.open(user_agent=f"cdrsync/{__version__}", observer=metrics)
        )
        yield Runtime(settings, store, transport, locks, metrics)
