"""VCC Live (Database API v2): day lists, per-call lookups, record events and Add record.

The pure parsers live in ``vcclive_parse.py`` and the webhook in ``vcclive_push.py``, both
re-exported here; this module adds the request paths, the lookup schedule (pure) and the thin
clients. Vendor behaviour answered here
(vendor-notes.md, section 1):
- HTTP Basic auth with the call-centre subdomain as user and the API token as password. The
  docs' examples put both in the URL; cdrsync sends them in the ``Authorization`` header only,
  so they can never reach a log line that names a URL;
- ``GET /v2/cdrs/Y/M/D`` pages by ``start``/``num`` over one local day (the finest window);
- a call's CDR is processed after the call ends: ``GET /v2/cdr/Y/M/{uuid}`` answers "not yet"
  until then. VCC advises asking 5 minutes after the webhook and then every 5 minutes, 20 times
  in all (``lookup_schedule``); "not yet" before the last attempt is normal, not an error. How
  it is said is undocumented: a 404, an empty ``response`` and a 200 whose ``errors`` say so
  all mean "not yet" (never given up on the first answer); errors that refuse the credentials,
  a permission or a malformed request do not (``vcclive_errors``);
- the path's month is the month of the call's local start, which the Call Disposition webhook
  carries as ``call_start_time`` (its ``timestamp`` is the disposition's time). Without it a
  webhook on the first day of a month may be for a call of the month before: both are asked
  (``lookup_months``);
- ``POST /v2/projects/{p}/records`` is not idempotent: it is sent exactly once per call
  (``RetryPolicy(attempts=1)``) and the outbox decides what an unknown outcome means.
"""

from __future__ import annotations

import base64
import datetime as dt
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
import structlog

from cdrsync import jsontext
from cdrsync.errors import (
    RECORD_ERRORS,
    AuthError,
    EndpointError,
    PermanentError,
    PermissionRefused,
)
from cdrsync.http.transport import RetryPolicy
from cdrsync.model import (
    CallRecord,
    LookupItem,
    LookupOutcome,
    Page,
    Reject,
)
from cdrsync.vendors.vcclive_errors import cdr_errors_kind
from cdrsync.vendors.vcclive_parse import (
    VENDOR,
    Refused,
    _error_text,
    as_whole,
    normalize,
    parse_cdr,
    parse_day_page,
    parse_record_data,
    parse_record_detail,
    unwrap,
)
from cdrsync.vendors.vcclive_push import RECORD_LOOKUP_DELAY, lookup_months, parse_push

if TYPE_CHECKING:
    from cdrsync.config import AccountSettings
    from cdrsync.http.limiter import SlidingWindowLimiter
    from cdrsync.http.transport import Response, Transport
    from cdrsync.model import CallEvent

T = TypeVar("T")

__all__ = [
    "RECORD_LOOKUP_DELAY",
    "VENDOR",
    "AddInDoubt",
    "VccDaySource",
    "VccLookups",
    "VccOutbox",
    "add_records_body",
    "cdr_path",
    "day_path",
    "lookup_months",
    "lookup_schedule",
    "normalize",
    "parse_add_result",
    "parse_cdr",
    "parse_day_page",
    "parse_push",
    "parse_record_data",
    "parse_record_detail",
    "record_path",
    "records_path",
    "unwrap",
]

log = structlog.get_logger(__name__)

# An add is not idempotent: a transport retry after a lost answer could add the records twice.
ADD_POLICY = RetryPolicy(attempts=1)


# ---------------------------------------------------------------------------- pure: paths


def day_path(day: dt.date) -> str:
    """``/v2/cdrs/YYYY/MM/DD``: the CDRs of one local day."""
    return f"/v2/cdrs/{day.year:04d}/{day.month:02d}/{day.day:02d}"


def cdr_path(year: int, month: int, uuid: str) -> str:
    """``/v2/cdr/YYYY/MM/{uuid}``; the uuid comes from a webhook, so it is quoted whole."""
    return f"/v2/cdr/{int(year):04d}/{int(month):02d}/{urllib.parse.quote(uuid, safe='')}"


def record_path(projectid: int, numberid: int) -> str:
    """``/v2/projects/{projectid}/records/{numberid}``: one record's data, events and CDRs."""
    return f"/v2/projects/{int(projectid)}/records/{int(numberid)}"


def records_path(projectid: int) -> str:
    """``/v2/projects/{projectid}/records``: where Add record posts."""
    return f"/v2/projects/{int(projectid)}/records"


# ---------------------------------------------------------------------------- pure: schedule


def lookup_schedule(
    created_at: dt.datetime,
    attempts: int,
    now: dt.datetime,
    *,
    delay: dt.timedelta,
    interval: dt.timedelta,
    max_attempts: int,
) -> dt.datetime | None:
    """When the next uuid lookup is due, never before ``now``; None once all attempts are made.

    VCC's advice: first ``delay`` after the webhook, then every ``interval``, ``max_attempts``
    times in all. With ``attempts`` requests made, the next is due at ``created_at + delay +
    attempts * interval``; a past instant means "due now" (the result is ``now``). After an
    attempt the caller passes ``now + interval`` as ``now``: a late attempt (daemon down,
    queue behind) then pushes the rest of the schedule back instead of bunching the missed
    attempts into a burst, so attempts are always at least ``interval`` apart.
    """
    if attempts >= max_attempts:
        return None
    return max(created_at + delay + attempts * interval, now)


# ---------------------------------------------------------------------------- add record


def add_records_body(payloads: Sequence[Mapping[str, Any]]) -> bytes:
    """The JSON array body of ``POST /v2/projects/{p}/records`` (many records in one request).

    Each payload must be an object with a ``form`` object (VCC requires it); anything else is
    a ``PermanentError`` naming the payload's position, before a request is sent.
    """
    for index, payload in enumerate(payloads):
        if not isinstance(payload, Mapping) or not isinstance(payload.get("form"), Mapping):
            raise PermanentError(
                f"outbox payload {index} has no form object; VCC Live requires form "
                "(the record's data); fix the outbox row"
            )
    try:
        return orjson.dumps([dict(payload) for payload in payloads])
    except TypeError as exc:
        raise PermanentError(f"outbox payload is not JSON-serializable ({exc})") from None


class AddInDoubt(PermanentError):
    """VCC Live's Add record answer does not say which records it added: some may exist."""


def _added_nothing(body: bytes) -> bool:
    """Whether an answer that carries errors says no record was stored (an empty response)."""
    response = jsontext.loads(body).get("response")
    # PHP encodes an empty array as [] (json_encode), a missing value as null.
    return response is None or response in ([], {})


def parse_add_result(body: bytes, count: int, *, endpoint: str = "vcclive.add_record") -> list[int]:
    """The numberids of ``count`` added records, in payload order.

    ``{"response": [7, 8], "errors": []}``, always under HTTP 200, so the envelope alone says
    what was stored. Errors with an empty ``response`` (null, ``[]``): nothing was added, a
    ``PermanentError`` (the rows may be sent again, alone). Errors next to numberids, or no
    errors but not one numberid per record: some records may have been added, an
    ``AddInDoubt``, never retried blindly (an add is not idempotent).
    """
    try:
        response = unwrap(body, endpoint=endpoint)
    except PermanentError:
        # unwrap read the envelope before it found the errors, so the body is known JSON.
        if _added_nothing(body):
            raise
        doc = jsontext.loads(body)
        shown = orjson.dumps(doc.get("response")).decode()[:80]
        raise AddInDoubt(
            f'{endpoint}: VCC Live reported errors ("{_error_text(doc.get("errors"))}") but '
            f"also answered {shown} for {count} record(s): some may have been added; the rows "
            "stay in doubt and are looked for in VCC Live before any is sent again"
        ) from None
    ids = [as_whole(item) for item in response] if isinstance(response, list) else None
    if ids is None or len(ids) != count or any(i is None or i < 1 for i in ids):
        shown = orjson.dumps(response).decode()[:80]
        raise AddInDoubt(
            f"{endpoint}: VCC Live answered {shown} for {count} added record(s), not one "
            "numberid each: some may have been added; the rows stay in doubt and are looked "
            "for in VCC Live before any is sent again"
        )
    return [i for i in ids if i is not None]


# ---------------------------------------------------------------------------- thin clients


def _basic_auth(account: AccountSettings) -> str:
    if not account.username or account.api_key is None:
        raise AuthError(f"account {account.name}: VCC Live needs username and api_key")
    pair = f"{account.username}:{account.api_key.reveal()}".encode()
    return "Basic " + base64.b64encode(pair).decode("ascii")


class _Client:
    """What every VCC Live client of one account shares: auth header, limits, timeouts."""

    vendor = VENDOR

    def __init__(
        self,
        account: AccountSettings,
        transport: Transport,
        limiters: Mapping[str, SlidingWindowLimiter],
        stream: str,
    ) -> None:
        self._account = account
        self._transport = transport
        self._limiters = limiters
        self._stream = stream
        self._zone = account.zone
        self._timeout_s = account.request_timeout.total_seconds()
        self._policy = RetryPolicy(attempts=account.retry_attempts)
        self._headers = {"Authorization": _basic_auth(account), "Accept": "application/json"}

    def _endpoint(self, name: str) -> str:
        return f"{self._account.name}/vcclive.{name}"

    async def _send(
        self,
        method: str,
        path: str,
        *,
        group: str,
        name: str,
        parse: Callable[[Response], T],
        params: Mapping[str, str] | None = None,
        body: bytes | None = None,
        policy: RetryPolicy | None = None,
        accept: frozenset[int] = frozenset(),
    ) -> T:
        return await self._transport.request(
            method,
            f"{self._account.base_url}{path}",
            limiter=self._limiters[group],
            endpoint=self._endpoint(name),
            params=params,
            headers=self._headers,
            json_body=body,
            parse=parse,
            timeout_s=self._timeout_s,
            policy=policy or self._policy,
            accept=accept,
        )


NOT_FOUND = frozenset({404})
"""Statuses the per-id endpoints answer for "not there (yet)": an answer, not a failure."""


class VccDaySource(_Client):
    """Pages of ``GET /v2/cdrs/Y/M/D`` (one local day, ``start``/``num`` offsets)."""

    def __init__(
        self,
        account: AccountSettings,
        transport: Transport,
        limiters: Mapping[str, SlidingWindowLimiter],
        stream: str,
    ) -> None:
        super().__init__(account, transport, limiters, stream)
        self.page_size = account.page_size

    async def fetch_day(self, day: dt.date, offset: int, num: int) -> Page:
        """Rows ``offset`` .. ``offset + num`` of ``day``'s CDRs, with the day's totalCount."""
        fetched_at = dt.datetime.now(dt.UTC)

        def parse(response: Response) -> Page:
            return parse_day_page(
                response.body,
                account=self._account.name,
                stream=self._stream,
                zone=self._zone,
                fetched_at=fetched_at,
            )

        params = {"start": str(offset), "num": str(num)}
        return await self._send(
            "GET", day_path(day), group="list", name="cdrs", parse=parse, params=params
        )

    async def count_day(self, day: dt.date) -> int:
        """The day's totalCount, from a one-row page (an audit probe)."""
        return (await self.fetch_day(day, 0, 1)).total


class VccLookups(_Client):
    """The ``vcclive.cdr`` (CDR by uuid) and ``vcclive.record`` (record events) lookups."""

    kinds: tuple[str, ...] = ("vcclive.cdr", "vcclive.record")

    def limiter_group(self, kind: str) -> str:
        """``lookup`` for a CDR by uuid, ``records`` for a record's details."""
        return "lookup" if kind == "vcclive.cdr" else "records"

    async def perform(self, item: LookupItem, now: dt.datetime) -> LookupOutcome:
        """One attempt of ``item`` under VCC's schedule (see ``lookup_schedule``)."""
        if item.kind == "vcclive.cdr":
            return await self._cdr(item, now)
        if item.kind == "vcclive.record":
            return await self._record(item, now)
        return LookupOutcome("gave_up", counted=False, note=f"unknown lookup kind {item.kind!r}")

    def _schedule(self, item: LookupItem, attempts: int, now: dt.datetime) -> dt.datetime | None:
        option = self._account.option
        return lookup_schedule(
            item.created_at,
            attempts,
            now,
            delay=option("lookup_delay"),
            interval=option("lookup_interval"),
            max_attempts=option("lookup_attempts"),
        )

    def _months(self, item: LookupItem) -> list[tuple[int, int]]:
        """The (year, month) paths to ask, from the context the push queued (``lookup_months``)."""
        listed = item.context.get("months")
        if isinstance(listed, list):
            months = [
                (y, m)
                for entry in listed
                if isinstance(entry, list) and len(entry) == 2
                for y, m in [entry]
                if isinstance(y, int) and isinstance(m, int) and 1 <= m <= 12
            ]
            if months:
                return months
        year, month = item.context.get("year"), item.context.get("month")
        if isinstance(year, int) and isinstance(month, int) and 1 <= month <= 12:
            return [(year, month)]
        local = item.created_at.astimezone(self._zone)
        return [(local.year, local.month)]

    async def _cdr(self, item: LookupItem, now: dt.datetime) -> LookupOutcome:
        attempts = self._account.option("lookup_attempts")
        due = self._schedule(item, item.attempts, now)
        if due is None:
            return LookupOutcome("gave_up", counted=False, note=f"no CDR after {attempts} attempts")
        if due > now:
            return LookupOutcome("retry", next_attempt_at=due, counted=False)
        answers: list[str] = []
        refusals: list[PermanentError] = []
        for year, month in self._months(item):
            try:
                found = await self._get_cdr(year, month, item.call_key)
            except (AuthError, EndpointError, PermissionRefused):
                # The account, the endpoint or the token's permission, not this month: the
                # stream waits (a permission refusal holds the account's lookups).
                raise
            except PermanentError as exc:
                # Asked in two months (a webhook near a month's start without the call's start
                # time), a refusal in the wrong month must not end the lookup: ask the other.
                refusals.append(exc)
                continue
            if isinstance(found, Reject):  # a malformed CDR: kept in rejects, the lookup is over
                return LookupOutcome("done", rejects=(found,))
            if isinstance(found, CallRecord):
                return LookupOutcome("done", records=(found,))
            answers.append(found)
        if refusals and not answers:
            raise refusals[0]  # every month asked refused it
        following = self._schedule(
            item, item.attempts + 1, now + self._account.option("lookup_interval")
        )
        if following is None:
            return LookupOutcome("gave_up", note=f"no CDR after {attempts} attempts")
        # Expected for the first attempts: VCC processes (costs) a call before serving it.
        log.debug("vcclive.cdr_not_yet", account=self._account.name, attempt=item.attempts + 1)
        note = f"CDR not processed yet ({'; '.join(dict.fromkeys(answers))})"
        return LookupOutcome("retry", next_attempt_at=following, note=note)

    async def _get_cdr(self, year: int, month: int, uuid: str) -> CallRecord | Reject | str:
        """The CDR, a Reject (malformed), or how VCC said "not yet"."""
        fetched_at = dt.datetime.now(dt.UTC)

        def parse(response: Response) -> CallRecord | Reject | str:
            if response.status == 404:
                return "404"  # not processed yet: VCC costs a call before it serves its CDR
            try:
                found = parse_cdr(
                    response.body,
                    account=self._account.name,
                    stream=self._stream,
                    zone=self._zone,
                    fetched_at=fetched_at,
                )
            except Refused as exc:
                # The docs do not say how "not processed yet" is answered: a 200 whose errors
                # say "not found" (or nothing recognisable) is read as that too, and retried on
                # the schedule (bounded: 20 attempts). A real refusal is not: asking again
                # would spend 20 requests over 100 minutes on the same answer.
                return self._refusal(exc)

            except RECORD_ERRORS as exc:
                payload = response.body.decode("utf-8", errors="replace")
                return Reject(
                    VENDOR, self._account.name, self._stream, uuid, str(exc), payload, fetched_at
                )
            return "empty answer" if found is None else found

        path = cdr_path(year, month, uuid)
        return await self._send(
            "GET", path, group="lookup", name="cdr", parse=parse, accept=NOT_FOUND
        )

    def _refusal(self, exc: Refused) -> str:
        """How VCC said "not yet"; a refusal of the credentials is an ``AuthError`` (the
        stream waits), of a permission a ``PermissionRefused`` (the account's CDR lookups
        wait), of a malformed request a ``PermanentError`` (the lookup ends with the reason)."""
        kind = cdr_errors_kind(exc.errors)
        endpoint = self._endpoint("cdr")
        if kind == "auth":
            raise AuthError(
                f'{endpoint}: VCC Live refused the credentials (vendor says "{exc.said}"); '
                "lookups wait: check the account's username and api_key"
            )
        if kind == "permission":
            # Whether VCC refuses the token the endpoint or this call's project is undocumented:
            # read as the endpoint (every lookup would cost a request for the same answer), so
            # the account's CDR lookups wait (permission_hold) rather than end one by one.
            raise PermissionRefused(
                f"{endpoint}: VCC Live refused the API token this CDR lookup (vendor says "
                f'"{exc.said}"); give the API token access to the CDR API and the call\'s '
                "project to have calls looked up",
                hold_s=self._account.option("permission_hold").total_seconds(),
            )
        if kind == "malformed":
            raise PermanentError(
                f'{endpoint}: VCC Live called the request malformed (vendor says "{exc.said}");'
                " the lookup ends: the call's uuid or month is not one VCC accepts"
            )
        return f'vendor says "{exc.said}"'

    async def _record(self, item: LookupItem, now: dt.datetime) -> LookupOutcome:
        ids = _record_ids(item)
        if ids is None:
            return LookupOutcome(
                "gave_up", counted=False, note="lookup names no projectid/numberid"
            )
        found = await self._get_record(*ids)
        if found is None:
            if item.attempts + 1 >= self._account.option("lookup_attempts"):
                return LookupOutcome("gave_up", note="record not found (404) on every attempt")
            return LookupOutcome(
                "retry",
                next_attempt_at=now + self._account.option("lookup_interval"),
                note="record not found yet (404)",
            )
        events, records = found
        return LookupOutcome("done", records=records, events=events)

    async def _get_record(
        self, projectid: int, numberid: int
    ) -> tuple[tuple[CallEvent, ...], tuple[CallRecord, ...]] | None:
        fetched_at = dt.datetime.now(dt.UTC)

        def parse(
            response: Response,
        ) -> tuple[tuple[CallEvent, ...], tuple[CallRecord, ...]] | None:
            if response.status == 404:
                return None
            return parse_record_detail(
                response.body,
                account=self._account.name,
                projectid=projectid,
                numberid=numberid,
                zone=self._zone,
                fetched_at=fetched_at,
            )

        path = record_path(projectid, numberid)
        return await self._send(
            "GET", path, group="records", name="record", parse=parse, accept=NOT_FOUND
        )


def _record_ids(item: LookupItem) -> tuple[int, int] | None:
    """(projectid, numberid) from the context, else from the key "projectid/numberid/uuid"."""
    projectid, numberid = item.context.get("projectid"), item.context.get("numberid")
    if isinstance(projectid, int) and isinstance(numberid, int):
        return projectid, numberid
    head, _, tail = item.call_key.partition("/")
    tail = tail.partition("/")[0]
    if head.isdecimal() and tail.isdecimal():
        return int(head), int(tail)
    return None


class VccOutbox(_Client):
    """``POST /v2/projects/{projectid}/records``: outbox rows delivered as VCC Live records."""

    async def add_records(self, projectid: int, payloads: Sequence[Mapping[str, Any]]) -> list[int]:
        """Add ``payloads`` as records of ``projectid``; their numberids, in payload order.

        ``PermanentError`` when VCC refused before storing anything (4xx, or errors with an
        empty answer); ``AddInDoubt`` when the answer leaves unclear which records were added
        (errors next to numberids, a wrong count); ``TransientError`` for a network failure
        or 5xx. After the last two the records may or may not exist: the request is never
        repeated here (see ``ADD_POLICY``).
        """
        if not payloads:
            return []
        body = add_records_body(payloads)
        endpoint = self._endpoint("add_record")

        def parse(response: Response) -> list[int]:
            return parse_add_result(response.body, len(payloads), endpoint=endpoint)

        return await self._send(
            "POST", records_path(projectid), group="records", name="add_record", parse=parse,
            body=body, policy=ADD_POLICY,
        )  # fmt: skip

    async def record_data(self, projectid: int, numberid: int) -> Mapping[str, Any] | None:
        """A record's form data (``GET .../records/{numberid}``), or None when VCC has no such
        record in the project (404): how the outbox finds records whose add answer was lost."""
        endpoint = self._endpoint("record")

        def parse(response: Response) -> dict[str, Any] | None:
            if response.status == 404:
                return None
            return parse_record_data(response.body, endpoint=endpoint)

        path = record_path(projectid, numberid)
        return await self._send(
            "GET", path, group="records", name="record", parse=parse, accept=NOT_FOUND
        )
