"""Ozonetel CloudAgent: the bulk CDR reports, the CDR in CallBacks lookup and the push callback.

Pure request rules first (``bulk_body``, ``earliest_available``, ``lookup_decision``,
``parse_push``), then the token and the bulk client; the CallBacks lookup client is in
``ozonetel_lookup``. Reading answers lives in ``ozonetel_parse`` and is re-exported here.
Vendor behaviour this answers:
- the bulk reports are a GET with a JSON body ``{fromDate, toDate, userName}`` (query parameters
  get "Invalid Json Pass Valid Json", a POST gets 405), both bounds inclusive, and "fromDate and
  toDate must fall on the same calendar day" (IST);
- they allow 2 requests a minute per account (fetchCdrByPagination and fetchCDRDetails share
  it) and serve the last 15 days only: older days come back empty, not as an error;
- auth is an ``apiKey`` header; accounts whose "API Authentication" setting is TOKEN also need
  ``Authorization: Bearer`` from generateToken (which one an account wants is not visible from
  outside: ``auth = "auto"`` tries the other on a refusal, see ``ozonetel_client``), which
  allows 10 tokens an hour per account (so every stream of an account shares one cached token)
  and whose token lives about 60 minutes;
- CDR in CallBacks (legacy, apiKey in the query, 50/min) answers by report type: "currentday"
  serves calls that started today (IST); "historical" older ones, but yesterday's calls only
  from 03:00 IST on (the data migrates between 00:00 and 03:00), and nothing past 15 days.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
import structlog

from cdrsync import jsontext
from cdrsync.errors import (
    ParseError,
    PermanentError,
)
from cdrsync.model import (
    LookupOutcome,
    LookupRequest,
    Page,
    PushResult,
    Window,
)
from cdrsync.vendors.ozonetel_client import _Client, _pausing, forget_tokens
from cdrsync.vendors.ozonetel_parse import (
    DIRECTIONS,
    IST,
    LOCAL_FORMAT,
    LOOKUP_KIND,
    STATUSES,
    VENDOR,
    TokenExpired,
    callback_key,
    check_status,
    normalize_bulk,
    normalize_callback,
    normalize_many,
    parse_bulk_page,
    parse_lookup,
    scrub,
)

if TYPE_CHECKING:
    from cdrsync.config import AccountSettings
    from cdrsync.http.limiter import SlidingWindowLimiter
    from cdrsync.http.transport import Response, Transport

__all__ = [
    "DIRECTIONS",
    "IST",
    "STATUSES",
    "VENDOR",
    "LookupDecision",
    "OzonetelSource",
    "TokenExpired",
    "bulk_body",
    "check_status",
    "earliest_available",
    "forget_tokens",
    "lookup_decision",
    "normalize_bulk",
    "normalize_callback",
    "parse_bulk_page",
    "parse_lookup",
    "parse_push",
    "scrub",
]

T = TypeVar("T")
log = structlog.get_logger(__name__)

# Yesterday's calls are migrating to the historical database until 03:00 IST.
MIGRATION_ENDS = dt.time(3, 0)


# ---------------------------------------------------------------------------- pure: requests


def bulk_body(window: Window, username: str, zone: dt.tzinfo) -> bytes:
    """The JSON body of a bulk report request for ``window`` (``[start, end)``, UTC).

    Ozonetel's bounds are inclusive seconds, so toDate is ``end - 1 s``: a window
    [00:00, 01:00) asks 00:00:00..00:59:59 and adjacent windows never overlap. ValueError when
    the bounds are not on the same local day, which Ozonetel refuses.
    """
    first = window.start.astimezone(zone)
    last = (window.end - dt.timedelta(seconds=1)).astimezone(zone)
    if last < first:
        raise ValueError(f"window {window} is shorter than one second")
    if first.date() != last.date():
        raise ValueError(
            f"window {window} spans {first.date()} and {last.date()} locally; Ozonetel needs "
            "fromDate and toDate on the same calendar day"
        )
    return orjson.dumps(
        {
            "fromDate": first.strftime(LOCAL_FORMAT),
            "toDate": last.strftime(LOCAL_FORMAT),
            "userName": username,
        }
    )


def _midnight(day: dt.date, zone: dt.tzinfo) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), zone).astimezone(dt.UTC)


def earliest_available(now: dt.datetime, zone: dt.tzinfo, retention: dt.timedelta) -> dt.datetime:
    """The UTC instant of the local midnight of the oldest day the bulk API still serves.

    Ozonetel serves "the last 15 days" without saying whether today counts. We take the wider
    reading, today minus 15 whole days: asking for a day the vendor has dropped costs one
    request and returns nothing, while skipping a day it still serves would lose its calls.
    """
    today = now.astimezone(zone).date()
    return _midnight(today - dt.timedelta(days=retention.days), zone)


@dataclass(frozen=True, slots=True)
class LookupDecision:
    """What the CDR in CallBacks rules allow for one call at one instant."""

    action: str
    """"request" (ask now), "wait" (no request before ``not_before``) or "give_up"."""
    report_type: str | None
    """"currentday" or "historical" when the action is "request"."""
    not_before: dt.datetime | None
    reason: str


def lookup_decision(
    started_at: dt.datetime, now: dt.datetime, *, zone: dt.tzinfo, retention: dt.timedelta
) -> LookupDecision:
    """Which report type may find a call that started at ``started_at``, asked at ``now``.

    The vendor's "API Working Scenarios", all keyed on the call's local start day d: while
    today is d, "currentday" (a start in the future is our clock's skew: currentday too); on
    d+1 before 03:00 nothing (data migrating to historical); past the bulk horizon (the same
    as ``earliest_available``) give up; otherwise "historical".
    """
    day = started_at.astimezone(zone).date()
    local_now = now.astimezone(zone)
    today = local_now.date()
    if day >= today:
        return LookupDecision("request", "currentday", None, "the call started today (IST)")
    if _midnight(day, zone) < earliest_available(now, zone, retention):
        return LookupDecision(
            "give_up", None, None, f"past Ozonetel's {retention.days}-day horizon"
        )
    if today == day + dt.timedelta(days=1) and local_now.time() < MIGRATION_ENDS:
        ready = dt.datetime.combine(today, MIGRATION_ENDS, zone).astimezone(dt.UTC)
        return LookupDecision(
            "wait", None, ready, "yesterday's calls move to the historical report until 03:00 IST"
        )
    return LookupDecision("request", "historical", None, "the call started before today (IST)")


def unsent_outcome(decision: LookupDecision, now: dt.datetime) -> LookupOutcome:
    """The outcome of an attempt that sent nothing because of ``decision`` (made at ``now``):
    wait for its ``not_before``, give up, or (a report type that changed while the request
    waited for its turn) ask again at once. Never counted: no request went out."""
    if decision.action == "wait":
        return LookupOutcome(
            "retry", next_attempt_at=decision.not_before, counted=False, note=decision.reason
        )
    if decision.action == "give_up":
        return LookupOutcome("gave_up", counted=False, note=decision.reason)
    note = f"the report type is {decision.report_type} now: {decision.reason}"
    return LookupOutcome("retry", next_attempt_at=now, counted=False, note=note)


def _push_items(doc: Any) -> list[Any]:
    """The records of a decoded push: a record, a list of them, or either under "data"."""
    for _ in range(3):  # {"data": "<json text>"} unwraps to a record or a list
        if isinstance(doc, dict) and "data" in doc and callback_key(doc) is None:
            doc = doc["data"]
        if isinstance(doc, str | bytes):
            try:
                doc = jsontext.loads(doc)
            except orjson.JSONDecodeError:
                raise ParseError("the push's data is not JSON") from None
    if isinstance(doc, dict):
        return [doc]
    if isinstance(doc, list):
        return doc
    raise ParseError(f"the push is a JSON {type(doc).__name__}, expected a call record")


def parse_push(doc: Any, *, account: AccountSettings, received_at: dt.datetime) -> PushResult:
    """A decoded "URL to Push" callback: its call(s) stored now (source "push") and one
    "ozonetel.cdr" lookup per call to confirm it ``lookup_delay`` later. A record that cannot
    be normalized becomes a Reject; a push with nothing usable raises ``ParseError``."""
    items = _push_items(doc)
    normalize = functools.partial(
        normalize_callback,
        account=account.name,
        zone=account.zone,
        fetched_at=received_at,
        source="push",
    )
    records, rejects = normalize_many(
        items, normalize, account=account.name, stream="push", seen_at=received_at
    )
    if not records:
        reasons = "; ".join(r.reason for r in rejects[:3]) or "no records"
        raise ParseError(f"the Ozonetel push holds no usable call ({reasons})")
    not_before = received_at + account.option("lookup_delay")
    lookups = tuple(
        LookupRequest(
            kind=LOOKUP_KIND,
            call_key=call.call_key,
            context={"started_at": call.started_at.isoformat() if call.started_at else None},
            not_before=not_before,
        )
        for call in records
    )
    return PushResult(records=tuple(records), rejects=tuple(rejects), lookups=lookups)


# ---------------------------------------------------------------------------- thin client


class OzonetelSource(_Client):
    """Reads ``fetchCdrByPagination`` for one account (a ``WindowSource``)."""

    vendor = VENDOR

    def __init__(
        self,
        account: AccountSettings,
        transport: Transport,
        limiters: Mapping[str, SlidingWindowLimiter],
        stream: str,
    ) -> None:
        super().__init__(account, transport, limiters, stream)
        self.page_size = account.page_size

    async def fetch_page(self, window: Window, page: int) -> Page:
        """Page ``page`` (1-based) of the calls that started inside ``window``."""
        return await self._bulk(window, page, self.page_size)

    async def count(self, window: Window) -> int:
        """The window's ``totalCount``, from a one-record page (it costs a whole request)."""
        return (await self._bulk(window, 1, 1)).total

    async def _bulk(self, window: Window, page: int, size: int) -> Page:
        endpoint = f"{self._account.name}/ozonetel.bulk"
        try:
            body = bulk_body(window, self._username, self._zone)
        except ValueError as exc:
            raise PermanentError(f"{endpoint}: {exc}") from None
        fetched_at = dt.datetime.now(dt.UTC)
        limiter = self._limiters["bulk"]
        parse = _pausing(
            limiter,
            functools.partial(
                _page_of,
                account=self._account.name,
                stream=self._stream,
                zone=self._zone,
                fetched_at=fetched_at,
                secrets=self._secrets,
            ),
        )

        async def send(headers: dict[str, str]) -> Page:
            # A GET with a JSON body: the transport sends json_body whatever the method.
            return await self._transport.request(
                "GET",
                self._url("bulk"),
                limiter=limiter,
                endpoint=endpoint,
                params={"pageNo": str(page), "pageSize": str(size)},
                headers=headers,
                json_body=body,
                parse=parse,
                timeout_s=self._timeout_s,
                policy=self._policy,
            )

        return await self._with_token(send)


def _page_of(response: Response, **kwargs: Any) -> Page:
    return parse_bulk_page(response.body, **kwargs)
