"""Ozonetel CloudAgent: pure reading of its answers (status strings, records, pages, pushes).

No I/O here: ``vendors/ozonetel.py`` holds the request rules and the thin clients and re-exports
everything below. Vendor behaviour this answers:
- every API answers HTTP 200 with ``status`` as a STRING ("success", "false", "fail", "error")
  and the reason in ``message``: the status code says nothing, the body says everything;
- times are naive IST strings "YYYY-MM-DD HH:MM:SS" (``StartTime`` may also be a bare time beside
  ``CallDate``) and durations are "HH:MM:SS" strings;
- missing values are often the STRING "None" (``"AgentName": "None"``, ``"Skill": "None"``);
- ``UCID`` is one leg, ``CallID`` the logical call several legs share (bulk shape); the
  CallBacks API and the push carry ``monitorUCID`` and maybe ``UCID``. ``monitorUCID`` may be
  the leg's own UCID or, for a transferred call, the first leg's, shared by every leg (the
  bulk filters take ``ucid`` and ``monitorUCID`` apart; Ozonetel's agent toolbar passes both
  for a transfer): a leg is keyed by ``UCID`` wherever a copy carries it (``callback_key``);
- callback records and pushes echo the account's ``Apikey``: ``scrub`` drops it from every raw
  record, reject payload and message before anything is stored or logged.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import re
from collections.abc import Callable, Mapping
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from cdrsync import jsontext
from cdrsync.errors import (
    RECORD_ERRORS,
    AuthError,
    BadPageError,
    ParseError,
    PermanentError,
    RateLimited,
    UnexpectedAnswer,
)
from cdrsync.model import CallRecord, Page, Reject
from cdrsync.vendors.acefone import digest

VENDOR = "ozonetel"
IST = ZoneInfo("Asia/Kolkata")
LOCAL_FORMAT = "%Y-%m-%d %H:%M:%S"
LOOKUP_KIND = "ozonetel.cdr"
INT4_MAX = 2**31 - 1
# "max limit exceeded" arrives in a 200 body with no Retry-After: wait one whole vendor minute.
RATE_LIMIT_PAUSE_S = 60.0
_MAX_MESSAGE = 200
_DURATION = re.compile(r"(\d{1,6}):([0-5]\d):([0-5]\d)")
_TIME_ONLY = re.compile(r"\d{2}:\d{2}:\d{2}")
# Ozonetel writes an absent value as the string "None" (and sometimes "null"): it means NULL.
_NULL_WORDS = frozenset({"none", "null"})

# Ozonetel `Type` -> direction. "InBound" is a customer calling in; the dialer modes (a "manual"
# click-to-dial, "preview", "progressive", "predictive" campaigns) all dial out. Anything else is
# unknown: direction stays NULL and the vendor word is kept in `service`.
DIRECTIONS: Mapping[str, str] = {
    "inbound": "inbound",
    "outbound": "outbound",
    "manual": "outbound",
    "preview": "outbound",
    "progressive": "outbound",
    "predictive": "outbound",
}
# Ozonetel `Status` -> status: "Unanswered" is what the other vendors call missed.
STATUSES: Mapping[str, str] = {"answered": "answered", "unanswered": "missed"}


class TokenExpired(AuthError):
    """Ozonetel says the Bearer token expired; a fresh one from generateToken fixes it."""


# ---------------------------------------------------------------------------- status strings


def _message(doc: Mapping[str, Any], secrets: tuple[str, ...]) -> str:
    raw = doc.get("message")
    text = raw if isinstance(raw, str) else ""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    text = " ".join(text.split())
    return text[: _MAX_MESSAGE - 1] + "…" if len(text) > _MAX_MESSAGE else text


def _is_credentials(lowered: str) -> bool:
    if "username or apikey" in lowered:  # "... is Invalid", "Missing userName or apiKey"
        return True
    return "invalid" in lowered and any(w in lowered for w in ("apikey", "api key", "credential"))


def check_status(doc: Any, *, endpoint: str, secrets: tuple[str, ...] = ()) -> None:
    """Raise the error an Ozonetel answer stands for; return when ``status`` is "success".

    ``secrets`` (the API key) are blanked out of the vendor's message before it is quoted.
    """
    if not isinstance(doc, dict):
        raise UnexpectedAnswer(
            f"{endpoint}: the answer is not a JSON object; asking again next cycle"
        )
    status = str(doc.get("status", "")).strip().lower()
    if status == "success":
        return
    message = _message(doc, secrets)
    lowered = message.lower()
    said = f'Ozonetel says "{message}"' if message else f"Ozonetel answered status={status!r}"
    if "token" in lowered and ("expired" in lowered or "invalid" in lowered):
        # "Token Expired" is documented; an invalid token has the same cure: a new one.
        raise TokenExpired(f"{endpoint}: {said}; a new token is needed")
    if "max limit exceeded" in lowered or "too many requests" in lowered:
        raise RateLimited(
            f"{endpoint}: {said} (rate limit); waiting a full minute before the next request",
            retry_after=RATE_LIMIT_PAUSE_S,
        )
    if _is_credentials(lowered):
        raise AuthError(
            f"{endpoint}: {said}; the stream waits: check the account's username and api_key "
            'and its admin setting "API Authentication" (BASIC_AUTH or TOKEN, see auth)'
        )
    raise PermanentError(
        f"{endpoint}: {said}; Ozonetel refuses this request and would refuse it again, "
        "so it is not retried"
    )


# ---------------------------------------------------------------------------- scrubbing


def _is_api_key(name: object) -> bool:
    return isinstance(name, str) and name.replace("_", "").replace("-", "").lower() == "apikey"


def scrub(record: Any) -> Any:
    """A deep copy of ``record`` without any ``Apikey`` field (any letter case, any depth).

    Ozonetel echoes the account's API key in callback records and pushes: it must never reach
    the database, a reject or a log line. Non-container values come back unchanged.
    """
    if isinstance(record, Mapping):
        return {k: scrub(v) for k, v in record.items() if not _is_api_key(k)}
    if isinstance(record, list | tuple):
        return [scrub(v) for v in record]
    return record


def _raw(record: Mapping[str, Any]) -> bytes:
    try:
        raw = jsontext.canonical(scrub(record))
    except RecursionError:  # deeper than Python's stack: scrub() recurses
        raise ParseError("record is nested too deeply to store") from None
    if b"\\u0000" in raw:
        # PostgreSQL stores no NUL character: kept, it would fail the whole batch every cycle.
        raise ParseError("record contains a NUL character, which PostgreSQL cannot store")
    return raw


def payload_text(item: Any) -> str:
    """A reject's payload: the scrubbed item as JSON text (its repr if it is not JSON-able).

    An item that is JSON text (a list push of encoded records) is decoded first, so that its
    Apikey is scrubbed too."""
    if isinstance(item, str) and item.lstrip()[:1] in ("{", "["):
        with contextlib.suppress(orjson.JSONDecodeError):
            item = jsontext.loads(item)
    try:
        scrubbed = scrub(item)
    except RecursionError:  # deeper than Python's stack: nothing unscrubbed may be kept
        scrubbed = {"unstorable": "nested too deeply to scrub"}
    return jsontext.reject_text(scrubbed)


# ---------------------------------------------------------------------------- fields


def text(value: Any) -> str | None:
    """A field as stripped text; empty, None and Ozonetel's "None"/"null" strings are NULL."""
    if value is None:
        return None
    out = (value if type(value) is str else str(value)).strip()
    if not out or out.lower() in _NULL_WORDS:
        return None
    return out


def _first(record: Mapping[str, Any], *fields: str) -> str | None:
    for field in fields:
        if (value := text(record.get(field))) is not None:
            return value
    return None


def seconds(record: Mapping[str, Any], field: str) -> int | None:
    """A duration field: "HH:MM:SS" (Ozonetel's form) or a plain whole number of seconds."""
    value = record.get(field)
    if isinstance(value, bool):
        raise ParseError(f"{field} is a boolean, expected a duration")
    if isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    else:
        shown = text(value)
        if shown is None:
            return None
        if shown.isdecimal():
            number = int(shown)
        elif match := _DURATION.fullmatch(shown):
            h, m, s = (int(g) for g in match.groups())
            number = h * 3600 + m * 60 + s
        else:
            raise ParseError(f"{field}={shown[:40]!r} is not an 'HH:MM:SS' duration")
    if not 0 <= number <= INT4_MAX:
        # The column is a PostgreSQL integer: a wild value would fail the whole batch.
        raise ParseError(f"{field}={number} is out of range for seconds")
    return number


def _naive(value: str, field: str) -> dt.datetime:
    shaped = len(value) == 19 and value[10] == " " and value[4] == value[7] == "-"
    if shaped and value[13] == value[16] == ":":
        with contextlib.suppress(ValueError):  # month 13, a letter in a digit's place
            return dt.datetime.fromisoformat(value)
    raise ParseError(f"{field}={value[:40]!r} is not a 'YYYY-MM-DD HH:MM:SS' time")


def _local_time(record: Mapping[str, Any], field: str) -> dt.datetime | None:
    value = text(record.get(field))
    if value is None:
        return None
    if _TIME_ONLY.fullmatch(value):
        # Some bulk records carry the day only in CallDate and a bare time in StartTime/EndTime.
        day = text(record.get("CallDate"))
        if day is None:
            raise ParseError(f"{field}={value!r} is a bare time and the record has no CallDate")
        return _naive(f"{day[:10]} {value}", f"CallDate+{field}")
    return _naive(value, field)


def _utc(naive: dt.datetime, field: str, zone: dt.tzinfo) -> dt.datetime:
    try:
        return naive.replace(tzinfo=zone).astimezone(dt.UTC)
    except OverflowError:  # e.g. 0001-01-01 00:00 IST is before year 1 in UTC
        raise ParseError(f"{field}={naive} is out of range") from None


def _times(
    record: Mapping[str, Any], zone: dt.tzinfo
) -> tuple[dt.datetime, dt.date, dt.datetime | None]:
    start = _local_time(record, "StartTime")
    if start is None:
        raise ParseError("record has no StartTime")
    end = _local_time(record, "EndTime")
    if end is not None and end < start and _TIME_ONLY.fullmatch(text(record.get("EndTime")) or ""):
        end += dt.timedelta(days=1)  # a bare EndTime after midnight belongs to the next day
    ended_at = None if end is None else _utc(end, "EndTime", zone)
    return _utc(start, "StartTime", zone), start.date(), ended_at


def _status(record: Mapping[str, Any], *fields: str) -> str | None:
    word = _first(record, *fields)
    if word is None:
        return None
    lowered = word.lower()
    return STATUSES.get(lowered, lowered)


def _direction(kind: str | None) -> str | None:
    return None if kind is None else DIRECTIONS.get(kind.lower())


def _answered_at(
    started_at: dt.datetime, status: str | None, ring_s: int | None
) -> dt.datetime | None:
    if status != "answered" or ring_s is None:
        return None
    return started_at + dt.timedelta(seconds=ring_s)


# ---------------------------------------------------------------------------- records


def normalize_bulk(
    record: Mapping[str, Any], *, account: str, zone: dt.tzinfo, fetched_at: dt.datetime
) -> CallRecord:
    """One record of the bulk reports (fetchCdrByPagination / fetchCDRDetails), source "list".

    Columns: UCID -> call_key, CallID -> call_id, Duration/TalkTime/TimeToAnswer -> duration_s/
    talk_s/ring_s, CallerID -> customer_number, DID -> line_number, CampaignName (else Skill)
    -> department, HangupBy -> hangup_cause, CallAudio -> recording_url, Type -> service and
    direction, Disposition (else Comments) -> description.
    """
    if not isinstance(record, Mapping):
        raise ParseError("record is not a JSON object")
    key = text(record.get("UCID"))
    if key is None:
        raise ParseError("record has no UCID")
    started_at, local_date, ended_at = _times(record, zone)
    status = _status(record, "Status")
    ring_s = seconds(record, "TimeToAnswer")
    kind = text(record.get("Type"))
    raw = _raw(record)
    return CallRecord(
        vendor=VENDOR,
        account=account,
        call_key=key,
        call_id=text(record.get("CallID")),
        call_uuid=None,
        direction=_direction(kind),
        status=status,
        started_at=started_at,
        answered_at=_answered_at(started_at, status, ring_s),
        ended_at=ended_at,
        duration_s=seconds(record, "Duration"),
        talk_s=seconds(record, "TalkTime"),
        ring_s=ring_s,
        agent_name=text(record.get("AgentName")),
        agent_number=text(record.get("AgentPhoneNumber")),
        customer_number=text(record.get("CallerID")),
        line_number=_first(record, "DID", "Did"),
        department=_first(record, "CampaignName", "Skill"),
        hangup_cause=text(record.get("HangupBy")),
        recording_url=text(record.get("CallAudio")),
        service=kind,
        description=_first(record, "Disposition", "Comments"),
        local_date=local_date,
        raw=raw.decode(),
        content_hash=digest(raw),
        fetched_at=fetched_at,
        source="list",
    )


def callback_key(record: Mapping[str, Any], asked: str | None = None) -> str | None:
    """The leg id of a callback-shape record: ``UCID``, else the UCID a lookup ``asked`` for,
    else ``monitorUCID``.

    ``monitorUCID`` names the leg only when it is the leg's own UCID: for a transferred call
    it may be the first leg's, shared by every leg, and keyed by it a later leg's push would
    land on the first leg's row. A push without ``UCID`` (a real 2018 one has none) is keyed
    by ``monitorUCID``, the leg's own UCID unless the push is of a later leg of a transfer.
    """
    return _first(record, "UCID") or asked or _first(record, "monitorUCID")


def normalize_callback(
    record: Mapping[str, Any],
    *,
    account: str,
    zone: dt.tzinfo,
    fetched_at: dt.datetime,
    source: str,
    asked: str | None = None,
) -> CallRecord:
    """One record of the CallBacks API or a push ("URL to Push"), source "lookup"/"push".

    Same columns as ``normalize_bulk`` where the shapes differ: ``callback_key`` (UCID, else
    the UCID a lookup ``asked`` for, else monitorUCID) -> call_key; CallID (absent from the
    documented shape) -> call_id; CallDuration (start to end) -> duration_s; Duration
    (CallDuration minus TimeToAnswer in the vendor's sample: the talk) -> talk_s; Did ->
    line_number; AudioFile -> recording_url; Status (else DialStatus) -> status.
    """
    if not isinstance(record, Mapping):
        raise ParseError("record is not a JSON object")
    key = callback_key(record, asked)
    if key is None:
        raise ParseError("record has no monitorUCID or UCID")
    started_at, local_date, ended_at = _times(record, zone)
    status = _status(record, "Status", "DialStatus")
    ring_s = seconds(record, "TimeToAnswer")
    kind = text(record.get("Type"))
    raw = _raw(record)
    return CallRecord(
        vendor=VENDOR,
        account=account,
        call_key=key,
        call_id=text(record.get("CallID")),
        call_uuid=None,
        direction=_direction(kind),
        status=status,
        started_at=started_at,
        answered_at=_answered_at(started_at, status, ring_s),
        ended_at=ended_at,
        duration_s=seconds(record, "CallDuration"),
        talk_s=seconds(record, "Duration"),
        ring_s=ring_s,
        agent_name=text(record.get("AgentName")),
        agent_number=text(record.get("AgentPhoneNumber")),
        customer_number=text(record.get("CallerID")),
        line_number=_first(record, "Did", "dId", "DID"),
        department=_first(record, "CampaignName", "Skill"),
        hangup_cause=text(record.get("HangupBy")),
        recording_url=_first(record, "AudioFile", "CallAudio"),
        service=kind,
        description=_first(record, "Disposition", "Comments"),
        local_date=local_date,
        raw=raw.decode(),
        content_hash=digest(raw),
        fetched_at=fetched_at,
        source=source,
    )


# ---------------------------------------------------------------------------- answers


def _decode(body: bytes, what: str) -> Any:
    try:
        return jsontext.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadPageError(f"Ozonetel {what} is not valid JSON ({exc.msg}); asking again") from None


def _total(doc: Mapping[str, Any]) -> int:
    # totalCount is a number in some answers and a string in others: accept both.
    value = doc.get("totalCount")
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and value.strip().isdecimal():
        return int(value)
    raise UnexpectedAnswer(
        f"Ozonetel page has no usable totalCount ({str(value)[:20]!r}); asking again next cycle"
    )


def empty_answer(doc: Mapping[str, Any]) -> bool:
    """Whether a success without ``details`` means an empty window.

    Ozonetel answers a quiet window in more than one shape: ``details`` left out with
    ``totalCount`` 0 (days past the horizon), ``totalCount`` as the string "0", or, as the CDR in
    CallBacks page documents for its own empty answer, ``{"status": "success", "message": "No
    Data Found ..."}`` with neither field. All of them are an empty window; anything else
    without ``details`` is an answer of unknown shape."""
    message = doc.get("message")
    if isinstance(message, str) and "no data found" in message.lower():
        return True
    total = doc.get("totalCount")
    if isinstance(total, str):
        total = total.strip()
    return total in (0, "0")


def normalize_many(
    items: list[Any],
    normalize: Callable[[Any], CallRecord],
    *,
    account: str,
    stream: str,
    seen_at: dt.datetime,
) -> tuple[list[CallRecord], list[Reject]]:
    """Every item through ``normalize``; one that raises ``ParseError`` becomes a Reject."""
    records: list[CallRecord] = []
    rejects: list[Reject] = []
    for item in items:
        try:
            records.append(normalize(item))
        except RECORD_ERRORS as exc:
            key = callback_key(item) if isinstance(item, Mapping) else None
            payload = payload_text(item)
            rejects.append(Reject(VENDOR, account, stream, key, str(exc), payload, seen_at))
    return records, rejects


def parse_bulk_page(
    body: bytes,
    *,
    account: str,
    stream: str,
    zone: dt.tzinfo,
    fetched_at: dt.datetime,
    secrets: tuple[str, ...] = (),
) -> Page:
    """A fetchCdrByPagination (or fetchCDRDetails) answer: ``{status, message, details[],
    totalCount}``. Not JSON -> ``BadPageError`` (asked again); a refusal -> ``check_status``'s
    error; one bad record -> a ``Reject`` and the rest of the page is kept."""
    doc = _decode(body, "bulk page")
    check_status(doc, endpoint=f"{account}/ozonetel.bulk", secrets=secrets)
    details = doc.get("details")
    if details is None and empty_answer(doc):
        return Page(0, 0, (), (), ())
    if not isinstance(details, list):
        raise UnexpectedAnswer("Ozonetel page has no details list; asking again next cycle")
    total = _total(doc)
    normalize = functools.partial(normalize_bulk, account=account, zone=zone, fetched_at=fetched_at)
    records, rejects = normalize_many(
        details, normalize, account=account, stream=stream, seen_at=fetched_at
    )
    # The bulk key is UCID: every UCID seen, malformed records' included.
    keys = [k for item in details if isinstance(item, dict) and (k := text(item.get("UCID")))]
    return Page(total, len(details), tuple(records), tuple(rejects), tuple(keys))


def parse_lookup(
    body: bytes,
    *,
    account: str,
    stream: str,
    zone: dt.tzinfo,
    fetched_at: dt.datetime,
    secrets: tuple[str, ...] = (),
    ucid: str | None = None,
) -> tuple[list[CallRecord], list[Reject]] | None:
    """A CDR in CallBacks answer: the call's records (source "lookup"), or None while Ozonetel
    says "No Data Found with UCID ..." (not there yet: the lookup is retried later).

    ``ucid`` is the UCID asked for: the answer names the leg by ``monitorUCID`` only, which
    for a later leg of a transferred call is the first leg's, so a record without ``UCID`` is
    the asked leg's.

    A success whose message is neither a record list nor "No Data Found" is read as not there
    yet too: retrying later is bounded by the 15-day horizon, failing the stream is not.
    """
    doc = _decode(body, "CallBacks answer")
    check_status(doc, endpoint=f"{account}/ozonetel.callbacks", secrets=secrets)
    message = doc.get("message")
    if isinstance(message, dict):
        message = [message]
    if not isinstance(message, list) or not message:
        return None
    normalize = functools.partial(
        normalize_callback,
        account=account,
        zone=zone,
        fetched_at=fetched_at,
        source="lookup",
        asked=ucid,
    )
    return normalize_many(message, normalize, account=account, stream=stream, seen_at=fetched_at)
