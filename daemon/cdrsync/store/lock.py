"""Stream ownership across cdrsync instances: session advisory locks on one connection.

Several instances may share one database; a stream runs only in the instance holding its lock.
The locks live on a dedicated connection, never a pooled one: a session lock belongs to the
connection that took it, and a pooled connection goes back to the pool and on to other work
(and would outlive the session's loss unnoticed). So they vanish with it when the process dies,
the network drops or PostgreSQL restarts, and another instance can take the streams over. When
the connection is lost ``held`` empties at once, and the next ``try_acquire`` reconnects.

Every statement on the session is bounded (``try_acquire`` and ``release`` by the connect
timeout, ``alive`` by ``probe_timeout``): on a silently dropped network no answer comes until
TCP gives up (many minutes), and meanwhile every stream's probe and the heartbeat would wait
for the session. A statement without an answer in time ends the session: it counts as lost,
with every lock, exactly as a closed connection does.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg

from cdrsync.errors import StoreError
from cdrsync.store.queries import QUERIES, server_settings, translate

T = TypeVar("T")

PROBE_EVERY_S = 2.0
"""The daemon's lock session answers ``alive()`` from a probe at most this old: a session lost
on the server is noticed within it (or when its socket closes), not a poll interval later."""


class StreamLocks:
    """The stream locks this process holds, on one dedicated PostgreSQL session.

    Alone it is first come, first served: a stream runs in whichever process takes its lock
    first. ``cdrsync.app.members.BalancedLocks`` shares the streams out between daemons."""

    retry_s: float = math.inf
    """How soon a stream this process should run, but another holds, asks again (at most)."""

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "cdrsync",
        connect_timeout: float = 10.0,
        probe_timeout: float = 2.0,
        probe_every: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Nothing is opened until ``open()`` or the first ``try_acquire()``. ``alive()`` asks
        the server at most every ``probe_every`` seconds of ``clock``."""
        self._dsn = dsn
        self._schema = schema
        self._connect_timeout = connect_timeout
        self._probe_timeout = probe_timeout
        self._probe_every = probe_every
        self._clock = clock
        self._probed_at = -math.inf  # when the session last answered alive()'s probe
        self._conn: Any = None
        self._held: set[str] = set()
        # asyncpg runs one operation at a time per connection; streams ask concurrently.
        self._mutex = asyncio.Lock()
        self._never = asyncio.Event()

    @property
    def held(self) -> frozenset[str]:
        """Streams whose lock this process holds now (empty once the session is lost)."""
        if self._conn is not None and self._conn.is_closed():
            self._held.clear()
        return frozenset(self._held)

    def keeps(self, stream: str) -> bool:
        """Whether this process should run ``stream`` (hold it, or take it when free)."""
        return True

    async def settle(self, stream: str | None = None) -> None:
        """Return once ``keeps`` can be trusted for ``stream`` (at once, here)."""

    def changes(self) -> asyncio.Event:
        """Set when which streams this process should run changes (never, here)."""
        return self._never

    async def open(self) -> None:
        """Connect the lock session (``try_acquire`` also connects on demand)."""
        async with self._mutex:
            with translate("open the stream lock session", self._dsn):
                await self._ensure()

    async def try_acquire(self, stream: str) -> bool:
        """Take ``stream``'s lock if no other session holds it; True if this process has it."""
        async with self._mutex:
            if stream in self._held and self._conn is not None and not self._conn.is_closed():
                return True
            with translate(f"take the lock of stream {stream}", self._dsn):
                try:
                    await self._ensure()
                    query = self._conn.fetchval(QUERIES["try_stream_lock"], self._schema, stream)
                    got = bool(await self._bounded(query, f"take the lock of stream {stream}"))
                except BaseException:
                    await self._drop()
                    raise
            if got:
                self._held.add(stream)
            return got

    async def release(self, stream: str) -> None:
        """Give ``stream``'s lock back (nothing to do if the session is gone)."""
        async with self._mutex:
            if stream not in self._held:
                return
            self._held.discard(stream)
            if self._conn is None or self._conn.is_closed():
                return
            with translate(f"release the lock of stream {stream}", self._dsn):
                try:
                    query = self._conn.fetchval(QUERIES["stream_unlock"], self._schema, stream)
                    await self._bounded(query, f"release the lock of stream {stream}")
                except BaseException:
                    # A session we cannot talk to may still hold the lock: end it for sure.
                    await self._drop()
                    raise

    async def alive(self) -> bool:
        """Whether the lock session still answers; False means every lock is lost.

        Every stream of the daemon asks before each cycle (a thousand streams: about 17 times
        a second), so a probe that answered less than ``probe_every`` seconds ago (the
        daemon's: ``PROBE_EVERY_S``) stands for this one: a session ended on the server is then
        noticed by the first probe after that, or as soon as its socket closes."""
        fresh = self._clock() - self._probed_at < self._probe_every
        if fresh and self._conn is not None and not self._conn.is_closed():
            return True
        async with self._mutex:
            if self._conn is None or self._conn.is_closed():
                self._held.clear()
                return False
            try:
                await self._conn.fetchval("SELECT 1", timeout=self._probe_timeout)
            except Exception:
                # A session that does not answer in time may be half-dead: give its locks up.
                # Anything at all (asyncpg's InternalClientError from a connection the server
                # has just ended, mid-protocol) means the same: the locks are not ours.
                await self._drop()
                return False
            self._probed_at = self._clock()
            return True

    async def on_session(
        self, what: str, work: Callable[[Any], Awaitable[T]], *, limit: float | None = None
    ) -> T:
        """Run ``work(connection)`` on the lock session (connected if need be); ``what`` names
        it in the error. An error the server answers leaves the session as it is; any other
        failure, or no answer within ``limit`` seconds (a network cut: the streams' probes wait
        for this session too), drops it, and every lock with it."""
        async with self._mutex:
            with translate(what, self._dsn):
                try:
                    await self._ensure()
                    return await asyncio.wait_for(work(self._conn), limit)
                except asyncpg.PostgresError:
                    raise
                except BaseException:
                    await self._drop()
                    raise

    async def close(self) -> None:
        """Release every lock by ending the session."""
        async with self._mutex:
            self._held.clear()
            conn, self._conn = self._conn, None
            if conn is not None and not conn.is_closed():
                try:
                    await asyncio.wait_for(conn.close(), self._probe_timeout)
                except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError):
                    conn.terminate()

    async def _bounded(self, statement: Awaitable[T], what: str) -> T:
        """``statement``'s answer, or a ``StoreError`` (the session dropped, every lock lost)
        when none comes within the connect timeout."""
        try:
            return await asyncio.wait_for(statement, self._connect_timeout)
        except TimeoutError:
            await self._drop()
            raise StoreError(
                f"could not {what}: the stream lock session did not answer within "
                f"{self._connect_timeout:g} s (the network to PostgreSQL may have dropped); the "
                "session is treated as lost with every stream lock, so its streams pause and "
                "cdrsync reconnects. If it repeats, check the network to database.dsn"
            ) from None

    async def _ensure(self) -> None:
        if self._conn is not None and not self._conn.is_closed():
            return
        self._held.clear()
        self._probed_at = -math.inf
        self._conn = await asyncpg.connect(
            self._dsn,
            timeout=self._connect_timeout,
            server_settings=server_settings(self._schema),
        )
        self._conn.add_termination_listener(self._on_terminated)

    def _on_terminated(self, conn: Any) -> None:
        if conn is self._conn:
            self._held.clear()

    async def _drop(self) -> None:
        """Forget the session and its locks; closing the socket makes the server free them."""
        self._held.clear()
        self._probed_at = -math.inf
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            conn.terminate()
