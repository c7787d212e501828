"""Table ``instances``: the running daemons, their heartbeats, and who holds which stream lock.

The heartbeat runs on the lock session (``StreamLocks.on_session``), so the row always names the
backend that holds the instance's locks: the one another instance ends if this one hangs.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cdrsync.store.queries import QUERIES


@dataclass(frozen=True, slots=True)
class Registration:
    """What an instance says of itself at each heartbeat."""

    id: str
    host: str
    pid: int
    started: dt.datetime


@dataclass(frozen=True, slots=True)
class Holder:
    """The session holding a stream's lock: a registered instance (its id, host, pid, start),
    or a process that is not one (``cdrsync backfill``; id None)."""

    id: str | None
    host: str | None
    pid: int | None
    started: dt.datetime | None


async def beat(
    conn: Any, me: Registration, streams: Sequence[str], owned: int
) -> tuple[list[Any], dt.datetime]:
    """Refresh this instance's row; every row (``instances`` query) and the database's now."""
    await conn.execute(
        QUERIES["instance_beat"], me.id, me.host, me.pid, me.started, sorted(streams), owned
    )
    rows = list(await conn.fetch(QUERIES["instances"]))
    now = rows[0]["now"] if rows else await conn.fetchval("SELECT now()")
    return rows, now


async def reap(conn: Any, instance: str, stale_after: dt.timedelta) -> tuple[bool, bool]:
    """Delete ``instance``'s row if its heartbeat is still ``stale_after`` old, and end its lock
    session: (row deleted, session ended)."""
    row = await conn.fetchrow(QUERIES["instance_reap"], instance, stale_after.total_seconds())
    return bool(row["deleted"]), bool(row["ended"])


async def leave(conn: Any, instance: str) -> None:
    """Delete this instance's row (a clean stop: the others need not wait for the timeout)."""
    await conn.execute(QUERIES["instance_leave"], instance)


async def holders(conn: Any, schema: str) -> dict[str, Holder]:
    """Stream -> the session holding its lock now (streams nobody holds are absent)."""
    rows = await conn.fetch(QUERIES["stream_holders"], schema)
    return {r["stream"]: Holder(r["id"], r["host"], r["pid"], r["started"]) for r in rows}


async def registered(conn: Any) -> tuple[list[Any], dt.datetime]:
    """Every row of ``instances`` (``instances`` query) and the database's now."""
    rows = list(await conn.fetch(QUERIES["instances"]))
    now = rows[0]["now"] if rows else await conn.fetchval("SELECT now()")
    return rows, now
