"""A faithful, deterministic fake of Ozonetel CloudAgent's CDR APIs: what each request sees.

A pure function of time, like the Acefone simulator: a backlog of calls ended before ``t0``,
live calls ending at a steady rate after it, each leg visible a processing delay after its end
(a call's legs together, once its last leg ended; pushes likewise). The calls and their record
shapes live in ``ozonetel_calls``, the HTTP app and the push sender in ``ozonetel_server``.
Records are plain dicts in the vendor's shapes: the 47-field bulk record (fetchCdrByPagination,
fetchCDRDetails) and the callback record (CDR in CallBacks and the push), which echoes the
account's ``Apikey`` as Ozonetel's does. Choices where the vendor is silent (documented so the
daemon's tests know what they face):
- IST strings; the bulk ``StartTime``/``EndTime`` are full "YYYY-MM-DD HH:MM:SS" values;
  ``Duration`` is start to end, ``TalkTime`` the talk (callback shape: ``CallDuration`` and
  ``Duration``); ``totalCount`` is a JSON number;
- selection by ``StartTime``, both bounds inclusive, ordered by StartTime then UCID;
  ``pageSize`` above ``max_page_size`` is silently cut to it (the real cap is unknown);
- every bulk request that passes the apiKey/token checks counts against the shared sliding
  window (2 per 60 s), whatever its answer; over it: HTTP 429
  ``{"status": "false", "message": "Too Many Requests"}``, no Retry-After. generateToken's
  10/hour is the same (HTTP 429); CallBacks answers HTTP 200 "max limit exceeded";
- an unknown or expired token gets ``{"status": "false", "message": "Token Expired",
  "data": null}`` with HTTP ``token_expired_status`` (401 by default);
- invented fail messages: "fromDate and toDate should be of same date", "toDate should not be
  before fromDate", "fromDate should not be a future date", "pageNo and pageSize should be
  positive numbers";
- bulk dates before today minus ``retention_days`` (IST) are an empty success;
- a leg's ``monitorUCID`` is its own UCID; with ``transfer_legs`` a transferred call's legs
  share the first leg's, the later legs' pushes add their own ``UCID`` and the first leg's push
  has none; CallBacks is asked by the leg's UCID either way.
"""

from __future__ import annotations

import bisect
import dataclasses
import hmac
import math
import random
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

from cdrsync.simulator.ozonetel_calls import (
    BULK_FIELDS,
    CALLBACK_FIELDS,
    DAY_S,
    OzonetelSimConfig,
    SimLeg,
    bulk_record,
    callback_record,
    draw_call,
    ist_day,
    parse_ist,
    report_serves,
)

__all__ = [
    "BULK_FIELDS",
    "CALLBACK_FIELDS",
    "FAULT_FIELDS",
    "OzonetelSimConfig",
    "OzonetelSimulator",
    "SimLeg",
    "SimReply",
    "SimStats",
    "report_serves",
]

_JWT_HEAD = "eyJhbGciOiJIUzI1NiJ9"
_BAD_FORMAT = "Invalid {} format. Please pass the date in the format yyyy-MM-dd HH:mm:ss"

FAULT_FIELDS: Mapping[str, type] = {
    "fault_5xx": float, "fault_truncated": float, "push_drop": float,
    "bulk_rate_limit": int, "lookup_rate_limit": int,
}  # fmt: skip


@dataclass(slots=True)
class SimStats:
    """What the simulated API was asked and answered; ``bulk_times`` are accepted bulk requests
    (both bulk endpoints, sim clock) for sliding-window checks."""

    requests: dict[str, int] = field(default_factory=dict)
    responses: dict[str, dict[int, int]] = field(default_factory=dict)
    rate_limited: dict[str, int] = field(default_factory=dict)
    bulk_times: list[float] = field(default_factory=list)
    lookup_times: list[float] = field(default_factory=list)
    token_times: list[float] = field(default_factory=list)
    tokens_issued: int = 0
    rows_served: int = 0
    pushes_sent: int = 0
    pushes_failed: int = 0
    pushes_dropped: int = 0
    push_attempts: int = 0

    def count(self, endpoint: str, status: int) -> None:
        """Count one request to ``endpoint`` answered with HTTP ``status``."""
        self.requests[endpoint] = self.requests.get(endpoint, 0) + 1
        by_status = self.responses.setdefault(endpoint, {})
        by_status[status] = by_status.get(status, 0) + 1

    def as_dict(self) -> dict[str, object]:
        """JSON-ready counters (status codes become string keys)."""
        data = dataclasses.asdict(self)
        data["responses"] = {
            ep: {str(k): v for k, v in sorted(codes.items())}
            for ep, codes in self.responses.items()
        }
        return data


class SimReply(NamedTuple):
    """One answer: the HTTP status and a JSON document (or raw bytes for a broken body)."""

    status: int
    body: Any


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        doc = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) else None


def _bearer(authorization: str | None) -> str | None:
    scheme, _, token = (authorization or "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def _same(given: object, expected: str) -> bool:
    return isinstance(given, str) and hmac.compare_digest(given.encode(), expected.encode())


def _fail(message: str, status: str = "fail") -> SimReply:
    return SimReply(200, {"message": message, "status": status})


_MISSING_CREDENTIALS = SimReply(401, {"status": "false", "message": "Missing userName or apiKey"})
_TOO_MANY = SimReply(429, {"status": "false", "message": "Too Many Requests"})
_HTML_503 = b"<html><body><h1>503 Service Temporarily Unavailable</h1></body></html>"


class _Budget:
    """A sliding window of accepted requests (the vendor's rate limit)."""

    def __init__(self, period_s: float) -> None:
        self.period_s = period_s
        self._accepted: deque[float] = deque()

    def admit(self, t: float, limit: int) -> bool:
        while self._accepted and self._accepted[0] <= t - self.period_s:
            self._accepted.popleft()
        if len(self._accepted) >= limit:
            return False
        self._accepted.append(t)
        return True


# ---------------------------------------------------------------------------- the simulator


class OzonetelSimulator:
    """The simulated Ozonetel account: calls over time, tokens, rate limits, faults, pushes."""

    def __init__(
        self,
        config: OzonetelSimConfig | None = None,
        *,
        now: Callable[[], float] = time.time,
        t0: float | None = None,
    ) -> None:
        self.config = cfg = config or OzonetelSimConfig()
        self.now = now
        self.t0 = now() if t0 is None else t0
        self.stats = SimStats()
        self._legs: dict[str, SimLeg] = {}
        self._index: list[tuple[int, str]] = []  # (start, UCID), sorted: the bulk order
        self._pushes: list[tuple[float, str]] = []  # (due, UCID) of live legs, sorted
        self._live_rng = random.Random(cfg.seed * 1_000_003 + 17)
        self._push_rng = random.Random(cfg.seed * 31 + 7)
        self._fault_rng = random.Random(cfg.seed * 7919 + 5)
        self._token_rng = random.Random(cfg.seed * 104_729 + 11)
        self._live_k = 1
        self._live_next: tuple[float, list[SimLeg]] | None = None
        self._live_until = math.inf if cfg.live_per_minute > 0 else -math.inf
        self._tokens: dict[str, float] = {}
        self._bulk = _Budget(cfg.bulk_rate_period_s)
        self._lookup = _Budget(cfg.lookup_rate_period_s)
        self._token_budget = _Budget(cfg.token_rate_period_s)
        self.faults: dict[str, float] = {name: getattr(cfg, name) for name in FAULT_FIELDS}
        self._build_backlog()

    # -- calls over time -------------------------------------------------------------------

    def _add(self, legs: list[SimLeg]) -> None:
        # The legs of a call are pushed together once its last leg ends (as they become
        # visible together): a call is only known whole when it is over.
        due = max(leg.end for leg in legs) + self.config.push_delay_s
        for leg in legs:
            self._legs[leg.ucid] = leg
            bisect.insort(self._index, (leg.start, leg.ucid))
            if leg.live and self._push_rng.random() >= self.faults["push_drop"]:
                bisect.insort(self._pushes, (due, leg.ucid))
            elif leg.live:
                self.stats.pushes_dropped += 1

    def _build_backlog(self) -> None:
        cfg = self.config
        rng = random.Random(cfg.seed)
        span = cfg.backlog_days * DAY_S
        for serial in range(cfg.backlog):
            end = math.floor(self.t0 - 1 - rng.random() * (span - 1))
            visible = end + rng.uniform(*cfg.visible_delay_s)
            self._add(draw_call(rng, cfg, serial=serial, end=end, visible_at=visible, live=False))

    def _draw_live(self) -> tuple[float, list[SimLeg]]:
        cfg, rng, k = self.config, self._live_rng, self._live_k
        # Jitter of up to half an interval keeps live calls in k order.
        end_f = self.t0 + (k + 0.5 * rng.random()) * 60.0 / cfg.live_per_minute
        visible = end_f + rng.uniform(*cfg.visible_delay_s)
        legs = draw_call(
            rng, cfg, serial=cfg.backlog + k, end=math.floor(end_f), visible_at=visible, live=True
        )
        return end_f, legs

    def _materialize(self, t: float) -> None:
        """Add every live call that has ended by ``t`` (and before stop_live)."""
        limit = min(t, self._live_until)
        while limit > self.t0:
            if self._live_next is None:
                self._live_next = self._draw_live()
            end_f, legs = self._live_next
            if end_f > limit:
                return
            self._add(legs)
            self._live_next = None
            self._live_k += 1

    def stop_live(self, at: float | None = None) -> None:
        """End live traffic: no live call ends after ``at`` (default now): truth is finite."""
        at = self.now() if at is None else at
        self._materialize(at)
        self._live_until = min(self._live_until, at)
        doomed = {u for u, leg in self._legs.items() if leg.live and leg.end > at}
        if doomed:
            for ucid in doomed:
                del self._legs[ucid]
            self._index = [entry for entry in self._index if entry[1] not in doomed]
            self._pushes = [entry for entry in self._pushes if entry[1] not in doomed]

    def last_visible_time(self) -> float:
        """When the truth is final (the last leg visible); inf while live traffic is on."""
        if self._live_until == math.inf:
            return math.inf
        self._materialize(self._live_until)
        return max((leg.visible_at for leg in self._legs.values()), default=-math.inf)

    def legs(self, at: float | None = None) -> list[SimLeg]:
        """Every leg visible at ``at`` (default now), in the bulk order."""
        t = self.now() if at is None else at
        self._materialize(t)
        legs = (self._legs[ucid] for _, ucid in self._index)
        return [leg for leg in legs if leg.visible_at <= t]

    def truth(self, at: float | None = None) -> dict[str, dict[str, Any]]:
        """Every leg visible at ``at`` (default now) as UCID -> its bulk-shape record."""
        return {leg.ucid: bulk_record(leg) for leg in self.legs(at)}

    def select(self, first: float, last: float, t: float) -> list[SimLeg]:
        """Legs visible at ``t`` whose StartTime is in [first, last] (bulk order)."""
        self._materialize(t)
        lo = bisect.bisect_left(self._index, (math.ceil(first), ""))
        hi = bisect.bisect_right(self._index, (math.floor(last), "\uffff"))
        legs = (self._legs[ucid] for _, ucid in self._index[lo:hi])
        return [leg for leg in legs if leg.visible_at <= t]

    def lookup(self, ucid: str, report_type: str, t: float) -> list[dict[str, Any]]:
        """CDR in CallBacks: the leg's callback record if ``report_type`` holds it at ``t``.

        Asked by the leg's UCID (the ``ucid`` parameter); its record names the leg by
        ``monitorUCID`` only, the first leg's UCID under ``transfer_legs``."""
        self._materialize(t)
        leg = self._legs.get(ucid)
        if leg is None or leg.visible_at > t:
            return []
        if not report_serves(leg.start, report_type, t, self.config.retention_days):
            return []
        return [callback_record(leg, self.config)]

    # -- faults ----------------------------------------------------------------------------

    def set_faults(self, **changes: object) -> dict[str, float]:
        """Change fault_5xx, fault_truncated, push_drop, bulk_rate_limit or lookup_rate_limit
        at run time; ``expire_tokens=True`` makes every issued token expire now."""
        if changes.pop("expire_tokens", False):
            self.expire_tokens()
        for name, value in changes.items():
            kind = FAULT_FIELDS.get(name)
            if kind is None:
                raise ValueError(f"unknown fault setting {name!r}; known: {sorted(FAULT_FIELDS)}")
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(f"fault setting {name} must be a number, got {value!r}")
            if kind is float and not 0 <= value <= 1:
                raise ValueError(f"{name} must be between 0 and 1, got {value}")
            if kind is int and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
            self.faults[name] = kind(value)
        return dict(self.faults)

    def _fault(self, doc: dict[str, Any]) -> SimReply:
        """The success ``doc``, unless a 5xx or a truncated body is drawn for this request."""
        fail, cut = self._fault_rng.random(), self._fault_rng.random()
        if fail < self.faults["fault_5xx"]:
            return SimReply(503, _HTML_503)
        if cut < self.faults["fault_truncated"]:
            body = orjson.dumps(doc)
            return SimReply(200, body[: max(len(body) // 2, 1)])
        return SimReply(200, doc)

    # -- tokens ----------------------------------------------------------------------------

    def expire_tokens(self) -> None:
        """Make every issued token expire now (the next request gets "Token Expired")."""
        self._tokens = dict.fromkeys(self._tokens, -math.inf)

    def handle_token(self, api_key: str | None, body: bytes) -> SimReply:
        """POST /ca_apis/CAToken/generateToken: a token for the right apiKey and userName."""
        cfg, t = self.config, self.now()
        doc = _json_object(body) or {}
        if not _same(api_key, cfg.api_key) or not _same(doc.get("userName"), cfg.username):
            reply = SimReply(200, {"status": "false", "message": "userName or apiKey is Invalid"})
        elif not self._token_budget.admit(t, cfg.token_rate_limit):
            self._rate_limited("token")
            reply = _TOO_MANY
        else:
            rng = self._token_rng
            token = f"{_JWT_HEAD}.{rng.getrandbits(256):064x}.{rng.getrandbits(128):032x}"
            self._tokens[token] = t + cfg.token_ttl_s
            self.stats.tokens_issued += 1
            self.stats.token_times.append(t)
            reply = SimReply(200, {"token": token})
        self.stats.count("token", reply.status)
        return reply

    def _authenticate(
        self, api_key: str | None, authorization: str | None, t: float
    ) -> SimReply | None:
        if not _same(api_key, self.config.api_key):
            return _MISSING_CREDENTIALS
        if self.config.auth != "token":
            return None
        token = _bearer(authorization)
        if token is None:
            return _MISSING_CREDENTIALS
        if t >= self._tokens.get(token, -math.inf):
            expired = {"status": "false", "message": "Token Expired", "data": None}
            return SimReply(self.config.token_expired_status, expired)
        return None

    def _rate_limited(self, endpoint: str) -> None:
        self.stats.rate_limited[endpoint] = self.stats.rate_limited.get(endpoint, 0) + 1

    # -- bulk reports ----------------------------------------------------------------------

    def handle_bulk(
        self,
        endpoint: str,
        api_key: str | None,
        authorization: str | None,
        body: bytes,
        query: Mapping[str, str],
    ) -> SimReply:
        """GET fetchCdrByPagination (``endpoint`` "bulk": pageNo/pageSize in the query) or
        fetchCDRDetails ("details": the whole selection); the JSON body holds the dates."""
        t = self.now()
        reply = self._authenticate(api_key, authorization, t)
        if reply is None:
            if self._bulk.admit(t, int(self.faults["bulk_rate_limit"])):
                self.stats.bulk_times.append(t)
                reply = self._bulk_answer(endpoint, body, query, t)
            else:
                self._rate_limited("bulk")
                reply = _TOO_MANY
        self.stats.count(endpoint, reply.status)
        return reply

    def _bulk_answer(
        self, endpoint: str, body: bytes, query: Mapping[str, str], t: float
    ) -> SimReply:
        doc = _json_object(body)
        if doc is None:
            return _fail("Invalid Json Pass Valid Json", "false")
        if not doc.get("userName"):
            return _MISSING_CREDENTIALS
        if not _same(doc.get("userName"), self.config.username):
            return SimReply(401, {"status": "false", "message": "userName or apiKey is Invalid"})
        bounds = self._bounds(doc, t)
        if isinstance(bounds, SimReply):
            return bounds
        paging = _paging(query, self.config.max_page_size) if endpoint == "bulk" else (1, 0)
        if paging is None:
            return _fail("pageNo and pageSize should be positive numbers")
        legs: list[SimLeg] = []
        if ist_day(bounds[0]) >= ist_day(t) - self.config.retention_days:
            legs = self.select(bounds[0], bounds[1], t)
        page_no, size = paging
        rows = legs[(page_no - 1) * size : page_no * size] if size else legs
        self.stats.rows_served += len(rows)
        return self._fault(self._bulk_doc(legs, rows))

    def _bulk_doc(self, legs: list[SimLeg], rows: list[SimLeg]) -> dict[str, Any]:
        shape = self.config.empty_shape
        if shape == "no_data" and not legs:
            return {"status": "success", "message": "No Data Found"}
        doc: dict[str, Any] = {
            "status": "success",
            "message": "Data fetched successfully",
            "details": [bulk_record(leg) for leg in rows],
            "totalCount": len(legs) if shape != "string_total" else str(len(legs)),
        }
        if shape == "string_total" and not legs:
            del doc["details"]
        return doc

    def _bounds(self, doc: Mapping[str, Any], t: float) -> tuple[float, float] | SimReply:
        given = doc.get("fromDate"), doc.get("toDate")
        if not all(given):
            return _fail("Missing fromDate and toDate")
        first, last = (parse_ist(v) if isinstance(v, str) else None for v in given)
        if first is None or last is None:
            return _fail(_BAD_FORMAT.format("fromDate" if first is None else "toDate"))
        if ist_day(first) != ist_day(last):
            return _fail("fromDate and toDate should be of same date")
        if last < first:
            return _fail("toDate should not be before fromDate")
        if first > t:
            return _fail("fromDate should not be a future date")
        return first, last

    # -- CDR in CallBacks ------------------------------------------------------------------

    def handle_callbacks(self, query: Mapping[str, str]) -> SimReply:
        """GET /CAServices/CDR/callbacks.php: the vendor's checks and strings, in order."""
        t = self.now()
        reply = self._callbacks_answer(query, t)
        self.stats.count("callbacks", reply.status)
        return reply

    def _callbacks_refusal(self, query: Mapping[str, str]) -> str | None:
        """The vendor's documented error for a malformed request, in its order of checks."""
        for name in ("userName", "apiKey", "ucid", "reportType"):
            if not query.get(name, "").strip():
                return f"{name} should not be empty"
        if query["reportType"].strip() not in ("currentday", "historical"):
            return "Invalid reportType"
        if not query["ucid"].strip().isdigit():
            return "ucid should be numeric only"
        cfg = self.config
        if not _same(query["userName"], cfg.username) or not _same(query["apiKey"], cfg.api_key):
            return "userName or apiKey is Invalid"
        return None

    def _callbacks_answer(self, query: Mapping[str, str], t: float) -> SimReply:
        refusal = self._callbacks_refusal(query)
        if refusal is not None:
            return _fail(refusal, "error")
        ucid, report_type = query["ucid"].strip(), query["reportType"].strip()
        if not self._lookup.admit(t, int(self.faults["lookup_rate_limit"])):
            self._rate_limited("callbacks")
            return _fail("max limit exceeded", "error")
        self.stats.lookup_times.append(t)
        records = self.lookup(ucid, report_type, t)
        if not records:
            return self._fault({"status": "success", "message": f"No Data Found with UCID {ucid}"})
        return self._fault({"status": "success", "message": records})

    # -- pushes ----------------------------------------------------------------------------

    def due_pushes(self, at: float | None = None) -> list[tuple[str, bytes]]:
        """Take the pushes due by ``at`` (a live leg ended + push_delay_s): (UCID, the JSON of
        its callback record plus ``UCID``, which ``transfer_legs`` leaves out where it equals
        ``monitorUCID``), oldest first. Each is handed out once."""
        t = self.now() if at is None else at
        self._materialize(t)
        cut = bisect.bisect_right(self._pushes, (t, "\uffff"))
        due, self._pushes = self._pushes[:cut], self._pushes[cut:]
        out = []
        for _, ucid in due:
            record = callback_record(self._legs[ucid], self.config)
            if not self.config.transfer_legs or record["monitorUCID"] != ucid:
                record["UCID"] = ucid
            out.append((ucid, orjson.dumps(record)))
        return out

    def record_push(self, *, delivered: bool, attempts: int) -> None:
        """Count one push: delivered (a 2xx) or failed after ``attempts`` tries."""
        self.stats.push_attempts += attempts
        if delivered:
            self.stats.pushes_sent += 1
        else:
            self.stats.pushes_failed += 1


def _paging(query: Mapping[str, str], max_size: int) -> tuple[int, int] | None:
    try:
        page_no, size = int(query.get("pageNo", "1")), int(query.get("pageSize", "100"))
    except ValueError:
        return None
    if page_no < 1 or size < 1:
        return None
    return page_no, min(size, max_size)
