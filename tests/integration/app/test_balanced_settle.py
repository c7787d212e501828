"""The balanced lock session against a real PostgreSQL: a stream the last heartbeat published
is settled at once, whatever was offered after it (a thousand accounts are built over
seconds, and a due stream must not wait for the next heartbeat with every other one)."""

from __future__ import annotations

import asyncio
import datetime as dt

from cdrsync.app.members import BalancedLocks, this_instance


async def test_a_published_stream_does_not_wait_for_streams_offered_after_it(
    dsn: str, store
) -> None:
    """After a heartbeat published stream a, offering b makes b (and a whole-process settle)
    wait for the next heartbeat, but not a."""
    locks = BalancedLocks(
        dsn, me=this_instance(dt.datetime.now(dt.UTC)), timeout=dt.timedelta(seconds=60),
        schema=store.schema,
    )  # fmt: skip
    await locks.open()
    try:
        locks.offer(["acme/list"])
        await locks.beat()
        locks.offer(["later/list"])
        await asyncio.wait_for(locks.settle("acme/list"), 10)  # at once: published already
        later = asyncio.ensure_future(locks.settle("later/list"))
        everyone = asyncio.ensure_future(locks.settle())
        for _ in range(20):  # event-loop turns: nothing releases them but a heartbeat
            await asyncio.sleep(0)
        assert not later.done() and not everyone.done()
        await locks.beat()
        await asyncio.wait_for(asyncio.gather(later, everyone), 10)
        assert locks.keeps("acme/list") and locks.keeps("later/list")
    finally:
        await locks.close()
