"""The VCC Live outbox delivers each row exactly once: against the VCC Live simulator over HTTP
on 127.0.0.1 and real PostgreSQL. The vendor behaviours the simulator lacks (answers with a
wrong count of numberids, valueids in record detail, a batch stored after its request timed
out) are injected by wrapping the real client; a store failure by wrapping one store call."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

import orjson
import pytest
import structlog

from cdrsync.app.streams import limiters_for
from cdrsync.config import AccountSettings
from cdrsync.engine.outbox import PROBE_READS, OutboxStream
from cdrsync.errors import AuthError, StoreError, TransientError
from cdrsync.http.transport import Transport
from cdrsync.simulator.vcclive import VccSimConfig, VccSimulator
from cdrsync.simulator.vcclive_server import start_vcclive_server
from cdrsync.store.queues import Queues
from cdrsync.store.store import Store
from cdrsync.vendors.vcclive import VccOutbox, parse_add_result
from vcclive_support import ACCOUNT, vcc_settings

PROJECT = 3
NAME = f"{ACCOUNT}/outbox"


class Vcc:
    """The simulator, the account and the real VCC Live client of one test."""

    def __init__(self, sim: VccSimulator, account: AccountSettings, sink: VccOutbox) -> None:
        self.sim, self.account, self.sink = sim, account, sink

    def copies(self) -> collections.Counter[str]:
        """How many records VCC Live holds per outbox row (by form name)."""
        return collections.Counter(
            str(p["form"].get("name") or p["form"]) for _, _, p in self.sim.added_records()
        )


class Clock:
    """The outbox's clock, moved by hand (the simulator runs on real time)."""

    def __init__(self) -> None:
        self.now = dt.datetime.now(dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now

    def tick(self, **delta: float) -> None:
        self.now += dt.timedelta(**delta)


@contextlib.asynccontextmanager
async def vcc(dsn: str, records: int = 10, **options: Any) -> AsyncIterator[Vcc]:
    """The simulator served on 127.0.0.1 (``records`` generated records) and its client."""
    sim = VccSimulator(VccSimConfig(seed=21, backlog=0, live_per_minute=0, records=records))
    server = await start_vcclive_server(sim)
    try:
        account = vcc_settings(server.base_url, dsn, 0, **options).accounts[0]
        async with Transport.open() as transport:
            yield Vcc(sim, account, VccOutbox(account, transport, limiters_for(account), NAME))
    finally:
        await server.close()


@pytest.fixture
async def small(dsn: str) -> AsyncIterator[Vcc]:
    """Ten generated records (ids 1-10): rows added get 11, 12, ...; a short probe delay."""
    async with vcc(dsn, outbox_batch=3, outbox_probe_delay="5m") as v:
        yield v


def stream(store: Store, v: Vcc, clock: Clock, sink: Any = None, locks: Any = None) -> OutboxStream:
    return OutboxStream(name=NAME, account=v.account, sink=sink or v.sink, store=store,
                        locks=locks or store.lock_session(), stop=asyncio.Event(),
                        clock=clock)  # fmt: skip


async def add(store: Store, *names: str | dict[str, Any]) -> list[int]:
    payloads = [{"form": {"name": n}} if isinstance(n, str) else n for n in names]
    return await store.queues.outbox_add(ACCOUNT, PROJECT, payloads)


async def states(store: Store) -> list[str]:
    return [r["state"] for r in await store.queues.outbox_rows(ACCOUNT)]


async def run_until_delivered(
    store: Store, outbox: OutboxStream, clock: Clock, *, cycles: int = 40, minutes: float = 1
) -> list[str]:
    """Cycle (the clock a few minutes on each time) until no row waits; the rows' states."""
    for _ in range(cycles):
        await outbox.cycle()
        clock.tick(minutes=minutes)
        if set(await states(store)) == {"delivered"}:
            break
    return await states(store)


class Wrapped:
    """The real client with one behaviour replaced; everything else goes over the wire."""

    def __init__(self, real: VccOutbox) -> None:
        self.real = real
        self.read: list[int] = []

    async def add_records(self, projectid: int, payloads: Sequence[Mapping[str, Any]]) -> list[int]:
        return await self.real.add_records(projectid, payloads)

    async def record_data(self, projectid: int, numberid: int) -> Mapping[str, Any] | None:
        self.read.append(numberid)
        return await self.real.record_data(projectid, numberid)


# ---------------------------------------------------------------------------- finding: answers


class PartlyStored(Wrapped):
    """VCC Live stores the first record of a batch and answers HTTP 200 with its numberid
    alone (next to ``errors``): the answer does not say which rows were added."""

    def __init__(self, real: VccOutbox, errors: list[str]) -> None:
        super().__init__(real)
        self.errors = errors

    async def add_records(self, projectid: int, payloads: Sequence[Mapping[str, Any]]) -> list[int]:
        if len(payloads) < 2:
            return await self.real.add_records(projectid, payloads)
        ids = await self.real.add_records(projectid, payloads[:1])
        body = orjson.dumps({"response": ids, "errors": self.errors})
        return parse_add_result(body, len(payloads))


@pytest.mark.parametrize("errors", [[], ["record 3: phone is not valid"]])
async def test_a_batch_answer_with_some_numberids_is_never_resent_row_by_row(
    store: Store, small: Vcc, errors: list[str]
) -> None:
    """An answer with fewer numberids than rows (with or without errors) leaves the batch in
    doubt: the stored row is found, the others are sent once more; nothing is added twice."""
    await add(store, "lead 0", "lead 1", "lead 2")
    clock = Clock()
    outbox = stream(store, small, clock, PartlyStored(small.sink, errors))
    await outbox.cycle()
    assert await states(store) == ["unknown"] * 3
    assert await run_until_delivered(store, outbox, clock) == ["delivered"] * 3
    assert small.copies() == {"lead 0": 1, "lead 1": 1, "lead 2": 1}


# ---------------------------------------------------------------------------- finding: probe


class Valueids(Wrapped):
    """Record detail as VCC Live serves it: a 'multiple' value field holds valueids."""

    async def record_data(self, projectid: int, numberid: int) -> Mapping[str, Any] | None:
        data = await super().record_data(projectid, numberid)
        if data and "likes" in data:
            return {**data, "likes": [101, 102]}
        return data


async def test_value_fields_are_skipped_and_an_unverifiable_row_is_never_resent(
    store: Store, small: Vcc
) -> None:
    """After a lost answer a row is found by its text fields although its value field comes
    back as valueids; a row with value fields only stays unknown, logged for an operator."""
    await add(store, {"form": {"name": "Peter Green", "likes": "sports|movies"}},
              {"form": {"likes": "books"}})  # fmt: skip
    small.sim.set_faults(add_fault_next=1)  # stored, then the answer is lost
    clock = Clock()
    outbox = stream(store, small, clock, Valueids(small.sink))
    with structlog.testing.capture_logs() as logs:
        for _ in range(20):
            await outbox.cycle()
            clock.tick(minutes=1)
    rows = await store.queues.outbox_rows(ACCOUNT)
    assert [(r["state"], r["numberid"]) for r in rows] == [("delivered", 11), ("unknown", None)]
    assert "valueids" in rows[1]["error"]
    assert len(small.sim.added_records()) == 2  # neither was sent again
    (warning,) = [e for e in logs if e["event"] == "outbox.unverifiable"]
    assert warning["outbox_ids"] == [rows[1]["id"]]
    assert "pending" in warning["action"]


class StoredLate(Wrapped):
    """A request that times out while VCC Live goes on adding its records (``finish()``)."""

    def __init__(self, real: VccOutbox) -> None:
        super().__init__(real)
        self.held: list[Sequence[Mapping[str, Any]]] = []
        self.armed = False

    async def add_records(self, projectid: int, payloads: Sequence[Mapping[str, Any]]) -> list[int]:
        if not self.armed:
            return await self.real.add_records(projectid, payloads)
        self.armed = False
        self.held.append(payloads)
        raise TransientError("acme-eu/vcclive.add_record: timed out after 30 s; will retry")

    async def finish(self) -> None:
        for payloads in self.held:
            await self.real.add_records(PROJECT, payloads)


async def test_rows_in_doubt_are_ruled_absent_only_after_the_probe_delay(
    store: Store, small: Vcc
) -> None:
    """Records VCC Live adds minutes after the request timed out are found, not duplicated:
    no scan before outbox_probe_delay rules them absent."""
    await add(store, "lead 0", "lead 1")
    clock = Clock()
    sink = StoredLate(small.sink)
    outbox = stream(store, small, clock, sink)
    await outbox.cycle()  # delivered: 11, 12
    clock.tick(seconds=1)
    await add(store, "lead 2", "lead 3")
    sink.armed = True
    await outbox.cycle()
    for minute in range(1, 12):
        clock.tick(minutes=1)
        if minute == 3:
            await sink.finish()  # VCC Live is done adding them only now: 13, 14
        await outbox.cycle()
    rows = await store.queues.outbox_rows(ACCOUNT)
    assert [(r["state"], r["numberid"]) for r in rows] == [
        ("delivered", 11), ("delivered", 12), ("delivered", 13), ("delivered", 14)
    ]  # fmt: skip
    assert small.copies() == {"lead 0": 1, "lead 1": 1, "lead 2": 1, "lead 3": 1}


async def test_a_batch_delivered_after_the_lost_one_bounds_the_scan(
    store: Store, small: Vcc
) -> None:
    """A batch delivered after the lost one does not hide it: the scan starts after the batches
    sent before it and ends at the later batch's first numberid, the lost rows found below."""
    await add(store, "lost 0", "lost 1")
    clock = Clock()
    # A process sent a batch (stored: 11, 12) and died before writing the answer back.
    claimed = await store.queues.outbox_claim(ACCOUNT, now=clock(), limit=2, batch="dead")
    await small.sink.add_records(PROJECT, [r.payload for r in claimed])
    await add(store, "later 0", "later 1")
    sink = Wrapped(small.sink)
    outbox = stream(store, small, clock, sink)
    clock.tick(seconds=5)
    await outbox.cycle()  # the dead batch may still be in flight: left alone; 13, 14 delivered
    assert await states(store) == ["sending", "sending", "delivered", "delivered"]
    clock.tick(minutes=1)
    assert await run_until_delivered(store, outbox, clock) == ["delivered"] * 4
    assert small.copies() == {"lost 0": 1, "lost 1": 1, "later 0": 1, "later 1": 1}
    assert sink.read and max(sink.read) < 13  # never past the later batch


async def test_the_probe_reads_a_few_records_a_cycle_and_keeps_its_place(
    dsn: str, store: Store
) -> None:
    """Rows in doubt 200 records past the scan's start are found a few reads a cycle, each
    cycle reading on where the last one stopped (no record read twice)."""
    async with vcc(dsn, records=200, outbox_batch=2) as v:
        await add(store, "lead 0", "lead 1")
        v.sim.set_faults(add_fault_next=1)  # stored as 201 and 202; the answer is lost
        clock = Clock()
        sink = Wrapped(v.sink)
        outbox = stream(store, v, clock, sink)
        per_cycle = []
        for _ in range(12):
            before = len(sink.read)
            await outbox.cycle()
            per_cycle.append(len(sink.read) - before)
            clock.tick(minutes=1)
        rows = await store.queues.outbox_rows(ACCOUNT)
        assert [(r["state"], r["numberid"]) for r in rows] == [("delivered", 201),
                                                               ("delivered", 202)]  # fmt: skip
        assert max(per_cycle) <= PROBE_READS == 30
        assert sink.read == list(range(1, 203))
        assert v.copies() == {"lead 0": 1, "lead 1": 1}


# ---------------------------------------------------------------------------- finding: recovery


def failing_once(call: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    failed: list[object] = []

    async def wrapper(*args: Any, **kwargs: Any) -> None:
        if not failed:
            failed.append(True)
            raise StoreError("record delivered outbox rows: connection to PostgreSQL lost")
        await call(*args, **kwargs)

    return wrapper


async def test_rows_left_sending_by_a_failed_write_back_are_recovered_at_the_next_cycles(
    store: Store, small: Vcc, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch VCC Live stored whose write-back failed is not stuck in sending until a restart:
    once sent a request timeout ago it is in doubt, found in VCC Live and delivered, once."""
    await add(store, "lead 0", "lead 1")
    monkeypatch.setattr(Queues, "outbox_delivered", failing_once(Queues.outbox_delivered))
    clock = Clock()
    outbox = stream(store, small, clock)
    with pytest.raises(StoreError):
        await outbox.cycle()
    clock.tick(seconds=10)
    await outbox.cycle()
    assert await states(store) == ["sending", "sending"]  # may still be in flight elsewhere
    clock.tick(minutes=1)
    assert await run_until_delivered(store, outbox, clock) == ["delivered"] * 2
    assert small.copies() == {"lead 0": 1, "lead 1": 1}


class AuthFailsOnThirdCall(Wrapped):
    def __init__(self, real: VccOutbox) -> None:
        super().__init__(real)
        self.calls = 0

    async def add_records(self, projectid: int, payloads: Sequence[Mapping[str, Any]]) -> list[int]:
        self.calls += 1
        if self.calls == 3:
            raise AuthError("acme-eu/vcclive.add_record: HTTP 401, the vendor rejected the token")
        return await self.real.add_records(projectid, payloads)


async def test_an_auth_error_while_rows_are_sent_alone_leaves_the_unsent_ones_pending(
    store: Store, small: Vcc
) -> None:
    """A refused batch is sent row by row; credentials rejected midway leave the rows not sent
    yet pending (not sending), waiting for the token to be fixed."""
    await add(store, "ok 0", "ok 1", {"no_form": True})
    outbox = stream(store, small, Clock(), AuthFailsOnThirdCall(small.sink))
    with pytest.raises(AuthError):
        await outbox.cycle()
    assert await states(store) == ["delivered", "pending", "pending"]
    assert small.copies() == {"ok 0": 1}


# ---------------------------------------------------------------------------- finding: lock


class HalfDeadLocks:
    """A lock session the server has dropped while the client has not noticed yet (no answer,
    no FIN): it still lists the lock, which another instance may take once it is gone."""

    def __init__(self) -> None:
        self._held = frozenset({NAME})

    @property
    def held(self) -> frozenset[str]:
        return self._held

    async def alive(self) -> bool:
        self._held = frozenset()  # the probe finds out: every lock is lost
        return False

    retry_s = float("inf")  # one instance: nothing is shared out

    def keeps(self, stream: str) -> bool:
        return True

    def changes(self) -> asyncio.Event:
        return asyncio.Event()

    async def settle(self, stream: str | None = None) -> None:
        return None

    async def release(self, stream: str) -> None:
        self._held = self._held - {stream}

    async def try_acquire(self, stream: str) -> bool:
        # As StreamLocks: a lock listed on an open connection is taken as held, no round trip;
        # asked again, the server says another instance has it.
        return stream in self._held


async def test_the_outbox_probes_its_lock_session_like_the_other_streams(
    store: Store, small: Vcc
) -> None:
    """An outbox whose lock session no longer answers stands down (the lock may be another
    instance's by now) instead of sending on the strength of a lock it lost."""
    await add(store, "lead 0")
    outbox = stream(store, small, Clock(), locks=HalfDeadLocks())
    assert await outbox._turn(0) == (0.3, 0)
    assert await states(store) == ["pending"]
    assert small.copies() == {}


async def test_an_idle_outbox_counts_as_healthy(store: Store, small: Vcc, dsn: str) -> None:
    """With nothing to send, each cycle still records its success: /readyz and `status` do not
    take an empty outbox for a stuck stream."""
    clock = Clock()
    outbox = stream(store, small, clock)
    await outbox.cycle()
    clock.tick(minutes=30)
    await outbox.cycle()
    state = await store.load_state(NAME)
    assert state is not None and state.last_success_at == clock.now
