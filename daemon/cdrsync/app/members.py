"""Daemons that share one database share the streams out (``cdrsync run`` only).

``BalancedLocks`` is the daemon's lock session: every instance runs a task per stream, as
before, but a stream takes its lock only in the instance the balance gives it to
(``cdrsync.engine.balance``). Every quarter of ``daemon.instance_timeout`` the instance beats:
it refreshes its row in ``instances`` (on the lock session), reads every row, and recomputes the
balance. When it changes, the streams are woken:

- a stream held here that is now another's finishes the window in hand, commits, and releases
  its lock at the end of the cycle (never mid-batch); the new owner asks again every beat;
- a stream that is now ours takes its lock as soon as it is free.

An instance that stops cleanly deletes its row; a killed one's lock session ends with its
socket, so it drops out at the next beat of the others. One whose heartbeat is older than
``daemon.instance_timeout`` (hung event loop, network cut) is reaped by the first instance that
notices: its row is deleted and its lock session ended (``pg_terminate_backend``), which frees
its advisory locks. If it comes back it finds its locks gone, stops reading, and joins again.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import socket
from collections.abc import Iterable
from typing import Any

import structlog

from cdrsync.engine.balance import Member, assign, instance_id, live, shares, stale
from cdrsync.errors import StoreError
from cdrsync.ops.metrics import Metrics
from cdrsync.store import members
from cdrsync.store.lock import StreamLocks
from cdrsync.store.members import Registration

log = structlog.get_logger(__name__)


def this_instance(now: dt.datetime) -> Registration:
    """This process as it registers: host, pid and start time."""
    host = socket.gethostname()
    return Registration(instance_id(host, os.getpid(), now), host, os.getpid(), now)


def to_member(row: Any) -> Member:
    """A row of the ``instances`` query."""
    return Member(
        id=row["id"], host=row["host"], pid=row["pid"], started=row["started"],
        streams=frozenset(row["streams"]), heartbeat=row["heartbeat"],
        connected=row["connected"], owned=row["owned"],
    )  # fmt: skip


class BalancedLocks(StreamLocks):
    """The stream locks of a daemon that shares the streams with the other daemons."""

    def __init__(
        self,
        dsn: str,
        *,
        me: Registration,
        timeout: dt.timedelta,
        metrics: Metrics | None = None,
        schema: str = "cdrsync",
        connect_timeout: float = 10.0,
        probe_every: float = 0.0,
    ) -> None:
        """Nothing runs until ``beat()`` or ``run()``."""
        super().__init__(
            dsn, schema=schema, connect_timeout=connect_timeout, probe_every=probe_every
        )
        self.me = me
        self._timeout = timeout
        self.retry_s = max(0.2, timeout.total_seconds() / 4)
        self._metrics = metrics
        self._offered: set[str] = set()
        self._assignment: dict[str, str] = {}
        self._moved = asyncio.Event()
        self._dirty = asyncio.Event()
        self._settled = asyncio.Event()
        self._published: frozenset[str] = frozenset()
        self._refused: set[str] = set()
        self.live: list[Member] = []
        """The live instances at the last heartbeat."""

    @property
    def every(self) -> float:
        """Seconds between heartbeats."""
        return self.retry_s

    def offer(self, streams: Iterable[str]) -> None:
        """This instance runs ``streams`` (published at the next heartbeat, which comes now)."""
        new = set(streams) - self._offered
        if new:
            self._offered.update(new)
            self._settled.clear()
            self._dirty.set()

    def withdraw(self, streams: Iterable[str]) -> None:
        """This instance no longer runs ``streams`` (an account removed by a reload)."""
        self._offered.difference_update(streams)
        self._dirty.set()

    def keeps(self, stream: str) -> bool:
        """A stream this instance publishes runs here when the balance says so (not before the
        first heartbeat); any other (a handed-over backfill) goes to whoever takes it first."""
        if stream not in self._offered:
            return True
        return self._assignment.get(stream) == self.me.id

    async def settle(self, stream: str | None = None) -> None:
        """Wait (up to the instance timeout) for a heartbeat that has published ``stream`` (or,
        without one, every stream offered so far): until then the balance does not know it,
        and it would take itself for another instance's. A stream already published does not
        wait for streams offered after it: while a thousand accounts are built, every due
        stream would otherwise stop here and start at the next heartbeat, all together."""
        if stream is not None and stream in self._published:
            return
        if not self._settled.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._settled.wait(), self._timeout.total_seconds())

    def changes(self) -> asyncio.Event:
        """Set at the next heartbeat that changes the balance."""
        return self._moved

    async def try_acquire(self, stream: str) -> bool:
        """Take ``stream``'s lock only if the balance gives the stream to this instance."""
        if not self.keeps(stream):
            return False
        return await super().try_acquire(stream)

    async def beat(self) -> None:
        """Refresh this instance's row, reap stale instances, recompute the balance."""
        offered, held = sorted(self._offered), len(self.held)
        published = set(offered)
        rows, now = await self.on_session(
            "send this instance's heartbeat (table instances)",
            lambda conn: members.beat(conn, self.me, offered, held),
            limit=self._timeout.total_seconds() / 2,
        )
        everyone = [to_member(row) for row in rows]
        for member in stale(everyone, now, self._timeout):
            if member.id != self.me.id:
                await self._reap(member, now)
        self.live = live(everyone, now, self._timeout)
        assignment = assign(self.live)
        if assignment != self._assignment:
            mine = shares(assignment).get(self.me.id, 0)
            log.info(
                "instances.balanced", instances=len(self.live), streams=len(assignment),
                assigned_here=mine, instance=self.me.id,
            )  # fmt: skip
            self._assignment = assignment
            moved, self._moved = self._moved, asyncio.Event()
            moved.set()
        self._published = frozenset(published)
        if published >= self._offered:
            self._settled.set()
        if self._metrics is not None:
            counts = shares(assignment)
            self._metrics.set_instances(
                [(m.id, m.host, m.pid, m.owned, counts.get(m.id, 0)) for m in self.live]
            )

    async def _reap(self, member: Member, now: dt.datetime) -> None:
        """End a stale instance's lock session so that its streams can be taken over."""
        age = (now - member.heartbeat).total_seconds()
        try:
            deleted, ended = await self.on_session(
                f"end the lock session of stale instance {member.id}",
                lambda conn: members.reap(conn, member.id, self._timeout),
                limit=self._timeout.total_seconds() / 2,
            )
        except StoreError as exc:
            if member.id not in self._refused:  # once per instance, not at every beat
                self._refused.add(member.id)
                log.warning(
                    "instance.reap_failed", instance=member.id, heartbeat_age_s=round(age, 1),
                    error=str(exc),
                    action="its streams stay stopped while its session holds their locks: grant "
                    "cdrsync's role pg_signal_backend (or run every instance as one role), or "
                    f"stop process {member.pid} on {member.host}",
                )  # fmt: skip
            return
        if deleted:
            log.warning(
                "instance.reaped", instance=member.id, host=member.host, pid=member.pid,
                heartbeat_age_s=round(age, 1), lock_session_ended=ended,
                action="its streams are taken over; if it is hung, restart it",
            )  # fmt: skip

    async def run(self, stop: asyncio.Event) -> None:
        """Beat until ``stop``: every ``every`` seconds, and at once after ``offer``."""
        failing = False
        while not stop.is_set():
            self._dirty.clear()
            try:
                await self.beat()
            except StoreError as exc:
                if not failing:
                    log.warning(
                        "instance.heartbeat_failed", error=str(exc),
                        action="retrying; after daemon.instance_timeout the other instances "
                        "take this one's streams over",
                    )  # fmt: skip
                failing = True
            else:
                failing = False
            waits = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._dirty.wait())}
            try:
                await asyncio.wait(waits, timeout=self.every, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waits:
                    waiter.cancel()

    async def leave(self) -> None:
        """Delete this instance's row: the others share its streams out at their next beat."""
        self._offered.clear()
        with contextlib.suppress(StoreError):
            await self.on_session(
                "remove this instance from table instances",
                lambda conn: members.leave(conn, self.me.id),
            )
