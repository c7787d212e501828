"""VCC Live (Database API v2): pure parsing of the envelope, CDRs, day pages and record details.

No I/O and no clock: every instant comes in as a parameter. ``vcclive.py`` holds the webhook
and Add record parsing, the thin clients, and re-exports these names; the value readers here
(``as_text``, ``read_stamp``, ...) are shared with it. Vendor behaviour answered here
(vendor-notes.md, section 1):
- every answer is HTTP 200 with ``{"response": ..., "errors": [...]}``, served as
  ``text/plain; charset=utf-8`` although it is JSON: the body is parsed whatever the content
  type says, and a non-empty ``errors`` is a refusal even under HTTP 200;
- ``totalCount`` of a day page is a STRING ("38"); the record detail's is a number;
- records carry local times (``start_ts``, ``billing_ts``: "YYYY-MM-DD hh:mm:ss", the record
  detail page documents "hh-mm-ss") and, on the CDR endpoints, UTC twins (``*_utc``): the UTC
  twin wins where present, so no daylight-saving guess is needed;
- ``billingtime`` is the whole call after ringing (IVR, queue and talk): the call ends at
  ``billing_ts + billingtime`` and lasts ``ringtime + billingtime``;
- ``dispositionstatus``'s key is UNKNOWN: it stays raw in ``raw``, the status is derived from
  ``talktime`` instead.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from cdrsync import jsontext
from cdrsync.errors import RECORD_ERRORS, BadPageError, ParseError, PermanentError
from cdrsync.model import CallEvent, CallRecord, Page, Reject
from cdrsync.vendors.acefone import digest

VENDOR = "vcclive"
INT4_MAX = 2**31 - 1
_MAX_ERROR_TEXT = 200
_SECRET_ASSIGNMENT = re.compile(
    r"(?i)\b(token|api_?key|apikey|password|secret|authorization)(\s*[=:]\s*)\S+"
)
DIRECTIONS = {"inbound": "inbound", "outbound": "outbound", "in": "inbound", "out": "outbound"}


# ---------------------------------------------------------------------------- envelope


def _error_text(errors: Any) -> str:
    """The vendor's errors as one short line (their shape is undocumented: strings or objects)."""
    if isinstance(errors, dict):
        items = list(errors.values())
    else:
        items = list(errors) if isinstance(errors, list) else [errors]
    parts: list[str] = []
    for item in items[:3]:
        if isinstance(item, dict):
            text = next(
                (str(item[k]) for k in ("message", "msg", "error", "description") if k in item),
                jsontext.reject_text(item),
            )
            code = item.get("code")
            parts.append(f"{code}: {text}" if code is not None else text)
        else:
            parts.append(str(item))
    line = " ".join(_SECRET_ASSIGNMENT.sub(r"\1\2***", "; ".join(parts)).split())
    if len(line) > _MAX_ERROR_TEXT:
        line = line[: _MAX_ERROR_TEXT - 1] + "…"
    return line or "(no message)"


class Refused(PermanentError):
    """A VCC Live answer whose ``errors`` is filled; ``said`` is the vendor's text, ``errors``
    the errors as sent (``vcclive_errors`` reads them)."""

    def __init__(self, message: str, said: str, errors: Any = None) -> None:
        super().__init__(message)
        self.said = said
        self.errors = errors


def unwrap(body: bytes, *, endpoint: str) -> Any:
    """The ``response`` of a VCC Live answer; a non-empty ``errors`` is a ``PermanentError``.

    VCC serves JSON as ``text/plain``, so the content type is ignored. A body that is not JSON
    (or not the envelope) is a ``BadPageError``: a cut or garbled answer, fetched again.
    """
    try:
        doc = jsontext.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadPageError(
            f"{endpoint}: VCC Live answer is not valid JSON ({exc.msg}); fetching it again"
        ) from None
    if not isinstance(doc, dict) or not ("response" in doc or "errors" in doc):
        raise BadPageError(
            f"{endpoint}: VCC Live answer has no response/errors envelope; fetching it again"
        )
    errors = doc.get("errors")
    # Success is HTTP 200 with an empty `errors`; a refusal is HTTP 200 with a filled one.
    if errors:
        said = _error_text(errors)
        raise Refused(
            f'{endpoint}: VCC Live refused the request (vendor says: "{said}"); '
            "not retried, check the account, project and request",
            said,
            errors,
        )
    return doc.get("response")


# ---------------------------------------------------------------------------- values


def as_text(value: Any) -> str | None:
    """A scalar as stripped text; None for null, empty, objects and arrays."""
    if value is None or isinstance(value, dict | list):
        return None
    text = (value if type(value) is str else str(value)).strip()
    return text or None


def as_whole(value: Any) -> int | None:
    """A whole number from an int, an integral float or a digit string; None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return int(value.strip())
    return None


def _int(record: Mapping[str, Any], field: str) -> int | None:
    """A whole-number field within PostgreSQL's int4; ``ParseError`` for anything else."""
    value = record.get(field)
    if value is None or value == "":
        return None
    number = as_whole(value)
    if number is None:
        raise ParseError(f"{field}={str(value)[:40]!r} is not a whole number")
    if not -INT4_MAX <= number <= INT4_MAX:
        # The columns are PostgreSQL integers: a wild value would fail the whole batch, every
        # cycle, instead of rejecting this one record.
        raise ParseError(f"{field}={number} is out of range")
    return number


def soft_int(value: Any) -> int | None:
    """An id of an event: a whole number within int4, else None (the raw event keeps it)."""
    number = as_whole(value)
    return number if number is not None and -INT4_MAX <= number <= INT4_MAX else None


def read_stamp(value: Any, field: str) -> dt.datetime | None:
    """A VCC time string as a datetime (naive unless it carries an offset); None if absent.

    Takes "YYYY-MM-DD hh:mm:ss", the "YYYY-MM-DD hh-mm-ss" that the record detail page
    documents, and ISO 8601 with an offset (events' ``next_calldate`` shows that form).
    """
    if value is None:
        return None
    if not isinstance(value, str):
        raise ParseError(f"{field}={str(value)[:40]!r} is not a time string")
    text = value.strip()
    # An unset MySQL DATETIME reads "0000-00-00 00:00:00": no time, not an error.
    if not text or text.startswith("0000-00-00"):
        return None
    if len(text) == 19 and text[4] == text[7] == "-" and text[10] in " T":
        if text[13] == text[16] and text[13] in ":-":
            clock = f"{text[11:13]}:{text[14:16]}:{text[17:]}"
            with contextlib.suppress(ValueError):
                return dt.datetime.fromisoformat(f"{text[:10]} {clock}")
    elif len(text) > 19 and text[10] in " T" and text[4] == text[7] == "-":
        with contextlib.suppress(ValueError):
            return dt.datetime.fromisoformat(text)
    raise ParseError(f"{field}={text[:40]!r} is not a 'YYYY-MM-DD hh:mm:ss' time")


def to_utc(stamp: dt.datetime, field: str, zone: dt.tzinfo) -> dt.datetime:
    """``stamp`` in UTC, reading a naive one in ``zone``.

    A local time repeated when clocks go back reads as its first occurrence: one reason the
    ``*_utc`` twins are preferred wherever VCC sends them.
    """
    try:
        aware = stamp if stamp.tzinfo is not None else stamp.replace(tzinfo=zone)
        return aware.astimezone(dt.UTC)
    except OverflowError:  # e.g. 0001-01-01 00:00 east of UTC is before year 1 in UTC
        raise ParseError(f"{field}={stamp} is out of range") from None


def _when(
    record: Mapping[str, Any], field: str, zone: dt.tzinfo
) -> tuple[dt.datetime | None, dt.datetime | None]:
    """(UTC instant, local stamp) of ``field``: its ``_utc`` twin first, else the local value."""
    local = read_stamp(record.get(field), field)
    utc = read_stamp(record.get(f"{field}_utc"), f"{field}_utc")
    if utc is not None:
        return to_utc(utc, f"{field}_utc", dt.UTC), local
    if local is not None:
        return to_utc(local, field, zone), local
    return None, None


def _nearest(
    local: dt.datetime | None, zone: dt.tzinfo, anchor: dt.datetime | None
) -> dt.datetime | None:
    """The UTC instant of a naive ``local`` time that is nearest ``anchor`` when the time is
    ambiguous in ``zone`` (repeated when clocks go back); None when there is nothing to choose."""
    if local is None or local.tzinfo is not None or anchor is None:
        return None
    try:
        first, second = (local.replace(tzinfo=zone, fold=f).astimezone(dt.UTC) for f in (0, 1))
    except OverflowError:
        return None
    if first == second:
        return None
    return min((first, second), key=lambda instant: abs(instant - anchor))


def parties(
    direction: str | None, source: str | None, destination: str | None
) -> tuple[str | None, str | None]:
    """(customer, line): the caller is the customer inbound, the called number outbound."""
    if direction == "inbound":
        return source, destination
    if direction == "outbound":
        return destination, source
    return None, None  # no guess: the raw record keeps both numbers


def agent_of(userid: int | None) -> str | None:
    """The agent column of a user id."""
    # -1 is the system (the CDR page); -2 a supervisor (the record detail page): no agent.
    return None if userid is None or userid < 0 else str(userid)


def canonical(record: Any) -> bytes:
    """The record as sorted-key JSON; a NUL character is a ``ParseError``.

    PostgreSQL stores no NUL in text or jsonb: kept, it would fail the whole batch on every
    cycle, so the record goes to rejects instead.
    """
    raw = jsontext.canonical(record)
    if b"\\u0000" in raw:
        raise ParseError("record contains a NUL character, which PostgreSQL cannot store")
    return raw


# ---------------------------------------------------------------------------- CDRs


def _seconds(record: Mapping[str, Any]) -> tuple[int | None, int | None, int | None]:
    """(ringtime, billingtime, talktime), checked."""
    return _int(record, "ringtime"), _int(record, "billingtime"), _int(record, "talktime")


def _duration(ring: int | None, billing: int | None) -> int | None:
    if ring is None and billing is None:
        return None
    total = (ring or 0) + (billing or 0)
    if total > INT4_MAX:
        raise ParseError(f"ringtime + billingtime = {total} is out of range")
    return total


def normalize(
    record: Mapping[str, Any],
    *,
    account: str,
    zone: dt.tzinfo,
    fetched_at: dt.datetime,
    source: str,
) -> CallRecord:
    """One VCC Live CDR as a CallRecord; ``ParseError`` says what is wrong with it.

    ``ended_at`` is ``billing_ts + billingtime``: VCC documents ``billing_ts`` as the instant
    the line connected and ``billingtime`` as everything after it (IVR, queue, talk) excluding
    ring, so their sum is the hang-up, while ``start_ts + ringtime + billingtime`` would stack
    two rounded values on the start. Without ``billing_ts`` it falls back to that sum.
    ``answered_at`` is ``billing_ts`` when someone talked (an inbound call's agent picked up
    ``beforequeuetime + queuetime`` later; the raw record has both).
    """
    key = as_text(record.get("uuid"))
    if key is None:
        raise ParseError("record has no uuid")
    started_at, start_local = _when(record, "start_ts", zone)
    if started_at is None:
        raise ParseError("record has no start time (start_ts)")
    billing_at, _ = _when(record, "billing_ts", zone)
    ring, billing, talk = _seconds(record)
    if record.get("start_ts_utc") is None and record.get("billing_ts_utc") is not None:
        # VCC documents no start_ts_utc, only billing_ts_utc: a start_ts in the hour repeated
        # when clocks go back is told apart by the UTC connect time, ringtime after it.
        anchor = billing_at - dt.timedelta(seconds=ring or 0) if billing_at else None
        started_at = _nearest(start_local, zone, anchor) or started_at
    ended_at = None
    if billing_at is not None and billing is not None:
        ended_at = billing_at + dt.timedelta(seconds=billing)
    elif ring is not None and billing is not None:
        ended_at = started_at + dt.timedelta(seconds=ring + billing)
    raw = canonical(record)
    direction = DIRECTIONS.get((as_text(record.get("direction")) or "").lower())
    customer, line = parties(
        direction, as_text(record.get("source")), as_text(record.get("destination"))
    )
    agent = agent_of(_int(record, "userid"))
    if start_local is not None and start_local.tzinfo is None:
        local_date = start_local.date()  # the day partition VCC lists the call under
    else:
        local_date = started_at.astimezone(zone).date()
    return CallRecord(
        vendor=VENDOR,
        account=account,
        call_key=key,
        call_id=as_text(record.get("numberid")),
        call_uuid=key,
        direction=direction,
        status=None if talk is None else ("answered" if talk > 0 else "missed"),
        started_at=started_at,
        answered_at=billing_at if talk else None,
        ended_at=ended_at,
        duration_s=_duration(ring, billing),
        talk_s=talk,
        ring_s=ring,
        # The CDR names its agent by user id only; the webhook's name is on the push copy.
        agent_name=agent,
        agent_number=agent,
        customer_number=customer,
        line_number=line,
        department=as_text(record.get("projectid")),
        hangup_cause=as_text(record.get("dc")),
        recording_url=None,
        service=as_text(record.get("dialermode")),
        description=None,
        local_date=local_date,
        raw=raw.decode(),
        content_hash=digest(raw),
        fetched_at=fetched_at,
        source=source,
    )


def _normalize_item(
    item: Any, *, account: str, zone: dt.tzinfo, fetched_at: dt.datetime, source: str
) -> CallRecord:
    if not isinstance(item, dict):
        raise ParseError("record is not a JSON object")
    return normalize(item, account=account, zone=zone, fetched_at=fetched_at, source=source)


def _normalize_rows(
    rows: Sequence[Any],
    *,
    account: str,
    stream: str,
    zone: dt.tzinfo,
    fetched_at: dt.datetime,
    source: str,
) -> tuple[list[CallRecord], list[Reject], list[str]]:
    records: list[CallRecord] = []
    rejects: list[Reject] = []
    keys: list[str] = []
    for row in rows:
        key = as_text(row.get("uuid")) if isinstance(row, dict) else None
        if key is not None:
            keys.append(key)
        try:
            records.append(
                _normalize_item(
                    row, account=account, zone=zone, fetched_at=fetched_at, source=source
                )
            )
        except RECORD_ERRORS as exc:
            payload = jsontext.reject_text(row)
            rejects.append(Reject(VENDOR, account, stream, key, str(exc), payload, fetched_at))
    return records, rejects, keys


def _total(value: Any, endpoint: str) -> int:
    # The day page's totalCount arrives as a STRING ("38"); the record detail's as a number.
    number = as_whole(value)
    if number is None or number < 0:
        raise BadPageError(
            f"{endpoint}: VCC Live page has no usable totalCount ({str(value)[:20]!r}); "
            "fetching it again"
        )
    return number


def parse_day_page(
    body: bytes, *, account: str, stream: str, zone: dt.tzinfo, fetched_at: dt.datetime
) -> Page:
    """One page of ``GET /v2/cdrs/Y/M/D``: keys in row order, a bad record becomes a Reject."""
    endpoint = f"{account}/vcclive.cdrs"
    response = unwrap(body, endpoint=endpoint)
    if response in (None, []):
        # PHP encodes an empty map as [] (json_encode): an empty answer, not a broken one.
        return Page(total=0, size=0, records=(), rejects=(), keys=())
    if not isinstance(response, dict) or not isinstance(response.get("rows"), list):
        raise BadPageError(f"{endpoint}: VCC Live page has no rows list; fetching it again")
    total = _total(response.get("totalCount"), endpoint)
    rows = response["rows"]
    records, rejects, keys = _normalize_rows(
        rows, account=account, stream=stream, zone=zone, fetched_at=fetched_at, source="list"
    )
    return Page(
        total=total,
        size=len(rows),
        records=tuple(records),
        rejects=tuple(rejects),
        keys=tuple(keys),
    )


def parse_cdr(
    body: bytes, *, account: str, stream: str, zone: dt.tzinfo, fetched_at: dt.datetime
) -> CallRecord | None:
    """The CDR of ``GET /v2/cdr/Y/M/{uuid}`` (source "lookup"), or None when VCC has none yet.

    HTTP 404 (not processed yet) never gets here: the client catches it. An empty
    ``response`` is the same news under HTTP 200. A malformed CDR raises ``ParseError``.
    """
    response = unwrap(body, endpoint=f"{account}/vcclive.cdr")
    if isinstance(response, list):
        # The page calls the body a "CDR array"; the example shows one object. Take either.
        response = next((item for item in response if isinstance(item, dict)), None)
    if not response:
        return None
    if not isinstance(response, dict):
        raise ParseError("the CDR answer is not a JSON object")
    return normalize(response, account=account, zone=zone, fetched_at=fetched_at, source="lookup")


# ---------------------------------------------------------------------------- record detail


def _event(
    item: Mapping[str, Any],
    seq: int,
    *,
    account: str,
    projectid: int,
    numberid: int,
    zone: dt.tzinfo,
) -> CallEvent:
    created_at = None
    with contextlib.suppress(ParseError):
        created_at, _ = _when(item, "create_date", zone)
    return CallEvent(
        vendor=VENDOR,
        account=account,
        projectid=projectid,
        numberid=numberid,
        seq=seq,
        call_uuid=as_text(item.get("uuid")),
        type=as_text(item.get("type")),
        dispositionid=soft_int(item.get("dispositionid")),
        state=as_text(item.get("state")),
        userid=soft_int(item.get("userid")),
        description=as_text(item.get("description")),
        created_at=created_at,
        raw=canonical(item).decode(),
    )


def parse_record_detail(
    body: bytes,
    *,
    account: str,
    projectid: int,
    numberid: int,
    zone: dt.tzinfo,
    fetched_at: dt.datetime,
) -> tuple[tuple[CallEvent, ...], tuple[CallRecord, ...]]:
    """``GET /v2/projects/{p}/records/{n}`` as (events, the record's CDRs as "lookup" copies).

    One CallEvent per ``events`` entry, ``seq`` its index. An event that is not an object or
    holds a NUL is skipped (its index stays unused); an unreadable ``create_date`` leaves
    ``created_at`` None. A malformed CDR row is skipped: the day list carries the same CDR and
    rejects it there with its reason. ``data`` and ``contacts`` (personal data) are not read.
    """
    response = unwrap(body, endpoint=f"{account}/vcclive.record")
    if not isinstance(response, dict):
        raise BadPageError(f"{account}/vcclive.record: VCC Live record answer is not an object")
    events: list[CallEvent] = []
    items = response.get("events")
    for seq, item in enumerate(items if isinstance(items, list) else []):
        if isinstance(item, dict):
            with contextlib.suppress(ParseError):
                events.append(
                    _event(
                        item, seq, account=account, projectid=projectid, numberid=numberid,
                        zone=zone,
                    )
                )  # fmt: skip
    cdrs = response.get("cdrs")
    rows = cdrs.get("rows") if isinstance(cdrs, dict) else cdrs
    records, _, _ = _normalize_rows(
        rows if isinstance(rows, list) else [],
        account=account,
        stream="lookup",
        zone=zone,
        fetched_at=fetched_at,
        source="lookup",
    )
    return tuple(events), tuple(records)


def parse_record_data(body: bytes, *, endpoint: str) -> dict[str, Any]:
    """The ``data`` (form values) of a record detail answer; ``{}`` when it has none.

    The outbox compares it with what it sent when an Add record answer was lost.
    """
    response = unwrap(body, endpoint=endpoint)
    if not isinstance(response, dict):
        raise BadPageError(f"{endpoint}: VCC Live record answer is not an object")
    data = response.get("data")
    # PHP encodes an empty map as []: a record without data.
    return dict(data) if isinstance(data, dict) else {}
