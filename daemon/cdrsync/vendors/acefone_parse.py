"""Acefone list pages, pure: request parameters, page parsing, record normalizing.

The vendor behaviour each rule answers is described in ``cdrsync.vendors.acefone`` (the client)
and beside the rule. No clock, no I/O: ``fetched_at`` is passed in.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import operator
from collections.abc import Container, Mapping
from typing import Any

import msgspec
import orjson

from cdrsync import jsontext
from cdrsync.errors import RECORD_ERRORS, BadPageError, ParseError
from cdrsync.model import CallRecord, Page, Reject, Window
from cdrsync.vendors import acefone_split, localtime

VENDOR = "acefone"
LOCAL_FORMAT = "%Y-%m-%d %H:%M:%S"
INT4_MAX = 2**31 - 1


# ---------------------------------------------------------------------------- pure: requests


def window_params(window: Window, page: int, page_size: int, zone: dt.tzinfo) -> dict[str, str]:
    """Query parameters for one page of a window, in the account's local time."""
    return {
        "from_date": window.start.astimezone(zone).strftime(LOCAL_FORMAT),
        "to_date": window.end.astimezone(zone).strftime(LOCAL_FORMAT),
        "page": str(page),
        "limit": str(page_size),
    }


# ---------------------------------------------------------------------------- pure: parsing


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = (value if type(value) is str else str(value)).strip()
    return text or None


# The text columns of ``calls`` after ``description``, in CALL_COLUMNS order, with the Acefone
# field each one comes from, read in one C call: a function call per field was a tenth of a
# record's normalization.
_TEXT_FIELDS = operator.attrgetter(
    "agent_name",
    "agent_number",
    "client_number",
    "did_number",
    "department_name",
    "hangup_cause",
    "recording_url",
    "service",
    "description",
)


def _texts(values: tuple[Any, ...]) -> list[str | None]:
    out: list[str | None] = []
    for value in values:
        if value is None:
            out.append(None)
        elif type(value) is str:
            out.append(value.strip() or None)
        else:
            out.append(_text(value))
    return out


def _int(value: Any, field: str) -> int | None:
    if type(value) is int and -INT4_MAX <= value <= INT4_MAX:  # the common case, first
        return value
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ParseError(f"{field} is a boolean, expected a number of seconds")
    number: int | None = None
    if isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and value.strip().isdecimal():
        number = int(value.strip())
    if number is None:
        raise ParseError(f"{field}={str(value)[:40]!r} is not a whole number")
    if not -INT4_MAX <= number <= INT4_MAX:
        # The column is a PostgreSQL integer: a wild value would fail the whole batch, every
        # cycle, instead of rejecting this one record.
        raise ParseError(f"{field}={number} is out of range for seconds")
    return number


def _local(value: Any, field: str, zone: dt.tzinfo) -> dt.datetime:
    text = value.strip() if type(value) is str else str(value).strip()
    return localtime.read(text, field, zone)[0]


def _ring_seconds(value: Any) -> int | None:
    # Acefone sends agent_ring_time as a string of seconds, or "N.A." when no agent rang.
    if type(value) is str:
        return int(value) if value.strip().isdecimal() else None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None


def _answered_at(flow: Any, ended_at: dt.datetime | None, talk_s: int | None) -> dt.datetime | None:
    # call_flow carries an entry {"anstime": <epoch>, "time": <epoch>}: an absolute instant, so it
    # needs no time-zone assumption. Fall back to end minus talk time.
    anstime = acefone_split.first_anstime(flow)
    if anstime is not msgspec.UNSET:
        with contextlib.suppress(TypeError, ValueError, OverflowError, OSError):
            return dt.datetime.fromtimestamp(int(anstime), dt.UTC)
    if ended_at is not None and talk_s:
        return ended_at - dt.timedelta(seconds=talk_s)
    return None


def digest(raw: bytes) -> bytes:
    """The content hash of a record's bytes: 16 bytes of SHA-256. Python's blake2b is its
    portable C code; SHA-256 is OpenSSL's, with the CPU's SHA instructions where it has them:
    1.5 µs for a 1.8 KB record against blake2b's 2.3. Rows hashed before (blake2b) are equal
    as ``jsonb``, so a re-read still writes nothing to them."""
    return hashlib.sha256(raw).digest()[:16]


def _lower(value: Any) -> str | None:
    if type(value) is str:
        return value.strip().lower() or None
    text = _text(value)
    return text.lower() if text else None


def normalize(
    record: Mapping[str, Any],
    *,
    account: str,
    zone: dt.tzinfo,
    fetched_at: dt.datetime,
) -> CallRecord:
    """One Acefone record as a CallRecord, ``raw`` the record written as sorted-key JSON;
    ``ParseError`` says what is wrong with it."""
    return normalize_fields(
        acefone_split.from_mapping(record), account=account, zone=zone, fetched_at=fetched_at,
        whole=record,
    )  # fmt: skip


def normalize_fields(
    f: acefone_split.Fields,
    *,
    account: str,
    zone: dt.tzinfo,
    fetched_at: dt.datetime,
    stored: tuple[str, bytes] | None = None,
    whole: Mapping[str, Any] | None = None,
) -> CallRecord:
    """``normalize`` of the fields read; ``raw`` and its content hash are ``stored`` when the
    record's own bytes are stored as the vendor sent them (``acefone_split.plain``), else
    ``whole`` (the decoded record) is written as sorted-key JSON."""
    key = _text(f.id)
    if key is None:
        raise ParseError("record has no id")
    date, time_ = f.date, f.time
    if date in (None, "") or time_ in (None, ""):
        raise ParseError("record has no start date/time")
    started_text = f"{date} {time_}".strip()
    started_at, local_date = localtime.read(started_text, "date+time", zone)
    end_stamp = f.end_stamp
    ended_at = _local(end_stamp, "end_stamp", zone) if end_stamp not in (None, "") else None
    duration_s = _int(f.call_duration, "call_duration")
    talk_s = _int(f.answered_seconds, "answered_seconds")
    if stored is None:
        raw = jsontext.canonical(whole)
        if b"\\u0000" in raw:
            # PostgreSQL stores no NUL character in text or jsonb; kept, it would fail the
            # whole batch on every cycle. The record goes to rejects instead.
            raise ParseError("record contains a NUL character, which PostgreSQL cannot store")
        stored = (raw.decode(), digest(raw))
    # Positional, in CALL_COLUMNS order: keyword construction of a 27-field tuple per call was
    # a measurable share of a backfill's CPU.
    return CallRecord._make(
        (
            VENDOR,
            account,
            key,
            _text(f.call_id),
            _text(f.uuid),
            _lower(f.direction),
            _lower(f.status),
            started_at,
            _answered_at(f.call_flow, ended_at, talk_s),
            ended_at,
            duration_s,
            talk_s,
            _ring_seconds(f.agent_ring_time),
            *_texts(_TEXT_FIELDS(f)),
            local_date,
            *stored,
            fetched_at,
            "list",
        )
    )


def normalize_item(
    item: Any, *, account: str, zone: dt.tzinfo, fetched_at: dt.datetime
) -> CallRecord:
    """``normalize`` for any JSON value a page holds (a non-object is a ParseError)."""
    if not isinstance(item, dict):
        raise ParseError("record is not a JSON object")
    return normalize(item, account=account, zone=zone, fetched_at=fetched_at)


def _count(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdecimal():
        return int(value)
    raise BadPageError(f"Acefone page has no usable count ({str(value)[:20]!r}); fetching it again")


def record_hash(data: bytes) -> bytes:
    """The content hash ``parse_page`` gives the record whose bytes on a page are ``data``."""
    if acefone_split.plain(data):
        return digest(data)
    return digest(jsontext.canonical(jsontext.loads(data)))


class _Undecodable(Exception):
    """A record the split page holds that the full decode refuses: the page is read whole."""


def parse_page(
    body: bytes,
    *,
    account: str,
    stream: str,
    zone: dt.tzinfo,
    fetched_at: dt.datetime,
    known: Container[bytes] = frozenset(),
) -> Page:
    """A whole list page. A page that is not valid JSON raises ``BadPageError`` (it is fetched
    again); a single bad record becomes a ``Reject`` and the rest of the page is kept.

    ``known``: content hashes of stored list copies; a record whose bytes hash to one of them
    is identical to its copy and is only counted (``Page.unchanged``) and keyed."""
    parts = acefone_split.split(body)
    if parts is not None:
        count, items = parts
        with contextlib.suppress(_Undecodable):
            return _parse_split(
                count, items, known, account=account, stream=stream, zone=zone, at=fetched_at
            )
    try:
        doc = jsontext.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadPageError(
            f"Acefone page is not valid JSON ({exc.msg}); fetching it again"
        ) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("results"), list):
        raise BadPageError("Acefone page has no results list; fetching it again")
    return _parse_items(
        _count(doc.get("count")), [(item, None) for item in doc["results"]],
        account=account, stream=stream, zone=zone, at=fetched_at,
    )  # fmt: skip


def _parse_split(
    count: Any,
    items: list[Any],
    known: Container[bytes],
    *,
    account: str,
    stream: str,
    zone: dt.tzinfo,
    at: dt.datetime,
) -> Page:
    total = _count(count)
    decoded: list[tuple[Any, tuple[str, bytes] | None]] = []
    skipped: list[str] = []
    for item in items:
        data = bytes(item)
        content_hash = digest(data)
        if content_hash in known:
            # The very bytes of a stored list copy: the same record, nothing to normalize.
            key = _text(acefone_split.key(data))
            if key is not None:
                skipped.append(key)
                continue
        try:
            text = data.decode()  # PostgreSQL takes UTF-8 only; the full decode refuses the page
        except UnicodeDecodeError:
            raise _Undecodable from None
        fields = acefone_split.fields(data) if acefone_split.plain(data) else None
        if fields is not None:
            decoded.append((fields, (text, content_hash)))
            continue
        try:
            decoded.append((jsontext.loads(data), None))
        except orjson.JSONDecodeError:
            raise _Undecodable from None
    page = _parse_items(total, decoded, account=account, stream=stream, zone=zone, at=at)
    if not skipped:
        return page
    return dataclasses.replace(
        page, size=len(items), keys=(*skipped, *page.keys), unchanged=len(skipped)
    )


def _parse_items(
    total: int,
    items: list[tuple[Any, tuple[str, bytes] | None]],
    *,
    account: str,
    stream: str,
    zone: dt.tzinfo,
    at: dt.datetime,
) -> Page:
    """``items``: each record decoded whole, or its fields read (``acefone_split.Fields``)
    with its own bytes, which are stored as they are."""
    records: list[CallRecord] = []
    rejects: list[Reject] = []
    keys: list[str] = []
    for item, stored in items:
        if stored is not None:
            key = _text(item.id)
        else:
            key = _text(item.get("id")) if isinstance(item, dict) else None
        if key is not None:
            keys.append(key)
        try:
            if stored is None:
                records.append(normalize_item(item, account=account, zone=zone, fetched_at=at))
            else:
                records.append(
                    normalize_fields(item, account=account, zone=zone, fetched_at=at, stored=stored)
                )
        except RECORD_ERRORS as exc:
            payload = stored[0] if stored is not None else jsontext.reject_text(item)
            rejects.append(Reject(VENDOR, account, stream, key, str(exc), payload, at))
    return Page(
        total=total,
        size=len(items),
        records=tuple(records),
        rejects=tuple(rejects),
        keys=tuple(keys),
    )
