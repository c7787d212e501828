"""The daemon's running accounts, and how a new configuration is applied (SIGHUP).

Each enabled account runs its streams (``streams.build_account``) under a stop event of its own,
so one account can be stopped, started or restarted while the others carry on: on reload an
added account starts, a removed (or disabled) one stops, and one whose settings changed is
stopped and started again. Stopping an account works like stopping the daemon: no new requests,
the batch in hand commits, and what is left after the grace period is cancelled.

A stream task that dies of anything but cancellation is a bug: ``failure`` is set, and the
daemon stops loudly with it (systemd restarts the service).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog

from cdrsync.app.members import BalancedLocks
from cdrsync.app.streams import AccountStreams, bounded_stream, build_account
from cdrsync.engine.lookup import LookupStream
from cdrsync.engine.loop import StreamLoop
from cdrsync.engine.spread import first_delay
from cdrsync.errors import StoreError
from cdrsync.vendors import lift_holds

if TYPE_CHECKING:
    from cdrsync.app.runtime import Runtime
    from cdrsync.config import AccountSettings, Settings
    from cdrsync.engine.window import Clock, CycleHook

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class _Running:
    account: AccountSettings
    stop: asyncio.Event
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    wake: list[Any] = field(default_factory=list)
    limiters: dict[str, Any] = field(default_factory=dict)
    backfills: set[str] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class Changes:
    """What a reload did, by account name."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    restarted: tuple[str, ...] = ()


def plan_changes(
    running: Mapping[str, AccountSettings], wanted: Mapping[str, AccountSettings]
) -> Changes:
    """Which accounts to start, stop and restart to go from ``running`` to ``wanted``
    (enabled accounts by name). Pure."""
    return Changes(
        added=tuple(sorted(wanted.keys() - running.keys())),
        removed=tuple(sorted(running.keys() - wanted.keys())),
        restarted=tuple(
            sorted(n for n in running.keys() & wanted.keys() if running[n] != wanted[n])
        ),
    )


def enabled(settings: Settings) -> dict[str, AccountSettings]:
    """The accounts of ``settings`` that should run, by name."""
    return {a.name: a for a in settings.accounts if a.enabled}


class Supervisor:
    """Starts, stops and restarts accounts' streams; ``accounts`` is what runs right now."""

    def __init__(
        self, rt: Runtime, *, clock: Clock, on_cycle: CycleHook | None, grace: float,
        on_forget: Callable[[list[str]], None] | None = None,
    ) -> None:  # fmt: skip
        """``on_forget(streams)``: the streams of an account a reload removed have stopped."""
        self._rt = rt
        self._on_forget = on_forget
        self._clock = clock
        self._on_cycle = on_cycle
        self._grace = grace
        self._running: dict[str, _Running] = {}
        self.accounts: dict[str, AccountSettings] = {}
        """Running accounts by name: the push receiver reads it on every request."""
        self.failure = asyncio.Event()
        self.error: BaseException | None = None

    @property
    def stream_names(self) -> list[str]:
        """The names of every running stream task."""
        return [t.get_name() for r in self._running.values() for t in r.tasks if not t.done()]

    def wake(self, name: str) -> None:
        """A push arrived for account ``name``: its lookup stream looks at its queue now."""
        running = self._running.get(name)
        for stream in running.wake if running else ():
            stream.wake()

    async def start(self, account: AccountSettings, *, starting: int = 1) -> None:
        """Build and start every stream of ``account``; ``starting`` accounts start together,
        so first cycles are spread (``engine.spread``)."""
        self._launch(account, *await self._build(account), starting=starting)

    async def _build(self, account: AccountSettings) -> tuple[asyncio.Event, AccountStreams]:
        """``account``'s streams, not started: everything that needs the database (its
        limiters' grants, its stream rows) is done here, so starting them needs none."""
        stop = asyncio.Event()
        built = await build_account(
            self._rt, account, stop, clock=self._clock, on_cycle=self._on_cycle
        )
        return stop, built

    def _launch(
        self, account: AccountSettings, stop: asyncio.Event, built: AccountStreams, *,
        starting: int,
    ) -> None:  # fmt: skip
        for group, limiter in built.limiters.items():
            self._rt.metrics.watch_limiter(account.name, group, limiter)
        running = _Running(account, stop, wake=list(built.wake), limiters=built.limiters)
        if isinstance(self._rt.locks, BalancedLocks):
            self._rt.locks.offer(stream.name for stream in built.streams)
        poll = account.poll_interval.total_seconds()
        for stream in built.streams:
            if isinstance(stream, StreamLoop):
                stream.first_delay_s = first_delay(stream.name, starting=starting, poll=poll)
            self._spawn(running, stream.run(), stream.name)
        self._running[account.name] = running
        self.accounts[account.name] = account

    def _spawn(self, running: _Running, work: Any, name: str) -> None:
        task: asyncio.Task[None] = asyncio.create_task(work, name=name)
        task.add_done_callback(self._died)
        running.tasks.append(task)

    def lift_holds(self) -> list[str]:
        """A reload: lift the holds a vendor's refusal put on running accounts (Ozonetel's
        generateToken, VCC Live's lookup permission), the same settings too, since the operator
        may have fixed the cause on the vendor's side; the accounts that had one."""
        lifted = set(lift_holds(self.accounts.values()))
        for name, running in self._running.items():
            for stream in running.wake:
                if isinstance(stream, LookupStream) and stream.lift_holds():
                    lifted.add(name)
                    stream.wake()  # now, not a poll interval later
        return sorted(lifted)

    async def adopt_backfills(self) -> int:
        """Start the backfills ``cdrsync backfill`` handed over for running accounts: bounded
        streams that spend the account's own limiters, after its live streams."""
        started = 0
        requests = await self._rt.store.queues.open_backfills(list(self._running))
        for stream, name, start, until in requests:
            running = self._running.get(name)
            if running is None or stream in running.backfills:
                continue
            kind = stream.split("/", 1)[1]
            bounded = bounded_stream(
                self._rt, running.account, running.stop, kind=kind, start=start, until=until,
                limiters=running.limiters, low_priority=True, clock=self._clock,
            )  # fmt: skip
            running.backfills.add(stream)
            self._spawn(running, self._backfill(running, bounded, until), stream)
            log.info("backfill.adopted", stream=stream, start=start.isoformat(),
                     until=until.isoformat())  # fmt: skip
            started += 1
        return started

    async def _backfill(self, running: _Running, stream: Any, until: dt.datetime) -> None:
        await stream.run()
        if not stream.finished:
            return
        # A database hiccup here must not end the daemon: the range is read (the stream's
        # watermark says so); marking it finished is retried until it lands or we stop.
        while True:
            try:
                await self._rt.store.queues.backfill_finished(
                    stream.name, now=self._clock(), until=until
                )
            except StoreError as exc:
                log.warning("backfill.not_marked_finished", stream=stream.name, error=str(exc),
                            action="retrying; the range itself is complete")  # fmt: skip
                await asyncio.sleep(5.0)
                continue
            log.info("backfill.finished", stream=stream.name)
            # Asked again with a later end meanwhile, it is adopted again (from its watermark).
            running.backfills.discard(stream.name)
            return

    def watch(self, task: asyncio.Task[None]) -> None:
        """A task the daemon cannot do without (the heartbeat): its crash stops the daemon
        loudly, like a stream's."""
        task.add_done_callback(self._died)

    def _died(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        self.error = task.exception()
        log.error("stream.crashed", stream=task.get_name(), error=repr(self.error))
        self.failure.set()

    async def stop(self, name: str, *, forget: bool = True) -> None:
        """Stop account ``name``'s streams: the batch in hand commits, the rest is cancelled
        after the grace period; then their stream locks are given back, so another process
        (or ``cdrsync backfill``) may take the account over.

        ``forget=False`` (a restart, the daemon's shutdown) leaves the account where the push
        receiver finds it: pushes arriving meanwhile are still stored (a vendor does not send a
        push again after a 404), only the streams they would wake are gone."""
        running = self._running.pop(name, None)
        if forget:
            self.accounts.pop(name, None)
        if running is None:
            return
        if forget and isinstance(self._rt.locks, BalancedLocks):
            self._rt.locks.withdraw(task.get_name() for task in running.tasks)
        running.stop.set()
        if running.tasks:
            _, pending = await asyncio.wait(running.tasks, timeout=self._grace)
            for task in pending:
                log.warning("stream.cancelled_after_grace", stream=task.get_name())
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*running.tasks, return_exceptions=True)
        if forget:
            streams = [t.get_name() for t in running.tasks]
            self._rt.metrics.forget(name, streams, list(running.limiters))
            if self._on_forget is not None:
                self._on_forget(streams)
        for task in running.tasks:
            try:
                await self._rt.locks.release(task.get_name())
            except StoreError:
                break  # the lock session is dropped: every lock it held is gone with it

    async def stop_all(self) -> None:
        """Stop every account at once (shutdown); pushes are taken until the server closes."""
        await asyncio.gather(*(self.stop(name, forget=False) for name in list(self._running)))

    async def apply(self, settings: Settings) -> Changes:
        """Make the running accounts those of ``settings``, all or nothing: every account to
        (re)start is built first (the only step that needs the database), so a ``StoreError``
        (PostgreSQL unreachable) leaves every account running as it was. Built early, a
        restarted account's limiters miss the grants its old streams take until they stop:
        the database gate (``rate_grants``) still counts them before each scarce request."""
        wanted = enabled(settings)
        changes = plan_changes(self.accounts, wanted)
        starting = (*changes.restarted, *changes.added)
        built = {name: await self._build(wanted[name]) for name in starting}
        for name in changes.removed:
            await self.stop(name)
        for name in changes.restarted:
            await self.stop(name, forget=False)
        for name in starting:
            self._launch(wanted[name], *built[name], starting=len(starting))
        return changes

    async def watch_backfills(self, stop: asyncio.Event, every: float = 2.0) -> None:
        """Adopt handed-over backfills until ``stop`` (a database outage only delays them)."""
        while not stop.is_set():
            with contextlib.suppress(StoreError):
                await self.adopt_backfills()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=every)

    async def wait_finished(self) -> None:
        """Return when every stream task has ended by itself (bounded streams only); never,
        while no account runs (a reload may start some)."""
        tasks = [t for r in self._running.values() for t in r.tasks]
        if not tasks:
            await asyncio.Event().wait()
        await asyncio.wait(tasks)
