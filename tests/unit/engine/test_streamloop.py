"""The loop every stream shares: backoff, failure reports, ownership (no sockets, no sleeps)."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
import structlog

from cdrsync.config import AccountSettings, parse
from cdrsync.engine.loop import Backoff, StreamLoop, poll_backoff, queue_backoff
from cdrsync.errors import AuthError, CdrsyncError, PermanentError, StoreError, TransientError

POLL = 60.0


def account() -> AccountSettings:
    """An account polled every minute (the default)."""
    acc = {"name": "acme", "vendor": "acefone", "base_url": "http://127.0.0.1:1",
           "token": "t", "start": "2026-11-01"}  # fmt: skip
    return parse(
        {"daemon": {"state_dir": "/tmp", "http_listen": ""}, "accounts": [acc]},
        source="<test>",
        environ={},
    ).accounts[0]


class Locks:
    """A lock session whose ``try_acquire`` answers from a script (and stops the loop at its
    end), or always grants the lock when there is none."""

    def __init__(self, answers: list[bool] | None, stop: asyncio.Event) -> None:
        self.answers = answers
        self.stop = stop
        self.held: frozenset[str] = frozenset()

    async def alive(self) -> bool:
        return True

    retry_s = float("inf")  # one instance: nothing is shared out

    def keeps(self, stream: str) -> bool:
        return True

    def changes(self) -> asyncio.Event:
        return asyncio.Event()

    async def settle(self, stream: str | None = None) -> None:
        return None

    async def release(self, stream: str) -> None:
        self.held = self.held - {stream}

    async def try_acquire(self, stream: str) -> bool:
        got = self.answers.pop(0) if self.answers is not None else True
        if self.answers == []:
            self.stop.set()
        self.held = frozenset({stream}) if got else frozenset()
        return got


class Store:
    """Records ``record_cycle`` calls; raises StoreError when told the database is down."""

    def __init__(self, *, down: bool = False) -> None:
        self.down = down
        self.errors: list[str | None] = []

    async def record_cycle(self, name: str, *, now: dt.datetime, error: str | None = None) -> None:
        if self.down:
            raise StoreError("PostgreSQL is down")
        self.errors.append(error)


class Scripted(StreamLoop):
    """A stream whose cycles return or raise from a script, and whose rests are only noted."""

    def __init__(
        self, outcomes: list[bool | CdrsyncError], *, store: Store | None = None,
        owned: list[bool] | None = None, backoff: Backoff = poll_backoff,
    ) -> None:  # fmt: skip
        stop = asyncio.Event()
        self.locks = Locks(owned, stop)
        self.store = store or Store()
        super().__init__(
            name="acme:list", account=account(), store=self.store, locks=self.locks,  # type: ignore[arg-type]  # fakes
            stop=stop, clock=lambda: dt.datetime(2026, 11, 23, tzinfo=dt.UTC),
            logger=structlog.get_logger(__name__), failed_event="test.cycle_failed",
            backoff=backoff,
        )  # fmt: skip
        self.outcomes = outcomes
        self.rests: list[tuple[float, int]] = []

    async def cycle(self) -> bool:
        outcome = self.outcomes.pop(0)
        if not self.outcomes:
            self._stop.set()
        if isinstance(outcome, CdrsyncError):
            raise outcome
        return outcome

    async def _rest(self, delay: float, failures: int) -> None:
        self.rests.append((delay, failures))


@pytest.mark.parametrize(
    ("backoff", "exc", "failures", "poll", "expected"),
    [
        (poll_backoff, TransientError(), 1, POLL, 1.0),
        (poll_backoff, TransientError(), 3, POLL, 4.0),
        (poll_backoff, TransientError(), 3, 2.0, 2.0),  # never longer than a poll
        (poll_backoff, TransientError(), 12, 3600.0, 60.0),
        (poll_backoff, AuthError(), 1, POLL, POLL),  # never shorter than a poll
        (poll_backoff, PermanentError(), 8, POLL, 128.0),
        (poll_backoff, PermanentError(), 12, POLL, 600.0),
        (queue_backoff, TransientError(), 1, POLL, 1.0),
        (queue_backoff, StoreError(), 7, 5.0, 60.0),  # the poll does not bound it
        (queue_backoff, AuthError(), 1, 300.0, 1.0),
        (queue_backoff, PermanentError(), 12, 5.0, 600.0),
    ],
)
def test_backoff(
    backoff: Backoff, exc: CdrsyncError, failures: int, poll: float, expected: float
) -> None:
    """Polling streams back off within a poll (past it when refused); queue streams from 1 s."""
    assert backoff(exc, failures, poll) == expected


async def test_failures_are_logged_counted_and_recorded() -> None:
    """Each failed cycle logs its event with the running count and wait, and is recorded."""
    stream = Scripted([TransientError("timeout"), TransientError("timeout"), True, False])
    with structlog.testing.capture_logs() as logs:
        await stream.run()

    failed = [e for e in logs if e["event"] == "test.cycle_failed"]
    assert [(e["failures"], e["retry_in_s"], e["error_type"]) for e in failed] == [
        (1, 1.0, "TransientError"),
        (2, 2.0, "TransientError"),
    ]
    assert stream.store.errors == ["timeout", "timeout"]
    # No rest after a cycle that left more to do; a poll after the quiet one.
    assert stream.rests == [(1.0, 1), (2.0, 2), (POLL, 0)]


async def test_store_down_while_reporting_does_not_end_the_loop() -> None:
    """A failure the store is too down to record is still logged, and the loop goes on."""
    stream = Scripted([StoreError("down"), False], store=Store(down=True), backoff=queue_backoff)
    with structlog.testing.capture_logs() as logs:
        await stream.run()

    assert [e["event"] for e in logs if e["event"] == "test.cycle_failed"] == ["test.cycle_failed"]
    assert stream.rests == [(1.0, 1), (POLL, 0)]


async def test_ownership_changes_are_logged_once_each() -> None:
    """Only a change of owner is logged; a stream owned elsewhere waits a poll, cycling nothing."""
    stream = Scripted([False, False], owned=[False, False, True, True])
    with structlog.testing.capture_logs() as logs:
        await stream.run()

    assert [e["event"] for e in logs] == ["stream.owned_elsewhere", "stream.owned"]
    assert stream.outcomes == []
    assert stream.rests == [(POLL, 0)] * 4


async def test_a_finished_stream_stops_without_resting() -> None:
    """A bounded stream that finishes ends its loop at once, with no wait after the last cycle."""
    stream = Scripted([False, False])

    async def finish() -> bool:
        stream.finished = True
        return False

    stream.cycle = finish  # type: ignore[method-assign]
    await stream.run()
    assert stream.rests == []


@pytest.mark.parametrize("wakeable", [True, False])
async def test_sleep_ends_on_stop_and_on_a_push_only_when_wakeable(wakeable: bool) -> None:
    """A push cuts a wakeable sleep short and leaves the wake set; the stop event cuts any."""
    stream = Scripted([False])
    stream._wake.set()
    sleep = asyncio.ensure_future(StreamLoop._sleep(stream, 30.0, wakeable=wakeable))
    # Waking is awaited (it may take a loaded machine a while); not waking, a moment only.
    await asyncio.wait({sleep}, timeout=5.0 if wakeable else 0.05)
    assert sleep.done() is wakeable
    stream._stop.set()
    await asyncio.wait_for(sleep, 1.0)
    assert stream._wake.is_set()


class Balanced(Locks):
    """A lock session that shares the streams out: ``kept`` says whether this instance should
    run the stream, ``moved`` is set when that changes, and releases are recorded."""

    retry_s = 1.5

    def __init__(self, answers: list[bool] | None, stop: asyncio.Event) -> None:
        super().__init__(answers, stop)
        self.kept = True
        self.moved = asyncio.Event()
        self.released: list[str] = []

    def keeps(self, stream: str) -> bool:
        return self.kept

    def changes(self) -> asyncio.Event:
        return self.moved

    def rebalance(self, kept: bool) -> None:
        """As a heartbeat does: the event of this balance is set, the next one is fresh."""
        self.kept = kept
        moved, self.moved = self.moved, asyncio.Event()
        moved.set()

    async def release(self, stream: str) -> None:
        self.released.append(stream)
        self.held = self.held - {stream}
        self.stop.set()


def balanced_stream(
    outcomes: list[bool | CdrsyncError], owned: list[bool] | None
) -> tuple[Scripted, Balanced]:
    stream = Scripted(outcomes)
    locks = Balanced(owned, stream._stop)
    stream.locks = stream._locks = locks
    return stream, locks


async def test_a_stream_given_to_another_instance_is_released_between_cycles() -> None:
    """When the balance gives a held stream away, the next turn releases its lock (after the
    cycle that committed) and runs no cycle of it any more."""
    stream, locks = balanced_stream([False, False], None)
    cycles: list[frozenset[str]] = []

    async def cycle() -> bool:
        cycles.append(locks.held)
        locks.kept = False  # another instance joined during this cycle
        return False

    stream.cycle = cycle  # type: ignore[method-assign]
    with structlog.testing.capture_logs() as logs:
        await stream.run()

    assert cycles == [frozenset({"acme:list"})]
    assert locks.released == ["acme:list"]
    assert [e["event"] for e in logs] == [
        "stream.owned", "stream.handed_over", "stream.owned_elsewhere",
    ]  # fmt: skip
    assert stream.rests == [(POLL, 0), (POLL, 0)]


async def test_a_stream_ours_by_the_balance_but_still_held_elsewhere_asks_again_each_beat() -> None:
    """Until the old owner lets go, the new one retries every heartbeat, not every poll."""
    stream, _ = balanced_stream([False], [False, False, True])
    await stream.run()
    assert stream.rests[:2] == [(1.5, 0), (1.5, 0)]


async def test_a_cycle_between_windows_stops_reading_once_the_stream_is_given_away() -> None:
    """Between windows, a stream given to another instance stops reading (what was read still
    commits) without asking the lock session."""
    stream, locks = balanced_stream([False], None)
    assert await stream._still_owned()
    locks.kept = False
    with structlog.testing.capture_logs() as logs:
        assert not await stream._still_owned()
    assert [e["event"] for e in logs] == ["stream.handing_over"]


@pytest.mark.parametrize(
    ("held", "kept_after", "wakes"),
    [
        (True, False, True),  # given away: hand it over now
        (False, True, True),  # given to us: take it now
        (True, True, False),  # still ours: sleep on
        (False, False, False),  # still another's: sleep on
    ],
)
async def test_sleep_ends_when_the_balance_moves_this_stream(
    held: bool, kept_after: bool, wakes: bool
) -> None:
    """A rebalance cuts the sleep short only for a stream whose owner it changes."""
    stream, locks = balanced_stream([False], None)
    locks.held = frozenset({"acme:list"}) if held else frozenset()
    locks.kept = held
    stream._balance = locks.changes()  # as the turn before the sleep takes it
    sleep = asyncio.ensure_future(StreamLoop._sleep(stream, 3600.0, wakeable=False))
    locks.rebalance(kept_after)  # may come before the sleep even starts
    await asyncio.wait({sleep}, timeout=0.05 if not wakes else 10.0)
    assert sleep.done() is wakes
    stream._stop.set()
    await asyncio.wait_for(sleep, 10.0)


async def test_no_cycle_before_the_first_due_time_and_stop_ends_the_wait() -> None:
    """A stream due an hour from now cycles nothing while it waits; the stop event ends it."""
    stream = Scripted([False])
    stream.first_delay_s = 3600.0
    run = asyncio.ensure_future(stream.run())
    await asyncio.sleep(0)  # let it start waiting
    assert not run.done()
    assert stream.outcomes == [False]  # no cycle yet
    stream._stop.set()
    await asyncio.wait_for(run, 10.0)
    assert stream.outcomes == [False]


async def test_a_push_cuts_the_first_wait_short() -> None:
    """A push during the start-up wait runs the first cycle at once (a lookup is urgent)."""
    stream = Scripted([False])
    stream.first_delay_s = 3600.0
    stream._wake.set()
    await asyncio.wait_for(stream.run(), 10.0)
    assert stream.outcomes == []


async def test_the_first_wait_counts_from_when_the_balance_knows_the_stream() -> None:
    """The start-up spread begins once the balance knows the stream: a stream built before it
    does not spend its wait stuck behind it and then start with every other (the stampede)."""
    stream, locks = balanced_stream([False], None)
    published = asyncio.Event()
    order: list[str] = []

    async def settle(stream: str | None = None) -> None:
        await published.wait()
        order.append("settled")

    async def wait_first() -> None:
        order.append("first wait")

    locks.settle = settle  # type: ignore[method-assign]  # a heartbeat not yet published
    stream._wait_first_due = wait_first  # type: ignore[method-assign]  # records its start
    run = asyncio.ensure_future(stream.run())
    for _ in range(20):  # event-loop turns: the stream runs up to the settle and stops there
        await asyncio.sleep(0)
    assert order == []
    published.set()
    await asyncio.wait_for(run, 10.0)
    assert order[:2] == ["settled", "first wait"]


async def test_stop_ends_the_wait_for_the_balance_at_start_up() -> None:
    """A stream stopped while the balance does not know it yet ends at once, without a cycle
    (the wait for the heartbeat may outlast a shutdown's grace)."""
    stream, locks = balanced_stream([False], None)
    never = asyncio.Event()

    async def settle(stream: str | None = None) -> None:
        await never.wait()  # a heartbeat that does not come

    locks.settle = settle  # type: ignore[method-assign]
    run = asyncio.ensure_future(stream.run())
    for _ in range(20):
        await asyncio.sleep(0)
    assert not run.done()
    stream._stop.set()
    await asyncio.wait_for(run, 10.0)
    assert stream.outcomes == [False]  # no cycle ran


async def test_a_rebalance_does_not_end_the_first_wait() -> None:
    """The first balance reaches every stream while it waits for its first due time: it does
    not start the cycle early (all of them at once would be the stampede again)."""
    stream, locks = balanced_stream([False], None)
    stream.first_delay_s = 3600.0
    run = asyncio.ensure_future(stream.run())
    await asyncio.sleep(0)
    locks.rebalance(True)
    for _ in range(50):  # event-loop turns, not time: ample for a woken stream to cycle
        await asyncio.sleep(0)
    assert not run.done()
    assert stream.outcomes == [False]
    stream._stop.set()
    await asyncio.wait_for(run, 10.0)
    assert stream.outcomes == [False]
