"""The sliding-window limiter: exact limits in every window, pauses, fairness, cancellation.

Time is driven by hand: the pure parts take ``now``; ``acquire`` runs on asyncio with a fake
clock whose ``sleep`` only returns when the test advances time, so nothing really sleeps.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

import pytest

from cdrsync.http.limiter import LimiterSet, SlidingWindowLimiter


def admit(limiter: SlidingWindowLimiter, arrivals: list[float]) -> list[float]:
    """Grant every arrival as early as the limiter allows, in order; return the grant times."""
    grants: list[float] = []
    now = 0.0
    for arrival in sorted(arrivals):
        now = max(now, arrival)
        for _ in range(10_000):
            wait = limiter.delay(now)
            if wait <= 0:
                break
            now += wait
        else:  # pragma: no cover - would mean delay() never reaches 0
            pytest.fail("delay() never allowed a grant")
        limiter.record(now)
        grants.append(now)
    return grants


def max_in_any_window(grants: list[float], period: float) -> int:
    """The most grants inside any half-open window ``[t, t + period)``."""
    # The fullest window can always be slid right until it starts at a grant.
    ordered = sorted(grants)
    return max(
        (sum(1 for g in ordered if start <= g < start + period) for start in ordered), default=0
    )


def burst_then_steady(limit: int, period: float) -> list[float]:
    """A full burst at once, then one request per period/limit: what defeats a leaky bucket."""
    burst = [0.0] * limit
    steady = [0.001 + i * period / limit for i in range(limit * 3)]
    return burst + steady


def random_arrivals(seed: int, count: int, horizon: float) -> list[float]:
    """Random arrivals, often clustered, over ``horizon`` seconds."""
    rng = random.Random(seed)
    arrivals: list[float] = []
    while len(arrivals) < count:
        centre = rng.uniform(0, horizon)
        arrivals.extend(centre + rng.uniform(0, 0.5) for _ in range(rng.randint(1, 8)))
    return arrivals[:count]


@pytest.mark.parametrize(
    ("limit", "period", "margin"),
    [(1, 1.0, 0.0), (2, 60.0, 0.5), (5, 10.0, 0.0), (60, 60.0, 0.5), (7, 0.3, 0.05)],
)
def test_burst_then_steady_never_exceeds_limit_in_any_window(
    limit: int, period: float, margin: float
) -> None:
    """A burst followed by a steady stream never puts more than `limit` grants in one window."""
    limiter = SlidingWindowLimiter(limit, period, margin=margin)
    grants = admit(limiter, burst_then_steady(limit, period))
    assert max_in_any_window(grants, period + margin) <= limit
    # The first `limit` requests go out at once: the budget is used, not wasted.
    assert grants[:limit] == [0.0] * limit


@pytest.mark.parametrize("seed", range(40))
def test_random_arrivals_never_exceed_limit_in_any_window(seed: int) -> None:
    """For random arrival patterns, every sliding window holds at most `limit` grants."""
    rng = random.Random(seed)
    limit = rng.randint(1, 12)
    period = rng.choice([0.5, 1.0, 7.5, 60.0])
    margin = rng.choice([0.0, 0.1, 0.5])
    limiter = SlidingWindowLimiter(limit, period, margin=margin)
    grants = admit(limiter, random_arrivals(seed, count=rng.randint(5, 80), horizon=period * 4))
    assert max_in_any_window(grants, period + margin) <= limit


def test_pauses_at_random_never_exceed_limit_or_grant_inside_a_pause() -> None:
    """Random pauses interleaved with traffic: no grant inside a pause, limits hold throughout."""
    rng = random.Random(7)
    limiter = SlidingWindowLimiter(6, 10.0, margin=0.0)
    grants: list[float] = []
    pauses: list[tuple[float, float]] = []
    now = 0.0
    for _ in range(300):
        now += rng.expovariate(2.0)
        if rng.random() < 0.03:
            seconds = rng.uniform(0, 15)
            limiter.pause(seconds, now=now)
            pauses.append((now, now + seconds))
        now += limiter.delay(now)
        limiter.record(now)
        grants.append(now)
    assert max_in_any_window(grants, 10.0) <= 6
    assert not [g for g in grants for start, end in pauses if start <= g < end]


@pytest.mark.parametrize(
    ("grants", "now", "expected"),
    [
        ([], 0.0, 0.0),  # nothing used yet
        ([0.0], 0.0, 0.0),  # one of two used
        ([0.0, 1.0], 1.0, 10.0),  # full: the oldest leaves the window at 0 + 10 + 1
        ([0.0, 1.0], 5.0, 6.0),
        ([0.0, 1.0], 11.0, 0.0),  # the oldest has just left the (margin-widened) window
        ([0.0, 1.0], 10.5, 0.5),  # without the margin it would already be allowed
        ([0.0, 1.0, 2.0], 11.5, 0.5),  # only the last `limit` grants matter
    ],
)
def test_delay_values(grants: list[float], now: float, expected: float) -> None:
    """delay() says exactly how long until the `limit`-th newest grant leaves the window."""
    limiter = SlidingWindowLimiter(2, 10.0, margin=1.0)
    for granted in grants:
        limiter.record(granted)
    assert limiter.delay(now) == pytest.approx(expected)
    assert limiter.used(now) == sum(1 for g in grants if now - 11.0 < g <= now)


@pytest.mark.parametrize(
    ("limit", "now", "expected"),
    [
        (4, 100.0, 20.0),  # inside the pause: wait for its end
        (4, 119.0, 1.0),
        (4, 120.0, 0.0),  # at the end: the window is empty, a grant is allowed
        (1, 125.0, 0.0),  # limit 1 halves to 1, not 0
    ],
)
def test_pause_blocks_until_its_deadline(limit: int, now: float, expected: float) -> None:
    """pause(s) grants nothing until now + s, however much budget is left."""
    limiter = SlidingWindowLimiter(limit, 60.0, margin=0.0)
    limiter.pause(30.0, now=90.0)
    assert limiter.delay(now) == pytest.approx(expected)


def test_pause_halves_the_limit_for_one_period_then_restores_it() -> None:
    """After a pause the effective limit is halved for one period, then the full limit returns."""
    limiter = SlidingWindowLimiter(4, 60.0, margin=0.0)
    limiter.pause(10.0, now=0.0)
    assert limiter.effective_limit(5.0) == 4  # during the pause nothing is granted at all
    assert limiter.effective_limit(10.0) == 2
    assert limiter.effective_limit(69.9) == 2
    assert limiter.effective_limit(70.0) == 4

    grants = admit(limiter, [10.0] * 8)
    # Two at the end of the pause, then the halved limit holds the rest back until the slow-down
    # ends at 70 (when the two earlier grants are exactly one period old): then full speed.
    assert grants == [10.0, 10.0, 70.0, 70.0, 70.0, 70.0, 130.0, 130.0]
    assert max_in_any_window(grants, 60.0) <= 4
    slowed = [g for g in grants if 10.0 <= g < 70.0]
    assert len(slowed) <= 2


def test_shorter_pause_never_shortens_a_longer_one() -> None:
    """A second, shorter Retry-After does not cut short a pause already in force."""
    limiter = SlidingWindowLimiter(5, 60.0, margin=0.0)
    limiter.pause(30.0, now=0.0)
    limiter.pause(1.0, now=5.0)
    assert limiter.delay(10.0) == pytest.approx(20.0)


@pytest.mark.parametrize(
    ("limit", "period", "margin"), [(0, 1.0, 0.0), (1, 0.0, 0.0), (1, 1.0, -0.1)]
)
def test_invalid_settings_are_refused(limit: int, period: float, margin: float) -> None:
    """A limit below 1, a period of 0 or a negative margin is refused with a clear error."""
    with pytest.raises(ValueError, match="rate limit"):
        SlidingWindowLimiter(limit, period, margin=margin)


@dataclass(frozen=True, slots=True)
class Limit:
    """Shaped like config's RateLimit."""

    requests: int
    period_s: float


def test_limiter_set_builds_one_limiter_per_endpoint_group() -> None:
    """A LimiterSet has one named limiter per group and a helpful error for an unknown group."""
    limiters = LimiterSet("acme", {"list": Limit(2, 60.0), "auth": Limit(10, 3600.0)})
    assert sorted(limiters) == ["auth", "list"]
    assert (limiters["list"].limit, limiters["list"].period) == (2, 60.0)
    assert limiters["auth"].name == "acme/auth"
    assert limiters["list"] is limiters["list"]
    with pytest.raises(KeyError, match=r"'lookup'.*configured: auth, list"):
        limiters["lookup"]


class FakeTime:
    """A clock that moves only when told to; sleepers wake when it passes their deadline."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        future = asyncio.get_running_loop().create_future()
        self.sleepers.append((self.now + seconds, future))
        await future

    async def settle(self) -> None:
        """Let every runnable task run until all are blocked again."""
        for _ in range(20):
            await asyncio.sleep(0)

    async def advance_to(self, when: float) -> None:
        self.now = when
        for deadline, future in list(self.sleepers):
            if deadline <= when and not future.done():
                future.set_result(None)
        self.sleepers = [(d, f) for d, f in self.sleepers if not f.done()]
        await self.settle()


async def test_waiters_are_served_in_arrival_order() -> None:
    """Waiters queued on a full limiter are granted first come, first served."""
    fake = FakeTime()
    limiter = SlidingWindowLimiter(1, 10.0, margin=0.0, clock=fake.clock, sleep=fake.sleep)
    order: list[tuple[int, float]] = []

    async def worker(n: int) -> None:
        await limiter.acquire()
        order.append((n, fake.now))

    tasks = []
    for n in range(5):
        tasks.append(asyncio.create_task(worker(n)))
        await fake.settle()
    for step in range(1, 5):
        await fake.advance_to(step * 10.0)
    await asyncio.gather(*tasks)
    assert order == [(0, 0.0), (1, 10.0), (2, 20.0), (3, 30.0), (4, 40.0)]


@pytest.mark.parametrize("cancelled", [1, 2])
async def test_cancelled_waiter_takes_no_slot_and_frees_the_queue(cancelled: int) -> None:
    """Cancelling a waiter (sleeping or queued) leaves its slot to the next waiter in line."""
    fake = FakeTime()
    limiter = SlidingWindowLimiter(1, 10.0, margin=0.0, clock=fake.clock, sleep=fake.sleep)
    granted: list[tuple[int, float]] = []

    async def worker(n: int) -> None:
        await limiter.acquire()
        granted.append((n, fake.now))

    tasks = []
    for n in range(4):
        tasks.append(asyncio.create_task(worker(n)))
        await fake.settle()
    # Worker 1 is sleeping on the limiter, worker 2 queued behind it; cancel one of them.
    tasks[cancelled].cancel()
    await fake.settle()
    assert tasks[cancelled].cancelled()
    await fake.advance_to(10.0)
    await fake.advance_to(20.0)
    await asyncio.gather(*(t for i, t in enumerate(tasks) if i != cancelled))
    survivors = [n for n in range(4) if n != cancelled]
    assert granted == [(survivors[0], 0.0), (survivors[1], 10.0), (survivors[2], 20.0)]
    # The last grant is the one at 20: the cancelled waiter recorded nothing.
    assert limiter.delay(20.0) == pytest.approx(10.0)


async def test_pause_during_a_wait_is_honoured() -> None:
    """A pause that arrives while a waiter sleeps pushes its grant to the pause's end."""
    fake = FakeTime()
    limiter = SlidingWindowLimiter(1, 10.0, margin=0.0, clock=fake.clock, sleep=fake.sleep)
    await limiter.acquire()
    waiter = asyncio.create_task(limiter.acquire())
    await fake.settle()
    limiter.pause(25.0, now=5.0)
    await fake.advance_to(10.0)
    assert not waiter.done()
    await fake.advance_to(30.0)
    assert waiter.done()
    assert limiter.used(30.0) == 1


async def test_newcomer_cannot_overtake_a_waiter_whose_slot_just_freed() -> None:
    """A request arriving as a slot frees queues behind the waiter that was already waiting."""
    fake = FakeTime()
    limiter = SlidingWindowLimiter(1, 10.0, margin=0.0, clock=fake.clock, sleep=fake.sleep)
    granted: list[str] = []

    async def worker(name: str) -> None:
        await limiter.acquire()
        granted.append(name)

    await limiter.acquire()
    early = asyncio.create_task(worker("early"))
    await fake.settle()
    fake.now = 10.0  # the slot is free, but the early waiter's sleep has not returned yet
    late = asyncio.create_task(worker("late"))
    await fake.settle()
    await fake.advance_to(10.0)
    await fake.advance_to(20.0)
    await asyncio.gather(early, late)
    assert granted == ["early", "late"]


def test_seeded_grants_count_against_the_window():
    """Grants a previous process made (seeded by age) delay this process's first grant."""
    limiter = SlidingWindowLimiter(2, 60.0, margin=0.5, clock=lambda: 1000.0)
    limiter.seed([10.0, 50.0])
    assert limiter.used(1000.0) == 2
    assert limiter.delay(1000.0) == pytest.approx(60.5 - 50.0)


@pytest.mark.parametrize(
    ("limit", "period", "scarce"), [(2, 60, True), (60, 60, True), (61, 60, False), (10, 1, False)]
)
def test_scarce_budgets_average_at_most_a_request_a_second(limit, period, scarce):
    """Only budgets of at most one request a second on average are persisted across restarts."""
    assert SlidingWindowLimiter(limit, period).scarce is scarce


async def test_a_low_priority_caller_takes_only_what_normal_callers_leave():
    """Backlog work (acquire_low) waits while live work (acquire) is queued for the budget."""
    from cdrsync.http.limiter import LowPriority

    limiter = SlidingWindowLimiter(1, 0.05, margin=0.0)
    await limiter.acquire()  # the window is full now
    order: list[str] = []

    async def take(name: str, acquire) -> None:
        await acquire()
        order.append(name)

    low = asyncio.create_task(take("backlog", LowPriority(limiter).acquire))
    await asyncio.sleep(0)
    live = [asyncio.create_task(take(f"live{i}", limiter.acquire)) for i in range(2)]
    await asyncio.gather(low, *live)
    assert order == ["live0", "live1", "backlog"]


class Gate:
    """A shared gate that answers from a script: seconds to wait, 0 once granted there."""

    def __init__(self, fake: FakeTime, answers: list[float], *, takes: float = 0.0) -> None:
        self.fake = fake
        self.answers = answers
        self.takes = takes
        self.asked: list[float] = []

    async def __call__(self) -> float:
        self.asked.append(self.fake.now)
        if self.takes:
            await self.fake.sleep(self.takes)
        return self.answers.pop(0) if self.answers else 0.0


async def test_a_grant_waits_for_the_gate_and_asks_again() -> None:
    """When the shared gate says wait (another process spent the budget), acquire sleeps that
    long, checks its own window again and asks the gate again; only then is it granted."""
    fake = FakeTime()
    limiter = SlidingWindowLimiter(2, 10.0, margin=0.0, clock=fake.clock, sleep=fake.sleep)
    limiter.gate = Gate(fake, [7.0, 0.0])
    task = asyncio.create_task(limiter.acquire())
    await fake.settle()
    assert not task.done() and limiter.used(0.0) == 0
    await fake.advance_to(7.0)
    await task
    assert limiter.gate.asked == [0.0, 7.0]
    assert limiter.used(7.0) == 1


async def test_a_grant_is_timestamped_after_a_slow_gate() -> None:
    """A gate that takes 3 s (a slow database) cannot bring two grants closer than the window:
    each grant is recorded when the gate returns, right before its request goes out."""
    fake = FakeTime()
    limiter = SlidingWindowLimiter(1, 10.0, margin=0.0, clock=fake.clock, sleep=fake.sleep)
    limiter.gate = Gate(fake, [], takes=3.0)
    sent: list[float] = []

    async def request() -> None:
        await limiter.acquire()
        sent.append(fake.now)

    tasks = [asyncio.create_task(request()) for _ in range(2)]
    for when in (3.0, 10.0, 13.0, 16.0):
        await fake.settle()
        await fake.advance_to(when)
    await asyncio.gather(*tasks)
    assert sent == [3.0, 16.0]


async def test_a_low_priority_grant_passes_the_gate_too() -> None:
    """Backlog work asks the shared gate as well, and retries after the wait it answers."""
    from cdrsync.http.limiter import LowPriority

    fake = FakeTime()
    limiter = SlidingWindowLimiter(2, 10.0, margin=0.0, clock=fake.clock, sleep=fake.sleep)
    limiter.gate = Gate(fake, [5.0])
    task = asyncio.create_task(LowPriority(limiter).acquire())
    await fake.settle()
    assert not task.done()
    await fake.advance_to(5.0)
    await task
    assert limiter.gate.asked == [0.0, 5.0]
    assert limiter.used(5.0) == 1
