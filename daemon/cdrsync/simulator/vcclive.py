"""A faithful, deterministic fake of VCC Live's Database API v2 (CDRs, records, Add record).

Everything is a pure function of the seed and of time (``now`` is injectable). Calls live in
plain dicts (a few thousand are fine). A backlog of calls ended before ``t0``; live calls end
at a steady rate after it. What a request sees follows VCC's documented behaviour:
- a call's CDR exists once it is *processed* (costed), ``processing_delay_s`` after the call
  ended: until then it is missing from ``/v2/cdrs`` and ``/v2/cdr/Y/M/{uuid}`` answers 404;
- ``/v2/cdrs/Y/M/D`` lists the calls that started on that LOCAL day (the partition's zone is
  undocumented; local is the inference), ``num`` defaults to 10 and is capped at
  ``max_page_size`` (500, as one integrator observed), ``totalCount`` is a string;
- the row order is undocumented: ``list_order`` is "start" (start time, then uuid: what an
  index scan on the start column returns; the default), "processed" (the order VCC registered
  them) or "shuffled-stable" (a fixed arbitrary order); the ``late_reorder`` fault re-shuffles
  a read with that probability;
- every call belongs to a record (``numberid`` 1..``records``) of a project; an agent disposes
  the calls an agent handled shortly after they end, which writes an event on the record and,
  for ``webhook_fraction`` of them, sends a Call Disposition webhook. Calls the system alone
  handled (IVR drops, unanswered dials) get neither: the webhook is a trigger, not a feed;
- Add record stores new records after the generated ones, numbered sequentially.

The HTTP layer and the webhook sender live in ``vcclive_server.py``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import math
import random
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from zoneinfo import ZoneInfo

__all__ = ["LIST_ORDERS", "Call", "VccFaults", "VccSimConfig", "VccSimulator", "VccStats"]

LIST_ORDERS = ("start", "processed", "shuffled-stable")
FMT = "%Y-%m-%d %H:%M:%S"
_DASH_FMT = "%Y-%m-%d %H-%M-%S"
AGENTS = ("Anna Kovacs", "Bence Nagy", "Csilla Toth", "David Szabo", "Eva Horvath", "Ferenc Kiss")
_HANGUPS = ("NORMAL_CLEARING", "ORIGINATOR_CANCEL", "NO_ANSWER", "USER_BUSY")


@dataclass(frozen=True, slots=True)
class VccSimConfig:
    """What the simulated call centre holds and how its API misbehaves."""

    seed: int = 1
    backlog: int = 300
    backlog_days: float = 2.0
    live_per_minute: float = 6.0
    username: str = "sim-cc"
    api_key: str = "sim-vcc-token"
    timezone: str = "Europe/Budapest"
    processing_delay_s: tuple[float, float] = (20.0, 120.0)
    dispose_delay_s: tuple[float, float] = (2.0, 30.0)
    max_page_size: int = 500
    list_order: str = "start"
    late_reorder: float = 0.0
    rate_list: tuple[int, float] | None = None
    rate_lookup: tuple[int, float] | None = None
    rate_records: tuple[int, float] | None = None
    send_retry_after: bool = True
    fault_5xx: float = 0.0
    webhook_url: str | None = None
    webhook_fraction: float = 0.7
    projects: tuple[int, ...] = (3, 134)
    records: int = 200
    add_delay_s: float = 0.0
    add_fault: float = 0.0
    dash_times: bool = False
    """Record detail times as "YYYY-MM-DD hh-mm-ss" (its doc table) instead of the example's
    "hh:mm:ss"."""
    not_yet: Literal["404", "empty", "error200"] = "404"
    """How ``GET /v2/cdr/Y/M/{uuid}`` answers a CDR it has not (yet) got: HTTP 404, a 200 with
    an empty ``response``, or a 200 whose ``errors`` say it was not found."""
    webhook_start_time: bool = True
    """Whether the Call Disposition webhook carries ``call_start_time`` (its ``timestamp`` is
    the disposition's time, not the call's)."""

    def __post_init__(self) -> None:
        for name in ("late_reorder", "fault_5xx", "webhook_fraction", "add_fault"):
            _probability(name, getattr(self, name))
        for name in ("processing_delay_s", "dispose_delay_s"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                raise ValueError(f"{name} must be (low, high) with 0 <= low <= high")
        if self.not_yet not in ("404", "empty", "error200"):
            raise ValueError(f"not_yet must be 404, empty or error200, got {self.not_yet!r}")
        if self.list_order not in LIST_ORDERS:
            raise ValueError(f"list_order must be one of {LIST_ORDERS}, got {self.list_order!r}")
        if self.backlog < 0 or self.backlog_days <= 0 or self.live_per_minute < 0:
            raise ValueError("backlog >= 0, backlog_days > 0 and live_per_minute >= 0 required")
        if not self.projects or self.records < 1 or self.max_page_size < 1:
            raise ValueError("projects, records >= 1 and max_page_size >= 1 required")
        ZoneInfo(self.timezone)


def _probability(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability between 0 and 1, got {value}")


@dataclass(slots=True)
class VccFaults:
    """The misbehaviour that can change while the simulator runs (``set_faults``)."""

    fault_5xx: float = 0.0
    late_reorder: float = 0.0
    rate_list: tuple[int, float] | None = None
    rate_lookup: tuple[int, float] | None = None
    rate_records: tuple[int, float] | None = None
    send_retry_after: bool = True
    add_delay_s: float = 0.0
    add_fault: float = 0.0
    add_fault_next: int = 0
    """Answer the next N adds with 503 after storing them (a lost answer, deterministic)."""
    cdr_errors: tuple[Any, ...] = ()
    """Answer every ``GET /v2/cdr/Y/M/{uuid}`` with HTTP 200 and these ``errors`` (objects or
    strings: a refusal)."""

    def rate(self, group: str) -> tuple[int, float] | None:
        """The (requests, period_s) limit of an endpoint group, None when unlimited."""
        value: tuple[int, float] | None = getattr(self, f"rate_{group}")
        return value


@dataclass(slots=True)
class VccStats:
    """What the simulated API has been asked and answered."""

    requests: dict[str, int] = field(default_factory=dict)
    responses: dict[int, int] = field(default_factory=dict)
    rate_limited: int = 0
    cdr_404: int = 0
    lookup_times: dict[str, list[float]] = field(default_factory=dict)
    """Every ``/v2/cdr/Y/M/{uuid}`` request per uuid (the 5-minute schedule is checked here)."""
    rows_served: int = 0
    added: int = 0
    webhooks_sent: int = 0
    webhooks_failed: int = 0
    webhook_responses: dict[int, int] = field(default_factory=dict)
    """The webhook receiver's answers by status (retries included)."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready counters (status codes as string keys)."""
        data = dataclasses.asdict(self)
        for name in ("responses", "webhook_responses"):
            data[name] = {str(k): v for k, v in sorted(getattr(self, name).items())}
        return data


@dataclass(frozen=True, slots=True)
class Call:
    """One simulated call: its facts and when the vendor's side of it happens."""

    serial: int
    uuid: str
    start: int  # epoch seconds
    ring: int
    before_queue: int
    queue: int
    talk: int
    hold: int
    afterwork: int
    inbound: bool
    customer: str
    line: str
    userid: int
    numberid: int
    projectid: int
    dispositionid: int
    reach: int
    status: int
    dialermode: str | None
    dc: str
    processed_at: float
    dispose_at: float  # inf: never disposed
    hook: bool

    @property
    def billing(self) -> int:
        """``billingtime``: IVR, queue and talk, excluding the ring."""
        return self.before_queue + self.queue + self.talk

    @property
    def end(self) -> int:
        return self.start + self.ring + self.billing


def _phone(rng: random.Random) -> str:
    return f"36{rng.choice((20, 30, 70))}{rng.randrange(1_000_000, 9_999_999)}"


def draw_call(
    cfg: VccSimConfig, serial: int, *, start: int | None = None, end: float | None = None
) -> Call:
    """Call ``serial``, drawn from its own generator: the same call whatever the draw order.

    Give ``start`` (backlog) or ``end`` (live: the call is laid out to end then).
    """
    rng = random.Random(cfg.seed * 1_000_003 + serial)
    r = rng.random
    inbound = r() < 0.6
    answered = r() < 0.7
    talk = min(int(-150.0 * math.log(1.0 - r())) + 1, 1500) if answered else 0
    ring = (1 + int(r() * 6)) if inbound else (5 + int(r() * 30))
    before_queue = (5 + int(r() * 25)) if inbound else 0
    queue = int(r() * (60 if answered else 120)) if inbound else 0
    agent = (1 + int(r() * len(AGENTS))) if answered or not inbound else -1
    numberid = 1 + int(r() * cfg.records)
    lo, hi = cfg.processing_delay_s
    dlo, dhi = cfg.dispose_delay_s
    duration = ring + before_queue + queue + talk
    if start is None:
        start = math.floor((end or 0.0) - duration)
    call_end = start + duration
    dispose = call_end + dlo + (dhi - dlo) * r() if agent > 0 else math.inf
    hook = r() < cfg.webhook_fraction
    return Call(
        serial=serial,
        uuid=str(uuid.UUID(int=rng.getrandbits(128), version=1)),
        start=start,
        ring=ring,
        before_queue=before_queue,
        queue=queue,
        talk=talk,
        hold=int(r() * 20) if answered else 0,
        afterwork=int(dispose - call_end) if agent > 0 else 0,
        inbound=inbound,
        customer=_phone(rng),
        line="3619997400",
        userid=agent,
        numberid=numberid,
        projectid=project_of(cfg, numberid),
        dispositionid=1 + int(r() * 6),
        reach=3 if answered and r() < 0.3 else (2 if answered else 1),
        status=1 + int(r() * 7),
        dialermode=None if inbound else rng.choice(("manual", "predictive", "progressive")),
        dc=_HANGUPS[0] if answered else rng.choice(_HANGUPS[1:]),
        processed_at=call_end + lo + (hi - lo) * r(),
        dispose_at=dispose,
        hook=agent > 0 and hook,
    )


def project_of(cfg: VccSimConfig, numberid: int) -> int:
    """The project a generated record belongs to."""
    return cfg.projects[(numberid * 7 + cfg.seed) % len(cfg.projects)]


def local_day(epoch: float, zone: dt.tzinfo) -> dt.date:
    """The local calendar day of an instant: the day partition a call is listed under."""
    return dt.datetime.fromtimestamp(epoch, zone).date()


def _stable_rank(seed: int, salt: int, key: str) -> bytes:
    return hashlib.blake2b(f"{seed}:{salt}:{key}".encode(), digest_size=8).digest()


@dataclass(frozen=True, slots=True)
class AddResult:
    """What ``POST /v2/projects/{p}/records`` did: numberids or the vendor's errors."""

    numberids: tuple[int, ...] = ()
    errors: tuple[dict[str, Any], ...] = ()
    fail_after_store: bool = False
    """Answer 503 although the records were stored (the add_fault knobs)."""
    delay_s: float = 0.0


class VccSimulator:
    """The simulated call centre: calls over time, records, added records, limits and faults."""

    def __init__(
        self,
        config: VccSimConfig | None = None,
        *,
        now: Callable[[], float] = time.time,
        t0: float | None = None,
    ) -> None:
        self.config = cfg = config or VccSimConfig()
        self.now = now
        self.t0 = now() if t0 is None else t0
        self.zone = ZoneInfo(cfg.timezone)
        self.stats = VccStats()
        self.faults = VccFaults(**{
            f.name: getattr(cfg, f.name)
            for f in dataclasses.fields(VccFaults)
            if hasattr(cfg, f.name)
        })  # fmt: skip
        self._calls: dict[str, Call] = {}
        self._by_day: dict[dt.date, list[Call]] = {}
        self._by_record: dict[int, list[Call]] = {}
        self._live_k = 1
        self._live_until = math.inf if cfg.live_per_minute > 0 else -math.inf
        self._added: list[tuple[int, int, dict[str, Any], float]] = []
        self._next_numberid = cfg.records + 1
        self._fault_rng = random.Random(cfg.seed * 7919 + 5)
        self._reads = 0
        self.hooks_done: set[str] = set()
        """Calls whose disposition webhook was delivered or given up (``vcclive_server``)."""
        self._build_backlog()

    # -- calls over time -----------------------------------------------------------------

    def _build_backlog(self) -> None:
        cfg = self.config
        rng = random.Random(cfg.seed)
        span = cfg.backlog_days * 86400.0
        # A few calls end in the minute before t0, inside their processing delay, so even a
        # small backlog has CDRs that appear after start-up (as a real account mid-day).
        near_t0 = min(cfg.backlog, 3)
        for serial in range(cfg.backlog):
            if serial < near_t0:
                self._add_call(draw_call(cfg, serial, end=self.t0 - 1.0 - 59.0 * rng.random()))
                continue
            # Spread over the span; the call must end before t0, so the latest starts are
            # pulled back by a bound on a call's length (at most about 28 minutes).
            start = math.floor(self.t0 - span + rng.random() * max(span - 1800.0, 1.0))
            self._add_call(draw_call(cfg, serial, start=start))

    def _add_call(self, call: Call) -> None:
        self._calls[call.uuid] = call
        self._by_day.setdefault(local_day(call.start, self.zone), []).append(call)
        self._by_record.setdefault(call.numberid, []).append(call)

    def _materialize(self, t: float) -> None:
        """Add every live call that has ended by ``t`` (and before ``stop_live``)."""
        cfg = self.config
        limit = min(t, self._live_until)
        while limit > self.t0:
            k = self._live_k
            jitter = random.Random(cfg.seed * 31 + k).random()
            end = self.t0 + (k + 0.5 * jitter) * 60.0 / cfg.live_per_minute
            if end > limit:
                return
            self._add_call(draw_call(cfg, cfg.backlog + k - 1, end=end))
            self._live_k += 1

    def stop_live(self, at: float | None = None) -> None:
        """End live traffic: no live call ends after ``at`` (default now); truth is finite."""
        at = self.now() if at is None else at
        self._materialize(at)
        self._live_until = min(self._live_until, at)
        doomed = [c for c in self._calls.values() if c.serial >= self.config.backlog and c.end > at]
        for call in doomed:  # materialized earlier, but ending after the new horizon
            del self._calls[call.uuid]
            self._by_day[local_day(call.start, self.zone)].remove(call)
            self._by_record[call.numberid].remove(call)

    def last_visible_time(self) -> float:
        """When nothing served changes any more (last CDR processed, last disposition); inf
        while live traffic runs."""
        if self._live_until == math.inf:
            return math.inf
        self._materialize(self._live_until)
        instants = [c.processed_at for c in self._calls.values()]
        instants += [c.dispose_at for c in self._calls.values() if c.dispose_at != math.inf]
        return max(instants, default=self.t0)

    def calls(self, at: float | None = None) -> list[Call]:
        """Every call ended by ``at`` (processed or not), oldest start first."""
        t = self.now() if at is None else at
        self._materialize(t)
        return sorted(
            (c for c in self._calls.values() if c.end <= t), key=lambda c: (c.start, c.uuid)
        )

    def call(self, call_uuid: str) -> Call | None:
        """The call with this uuid if it has ended by now."""
        self._materialize(self.now())
        return self._calls.get(call_uuid)

    # -- rendering -----------------------------------------------------------------------

    def local(self, epoch: float, fmt: str = FMT) -> str:
        """An instant as the account's local time string."""
        return dt.datetime.fromtimestamp(epoch, self.zone).strftime(fmt)

    @staticmethod
    def utc(epoch: float) -> str:
        """An instant as a UTC time string (the ``*_utc`` fields)."""
        return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime(FMT)

    def cdr(self, call: Call) -> dict[str, Any]:
        """The CDR as ``/v2/cdrs`` and ``/v2/cdr`` serve it (the documented fields)."""
        billing_at = call.start + call.ring
        source, destination = (
            (call.customer, call.line) if call.inbound else (call.line, call.customer)
        )
        return {
            "uuid": call.uuid, "source": source, "destination": destination,
            "userid": call.userid, "numberid": call.numberid,
            "start_ts": self.local(call.start), "start_ts_utc": self.utc(call.start),
            "billing_ts": self.local(billing_at), "billing_ts_utc": self.utc(billing_at),
            "ringtime": call.ring, "billingtime": call.billing, "talktime": call.talk,
            "queuetime": call.queue, "beforequeuetime": call.before_queue,
            "dispositionid": call.dispositionid, "dispositionreach": call.reach,
            "dispositionstatus": call.status, "projectid": call.projectid,
            "holdtime": call.hold, "afterwork": call.afterwork, "prework": 0,
            "direction": "inbound" if call.inbound else "outbound",
            "dialermode": call.dialermode, "dc": call.dc,
            "call_quantity": 1, "call_rate": "0.0300", "currency": "EUR",
        }  # fmt: skip

    def _record_cdr(self, call: Call) -> dict[str, Any]:
        # The record detail page's CDR object: no _utc twins, userid as a string, and (per its
        # table) "hh-mm-ss" times when dash_times is on.
        fmt = _DASH_FMT if self.config.dash_times else FMT
        row = {k: v for k, v in self.cdr(call).items() if not k.endswith("_utc")}
        row["start_ts"] = self.local(call.start, fmt)
        row["billing_ts"] = self.local(call.start + call.ring, fmt)
        row["userid"] = str(call.userid)
        return row

    def _event(self, call: Call) -> dict[str, Any]:
        fmt = _DASH_FMT if self.config.dash_times else FMT
        return {
            "type": "disposition", "dispositionid": call.dispositionid, "next_calldate": None,
            "phone": call.customer, "attempted_connections": None, "shared_call": None,
            "state": "AFTERWORK", "client_search": "no", "uuid": call.uuid,
            "comp": {"from": "00:00", "to": "00:00", "period": "0"}, "price": 0,
            "commission": 0, "create_date": self.local(call.dispose_at, fmt),
            "userid": call.userid, "description": "recorded by agent",
        }  # fmt: skip

    # -- the vendor endpoints (pure: the HTTP layer only frames them) ----------------------

    def _processed(self, calls: Sequence[Call], t: float) -> list[Call]:
        return [c for c in calls if c.processed_at <= t]

    def _order(self, rows: list[Call]) -> list[Call]:
        seed, mode = self.config.seed, self.config.list_order
        self._reads += 1
        if self.faults.late_reorder and self._fault_rng.random() < self.faults.late_reorder:
            salt = self._reads
            return sorted(rows, key=lambda c: _stable_rank(seed, salt, c.uuid))
        if mode == "processed":
            return sorted(rows, key=lambda c: (c.processed_at, c.uuid))
        if mode == "shuffled-stable":
            return sorted(rows, key=lambda c: _stable_rank(seed, 0, c.uuid))
        return sorted(rows, key=lambda c: (c.start, c.uuid))

    def list_cdrs(
        self,
        year: int,
        month: int,
        day: int | None,
        *,
        start: int = 0,
        num: int = 10,
        projectid: int | None = None,
    ) -> dict[str, Any]:
        """The ``response`` of ``GET /v2/cdrs/Y/M[/D]`` as seen now (``rows``, ``totalCount``).

        Raises ValueError for a date that does not exist (the HTTP layer answers 400).
        """
        t = self.now()
        self._materialize(t)
        if day is not None:
            days = [dt.date(year, month, day)]
        else:
            first = dt.date(year, month, 1)
            days = [first + dt.timedelta(d) for d in range(31)]
            days = [d for d in days if d.month == month]
        rows = [c for d in days for c in self._processed(self._by_day.get(d, []), t)]
        if projectid is not None:
            rows = [c for c in rows if c.projectid == projectid]
        ordered = self._order(rows)
        size = min(max(num, 0), self.config.max_page_size)
        page = ordered[max(start, 0) : max(start, 0) + size]
        self.stats.rows_served += len(page)
        return {"rows": [self.cdr(c) for c in page], "totalCount": str(len(rows))}

    def lookup_cdr(self, year: int, month: int, call_uuid: str) -> dict[str, Any] | None:
        """The CDR of ``GET /v2/cdr/Y/M/{uuid}``, or None (404): unknown, not processed yet,
        or asked under another month than the call's local start."""
        t = self.now()
        self.stats.lookup_times.setdefault(call_uuid, []).append(t)
        call = self.call(call_uuid)
        if call is None or call.processed_at > t:
            return None
        local = dt.datetime.fromtimestamp(call.start, self.zone)
        if (local.year, local.month) != (year, month):
            return None
        return self.cdr(call)

    def _project_ok(self, projectid: int) -> bool:
        return projectid in self.config.projects

    def record_detail(self, projectid: int, numberid: int) -> dict[str, Any] | None:
        """The ``response`` of ``GET /v2/projects/{p}/records/{n}``, or None (404)."""
        t = self.now()
        self._materialize(t)
        added = self._added_record(projectid, numberid)
        if added is not None:
            return added
        generated = 1 <= numberid <= self.config.records
        if not generated or project_of(self.config, numberid) != projectid:
            return None
        calls = sorted(self._by_record.get(numberid, []), key=lambda c: (c.start, c.uuid))
        disposed = sorted((c for c in calls if c.dispose_at <= t), key=lambda c: c.dispose_at)
        cdrs = [self._record_cdr(c) for c in self._processed(calls, t)]
        created = self.t0 - self.config.backlog_days * 86400.0 - 86400.0
        phone = f"3620{5_000_000 + numberid}"
        return {
            "data": {"name": f"Customer {numberid}", "phone1": phone, "city": "Budapest"},
            "contacts": {"1": {"title": "", "name": f"Customer {numberid}", "phone": phone,
                               "email": ""}},
            "events": [self._event(c) for c in disposed],
            "cdrs": {"rows": cdrs, "totalCount": len(cdrs)},
            "create_date": self.local(created), "create_date_utc": self.utc(created),
        }  # fmt: skip

    def _added_record(self, projectid: int, numberid: int) -> dict[str, Any] | None:
        for project, number, payload, at in self._added:
            if number != numberid:
                continue
            if project != projectid:
                return None
            events = []
            disposition = payload.get("disposition")
            if isinstance(disposition, Mapping):
                events.append({
                    "type": "disposition", "dispositionid": disposition.get("dispositionid"),
                    "userid": disposition.get("userid"), "uuid": None, "state": "IMPORT",
                    "create_date": self.local(at), "description": "updateimport",
                    "next_calldate": disposition.get("next_calldate"),
                })  # fmt: skip
            return {
                "data": dict(payload.get("form") or {}),
                "contacts": dict(payload.get("contacts") or {}),
                "events": events,
                "cdrs": {"rows": [], "totalCount": 0},
                "create_date": self.local(at), "create_date_utc": self.utc(at),
            }  # fmt: skip
        return None

    def add_records(self, projectid: int, payloads: Sequence[Any]) -> AddResult | None:
        """Store the records of ``POST /v2/projects/{p}/records`` (None: unknown project, 404).

        All or nothing: a record without a ``form`` object fails the whole request with
        errors under HTTP 200 (VCC reports refusals in the envelope) and nothing is stored.
        """
        if not self._project_ok(projectid):
            return None
        errors = tuple(
            {"code": 400, "message": f"record {i}: form is required"}
            for i, p in enumerate(payloads)
            if not isinstance(p, Mapping) or not isinstance(p.get("form"), Mapping)
        )
        if errors or not payloads:
            return AddResult(errors=errors or ({"code": 400, "message": "no record given"},))
        t = self.now()
        ids = []
        for payload in payloads:
            ids.append(self._next_numberid)
            self._added.append((projectid, self._next_numberid, dict(payload), t))
            self._next_numberid += 1
        self.stats.added += len(ids)
        f = self.faults
        fail = f.add_fault_next > 0 or (f.add_fault > 0 and self._fault_rng.random() < f.add_fault)
        f.add_fault_next = max(0, f.add_fault_next - 1)
        return AddResult(numberids=tuple(ids), fail_after_store=fail, delay_s=f.add_delay_s)

    def set_faults(self, **changes: Any) -> VccFaults:
        """Change faults at run time (the ``VccFaults`` fields); returns the settings."""
        known = {f.name for f in dataclasses.fields(VccFaults)}
        for name, value in changes.items():
            if name not in known:
                raise ValueError(f"unknown fault setting {name!r}; known: {sorted(known)}")
            if name.startswith("rate_") and value is not None:
                count, period = value
                setattr(self.faults, name, (int(count), float(period)))
            else:
                setattr(self.faults, name, value)
        return self.faults

    # -- what tests compare against ------------------------------------------------------

    def truth(self, at: float | None = None) -> dict[str, dict[str, Any]]:
        """Every CDR processed by ``at`` (default now), uuid -> the row the list serves."""
        t = self.now() if at is None else at
        return {c.uuid: self.cdr(c) for c in self.calls(t) if c.processed_at <= t}

    def added_records(self) -> list[tuple[int, int, dict[str, Any]]]:
        """Every added record as (projectid, numberid, payload), in arrival order."""
        return [(p, n, payload) for p, n, payload, _ in self._added]

    def events_of(self, projectid: int, numberid: int) -> list[dict[str, Any]]:
        """The record's events as ``GET .../records/{numberid}`` shows them now."""
        detail = self.record_detail(projectid, numberid)
        return list(detail["events"]) if detail else []
