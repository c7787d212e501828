"""VCC Live: the Call Disposition webhook as a provisional call and the lookups it queues.

Vendor behaviour answered here (vendor-notes.md, "Webhooks"): the webhook fires when an agent or
the dialer disposes a call; it is a trigger, not a CDR. Its ``timestamp`` is the disposition's
time; the call's start is ``call_start_time`` (local), which the CDR path's month follows.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from cdrsync import jsontext
from cdrsync.errors import RECORD_ERRORS, ParseError
from cdrsync.model import CallRecord, LookupRequest, PushResult, Reject
from cdrsync.vendors.acefone import digest
from cdrsync.vendors.vcclive_parse import (
    DIRECTIONS,
    VENDOR,
    agent_of,
    as_text,
    canonical,
    parties,
    read_stamp,
    soft_int,
    to_utc,
)

if TYPE_CHECKING:
    from cdrsync.config import AccountSettings

RECORD_LOOKUP_DELAY = dt.timedelta(minutes=1)
"""A record's events are fetched a minute after its disposition webhook: the event the webhook
announces is written by then."""


def _push_start(
    doc: Mapping[str, Any], zone: dt.tzinfo
) -> tuple[dt.datetime | None, dt.datetime | None]:
    """(UTC start, local start) from ``call_start_time`` (local), else ``timestamp`` (ISO)."""
    for field in ("call_start_time", "timestamp"):
        with contextlib.suppress(*RECORD_ERRORS):
            stamp = read_stamp(doc.get(field), field)
            if stamp is not None:
                started = to_utc(stamp, field, zone)
                return started, started.astimezone(zone)
    return None, None


def _disposition_name(disposition: Any) -> str | None:
    """The disposition's name in a webhook (``disposition.name``), when it has one."""
    return as_text(disposition.get("name")) if isinstance(disposition, Mapping) else None


def _push_call(
    doc: Mapping[str, Any], key: str, account: AccountSettings, received_at: dt.datetime
) -> CallRecord:
    """The provisional call of a webhook: visible at once, replaced by its CDR later."""
    zone = account.zone
    started_at, local = _push_start(doc, zone)
    direction = DIRECTIONS.get((as_text(doc.get("direction")) or "").lower())
    customer, line = parties(direction, as_text(doc.get("source")), as_text(doc.get("destination")))
    raw = canonical(doc)
    return CallRecord(
        vendor=VENDOR,
        account=account.name,
        call_key=key,
        call_id=as_text(doc.get("numberid")),
        call_uuid=key,
        direction=direction,
        status=None,
        started_at=started_at,
        answered_at=None,
        ended_at=None,
        duration_s=None,
        talk_s=None,
        ring_s=None,
        agent_name=as_text(doc.get("username")) or as_text(doc.get("agentName")),
        agent_number=agent_of(soft_int(doc.get("userid"))),
        customer_number=customer,
        line_number=line,
        department=as_text(doc.get("projectName")) or as_text(doc.get("projectid")),
        hangup_cause=None,
        recording_url=None,
        service=None,
        # Only the webhook names the disposition (the CDR has its id): the merge keeps it.
        description=_disposition_name(doc.get("disposition")),
        local_date=local.date() if local is not None else None,
        raw=raw.decode(),
        content_hash=digest(raw),
        fetched_at=received_at,
        source="push",
    )


MONTH_EDGE = dt.timedelta(days=1)
"""A webhook without the call's start this soon after a month began may be for a call of the
month before (a call is disposed after it ends, usually minutes later)."""


def lookup_months(
    doc: Mapping[str, Any], zone: dt.tzinfo, received_at: dt.datetime
) -> dict[str, Any]:
    """The ``vcclive.cdr`` lookup's context: ``year`` and ``month`` of the call's local start,
    and ``months`` ([[year, month], ...], in the order to ask) when that start is unknown.

    ``call_start_time`` is the call's start. Without it the month is the event's (its
    ``timestamp``, else when it arrived), and near the start of a month the month before is
    asked too: a call begun at 23:58 on the 31st is disposed on the 1st."""
    with contextlib.suppress(*RECORD_ERRORS):
        stamp = read_stamp(doc.get("call_start_time"), "call_start_time")
        if stamp is not None:
            local = to_utc(stamp, "call_start_time", zone).astimezone(zone)
            return {"year": local.year, "month": local.month}
    event = received_at
    with contextlib.suppress(*RECORD_ERRORS):
        stamp = read_stamp(doc.get("timestamp"), "timestamp")
        if stamp is not None:
            event = to_utc(stamp, "timestamp", zone)
    local = event.astimezone(zone)
    months = [[local.year, local.month]]
    earlier = (local - MONTH_EDGE).date()
    if (earlier.year, earlier.month) != (local.year, local.month):
        months.append([earlier.year, earlier.month])
    return {"year": local.year, "month": local.month, "months": months}


def parse_push(doc: Any, *, account: AccountSettings, received_at: dt.datetime) -> PushResult:
    """A Call Disposition webhook: a provisional call now, and lookups for its CDR and events.

    The webhook is a trigger, not a CDR (it fires only when an agent or the dialer disposes a
    call): the ``vcclive.cdr`` lookup fetches the real CDR by uuid after ``lookup_delay``, in
    the month of the call's local start (the path takes year and month).
    """
    key = as_text(doc.get("uuid")) if isinstance(doc, dict) else None
    if key is None:
        raise ParseError("VCC Live webhook has no call uuid; it is not a Call Disposition")
    records: tuple[CallRecord, ...] = ()
    rejects: tuple[Reject, ...] = ()
    try:
        records = (_push_call(doc, key, account, received_at),)
    except RECORD_ERRORS as exc:
        payload = jsontext.reject_text(doc)
        rejects = (Reject(VENDOR, account.name, "push", key, str(exc), payload, received_at),)
    lookups = [
        LookupRequest(
            kind="vcclive.cdr",
            call_key=key,
            context=lookup_months(doc, account.zone, received_at),
            not_before=received_at + account.option("lookup_delay"),
        )
    ]
    projectid, numberid = soft_int(doc.get("projectid")), soft_int(doc.get("numberid"))
    if account.option("record_details") and projectid is not None and numberid is not None:
        # Keyed by the call too: the dialer calls one record again and again, and a lookup
        # already done for its last call would swallow the next one's (a finished lookup
        # stays finished), whose new disposition would then never reach call_events.
        lookups.append(
            LookupRequest(
                kind="vcclive.record",
                call_key=f"{projectid}/{numberid}/{key}",
                context={"projectid": projectid, "numberid": numberid},
                not_before=received_at + RECORD_LOOKUP_DELAY,
            )
        )
    return PushResult(records=records, rejects=rejects, lookups=tuple(lookups))
