"""A faithful, deterministic fake of Acefone's ``/v1/call/records`` and token endpoints.

Everything is a pure function of time: the simulator holds no background task. A backlog of
calls ended before ``t0``; live calls end at a steady rate after it; each record appears in the
API a processing delay after its end (some much later), and some change once afterwards. The
HTTP layer lives in ``server.py``; this module decides what each request sees, so tests can
drive a fake clock and compare the daemon's table against ``truth()``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hmac
import math
import random
import re
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from cdrsync.simulator.acefone_config import (
    FAULT_FIELDS,
    AcefoneSimConfig,
    Admission,
    FaultSettings,
    QueryError,
    SimStats,
    faults_of,
)
from cdrsync.simulator.acefone_payload import MALFORMED_SHIFT, PayloadRenderer
from cdrsync.simulator.acefone_table import RecordTable, draw_call, page_positions

__all__ = [
    "AcefoneSimConfig",
    "AcefoneSimulator",
    "Admission",
    "FaultSettings",
    "QueryError",
    "SimStats",
]

_STAMP = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}")
_JWT_HEAD = "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9"


def _bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


class AcefoneSimulator:
    """The simulated Acefone account: records over time, tokens, rate limit and faults."""

    def __init__(
        self,
        config: AcefoneSimConfig | None = None,
        *,
        now: Callable[[], float] = time.time,
        t0: float | None = None,
    ) -> None:
        self.config = cfg = config or AcefoneSimConfig()
        self.now = now
        self.t0 = now() if t0 is None else t0
        self.stats = SimStats()
        self._tz = ZoneInfo(cfg.timezone)
        self._render = PayloadRenderer(cfg.seed, self._tz)
        self._table = RecordTable()
        self._table.build_backlog(cfg, self.t0)
        self._live_rng = random.Random(cfg.seed * 1_000_003 + 17)
        self._live_k = 1  # the next live call to draw; never reused, even after stop_live
        self._live_ends: list[tuple[int, float]] = []  # (serial, end instant) of live calls
        self._live_next: tuple[float, int, int, int, float, float, int] | None = None
        self._live_until = math.inf if cfg.live_per_minute > 0 else -math.inf
        self._faults = faults_of(cfg)
        self._fault_rng = random.Random(cfg.seed * 7919 + 5)
        self._token_rng = random.Random(cfg.seed * 104_729 + 11)
        self._tokens: dict[str, float] = {}
        self._accepted: deque[float] = deque()

    # -- time and records ------------------------------------------------------------------

    def _draw_live(self) -> tuple[float, int, int, int, float, float, int]:
        cfg, rng = self.config, self._live_rng
        k = self._live_k
        # Jitter of up to half an interval keeps live calls in k order.
        end_f = self.t0 + (k + 0.5 * rng.random()) * 60.0 / cfg.live_per_minute
        flags, ring, dur, delay, change_delay = draw_call(rng, cfg)
        end = math.floor(end_f)
        vis = end_f + delay
        return (end_f, end - dur, dur, ring, vis, vis + change_delay, flags)

    def _materialize(self, t: float) -> None:
        """Add every live call that has ended by ``t`` (and before stop_live) to the table."""
        limit = min(t, self._live_until)
        while limit > self.t0:
            if self._live_next is None:
                self._live_next = self._draw_live()
            end_f, start, dur, ring, vis, change_at, flags = self._live_next
            if end_f > limit:
                return
            serial = self.config.backlog + self._live_k - 1
            self._table.insert((start, dur, ring, vis, change_at, serial, flags))
            self._live_ends.append((serial, end_f))
            self._live_next = None
            self._live_k += 1

    def stop_live(self, at: float | None = None) -> None:
        """End live traffic: no live call ends after ``at`` (default now), so truth is finite."""
        at = self.now() if at is None else at
        self._live_until = min(self._live_until, at)
        doomed_serials = {serial for serial, end in self._live_ends if end > at}
        if doomed_serials:
            serials = self._table.serials
            self._table.remove({i for i in range(len(serials)) if serials[i] in doomed_serials})
            self._live_ends = [(s, end) for s, end in self._live_ends if end <= at]

    def last_visible_time(self) -> float:
        """When the truth becomes final: the last record appears and the last change lands.

        inf while live traffic is on (see ``stop_live``). Includes the late version changes,
        so that waiting until this instant means nothing the API serves will change again.
        """
        if self._live_until == math.inf:
            return math.inf
        self._materialize(self._live_until)
        tb = self._table
        changes = (c for c in tb.change_at if c != math.inf)
        return max(max(tb.vis, default=-math.inf), max(changes, default=-math.inf))

    def _payload(self, pos: int, t: float) -> str:
        tb = self._table
        return self._render.render(
            (tb.starts[pos], tb.durs[pos], tb.rings[pos], tb.vis[pos], 0.0, tb.serials[pos],
             tb.flags[pos]),
            changed=tb.change_at[pos] <= t,
        )  # fmt: skip

    def iter_truth_json(self, at: float | None = None) -> Iterator[tuple[str, str]]:
        """Yield (id, JSON text) of every record visible at ``at``, oldest start first."""
        t = self.now() if at is None else at
        self._materialize(t)
        tb, rid = self._table, self._render.record_id
        for pos in tb.visible_positions(t):
            yield rid(tb.serials[pos], tb.vis[pos]), self._payload(pos, t)

    def truth(self, at: float | None = None) -> dict[str, dict[str, Any]]:
        """Every record visible at ``at`` (default now), id -> payload in its current version."""
        return {rid: orjson.loads(text) for rid, text in self.iter_truth_json(at)}

    def truth_ids(self, at: float | None = None) -> set[str]:
        """The ids of every record visible at ``at``: cheap where ``truth()`` would be huge."""
        t = self.now() if at is None else at
        self._materialize(t)
        tb, rid = self._table, self._render.record_id
        return {rid(tb.serials[p], tb.vis[p]) for p in tb.visible_positions(t)}

    def malformed_ids(self, at: float | None = None) -> set[str]:
        """The ids of visible records whose payload a normalizer must reject."""
        t = self.now() if at is None else at
        self._materialize(t)
        tb, rid = self._table, self._render.record_id
        return {
            rid(tb.serials[p], tb.vis[p])
            for p in tb.visible_positions(t)
            if tb.flags[p] >> MALFORMED_SHIFT
        }

    # -- the list endpoint -----------------------------------------------------------------

    def _parse_bound(self, name: str, value: str | None) -> int:
        if not value:
            raise QueryError(f"The {name} field is required.")
        bad = QueryError(f"The {name} does not match the format Y-m-d H:i:s.")
        if not _STAMP.fullmatch(value):
            raise bad
        try:
            local = dt.datetime.fromisoformat(value).replace(tzinfo=self._tz)
        except ValueError:
            raise bad from None
        return int(local.timestamp())

    def list_page(
        self,
        from_date: str | None,
        to_date: str | None,
        page: str | None = None,
        limit: str | None = None,
    ) -> bytes:
        """Return the JSON body of one page of ``GET /v1/call/records`` as seen right now.

        Filters on the call's start, both bounds inclusive to the second; newest first. The
        matching set is recomputed on every call, so rows appearing between pages shift them.
        Raises QueryError for what the vendor answers with 400.
        """
        first = self._parse_bound("from date", from_date)
        last = self._parse_bound("to date", to_date)
        try:
            page_no = max(int(page or 1), 1)
            size = min(max(int(limit or 20), 1), self.config.max_limit)
        except ValueError:
            raise QueryError("The page and limit fields must be integers.") from None
        t = self.now()
        self._materialize(t)
        lo, hi, hidden = self._table.window(first, last, t)
        count = max(hi - lo - len(hidden), 0)
        # limit_cap: the other reading of the page cap, served silently (the answer still
        # echoes the asked limit); pages are cut by the capped size.
        served = size if self.config.limit_cap is None else min(size, self.config.limit_cap)
        rows = page_positions(lo, hi, hidden, (page_no - 1) * served, served)
        if self.config.count_mode == "page":
            count = len(rows)
        self.stats.rows_served += len(rows)
        results = ",".join([self._payload(p, t) for p in rows])
        head = f'{{"count":{count},"limit":{size},"size":{len(rows)},"page":{page_no},"results":['
        return (head + results + "]}").encode()

    def admit_list_request(self, authorization: str | None) -> Admission:
        """Decide a list request's fate: auth, then the sliding-window limit, then faults.

        Only accepted requests enter the window (and ``stats.request_times``); faults are
        drawn from a seeded generator, so a request sequence always meets the same faults.
        """
        self.stats.list_requests += 1
        if not self.token_valid(authorization):
            return Admission(401)
        f, t = self._faults, self.now()
        if f.rate_limit is not None:
            window = self._accepted
            while window and window[0] <= t - f.rate_period_s:
                window.popleft()
            if len(window) >= f.rate_limit:
                self.stats.rate_limited += 1
                wait = math.ceil(window[0] + f.rate_period_s - t) if f.send_retry_after else None
                return Admission(429, retry_after=wait)
            window.append(t)
        self.stats.request_times.append(t)
        r = self._fault_rng.random
        fail, slow, cut = r() < f.fault_5xx, r() < f.fault_slow, r() < f.fault_truncated
        if fail:
            return Admission(503)
        return Admission(200, slow_s=f.slow_s if slow else 0.0, truncate=cut)

    def record_response(self, status: int) -> None:
        """Count one list response by HTTP status."""
        self.stats.responses[status] = self.stats.responses.get(status, 0) + 1

    def set_faults(self, **changes: object) -> FaultSettings:
        """Change fault probabilities or the rate limit at run time; returns the new settings.

        Accepts fault_5xx, fault_slow, slow_s, fault_truncated, rate_limit (None = off),
        rate_period_s, send_retry_after.
        """
        clean: dict[str, object] = {}
        for name, value in changes.items():
            kind = FAULT_FIELDS.get(name)
            if kind is None:
                raise ValueError(f"unknown fault setting {name!r}; known: {sorted(FAULT_FIELDS)}")
            if name == "rate_limit" and value is None:
                clean[name] = None
            elif isinstance(value, bool) != (kind is bool) or not isinstance(value, int | float):
                raise ValueError(f"fault setting {name} must be a {kind.__name__}, got {value!r}")
            else:
                clean[name] = kind(value)
        self._faults = dataclasses.replace(self._faults, **clean)  # type: ignore[arg-type]
        return self._faults

    @property
    def faults(self) -> FaultSettings:
        """The fault settings in force."""
        return self._faults

    # -- tokens ----------------------------------------------------------------------------

    def token_valid(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` header carries the configured or a live issued token."""
        token = _bearer(authorization)
        if token is None:
            return False
        if hmac.compare_digest(token.encode(), self.config.token.encode()):
            return True
        expiry = self._tokens.get(token)
        return expiry is not None and self.now() < expiry

    def _issue(self) -> str:
        rng = self._token_rng
        token = f"{_JWT_HEAD}.{rng.getrandbits(256):064x}.{rng.getrandbits(128):032x}"
        self._tokens[token] = self.now() + self.config.token_ttl_s
        return token

    def login(self, login: str | None, password: str | None) -> str | None:
        """Issue a token for the right email (or login_id) and password; None otherwise."""
        cfg = self.config
        if login != cfg.email or password is None:
            return None
        if not hmac.compare_digest(password.encode(), cfg.password.encode()):
            return None
        self.stats.logins += 1
        return self._issue()

    def refresh(self, authorization: str | None) -> str | None:
        """Issue a fresh token in exchange for a valid one; None if the Bearer is not valid."""
        if not self.token_valid(authorization):
            return None
        self.stats.refreshes += 1
        return self._issue()
