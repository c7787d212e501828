"""Plain frozen values that cross module boundaries: windows, normalized calls, rejects, state."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

UTC = dt.UTC


@dataclass(frozen=True, slots=True)
class Window:
    """A half-open span of time ``[start, end)`` in UTC that one list request covers."""

    start: dt.datetime
    end: dt.datetime

    @property
    def seconds(self) -> float:
        return (self.end - self.start).total_seconds()

    def __str__(self) -> str:
        return f"{self.start.isoformat()}/{self.end.isoformat()}"


class CallRecord(NamedTuple):
    """One call, normalized: UTC timestamps, seconds, the vendor record beside it (scrubbed).

    Immutable like the other values here, but a NamedTuple rather than a frozen dataclass: a
    backfill builds one per call, a frozen dataclass's ``__init__`` costs a ``__setattr__`` per
    field, and the tuple is already the row that COPY writes (fields in ``calls`` column order).
    """

    vendor: str
    account: str
    call_key: str
    call_id: str | None
    call_uuid: str | None
    direction: str | None
    status: str | None
    started_at: dt.datetime | None
    answered_at: dt.datetime | None
    ended_at: dt.datetime | None
    duration_s: int | None
    talk_s: int | None
    ring_s: int | None
    agent_name: str | None
    agent_number: str | None
    customer_number: str | None
    line_number: str | None
    department: str | None
    hangup_cause: str | None
    recording_url: str | None
    service: str | None
    description: str | None
    local_date: dt.date | None
    raw: str  # the vendor's record as JSON text, secrets scrubbed
    content_hash: bytes  # a digest of raw: an unchanged re-read writes nothing
    fetched_at: dt.datetime  # when cdrsync asked for this copy: an older never replaces a newer
    source: str = "list"
    """Where this copy came from: "list" (the bulk poller, the source of truth), "lookup" (a
    per-call endpoint) or "push" (a webhook). A copy never replaces one from a higher-ranked
    source (list > lookup > push): the shapes differ per source, so without the rank a list
    re-read and a lookup would overwrite each other forever."""

    def row(self) -> tuple[Any, ...]:
        """The values in ``CALL_COLUMNS`` order (the record itself)."""
        return self


CALL_COLUMNS: tuple[str, ...] = CallRecord._fields
"""Column order of ``calls`` as written by the batch upsert (COPY into a temp table)."""


SOURCES: tuple[str, ...] = ("push", "lookup", "list")
"""Values of ``CallRecord.source``, lowest rank first."""


@dataclass(frozen=True, slots=True)
class Reject:
    """A record that could not be normalized, kept with its reason and payload."""

    vendor: str
    account: str
    stream: str
    call_key: str | None
    reason: str
    payload: str
    """The offending record as text (JSON where it parsed), secrets scrubbed."""
    seen_at: dt.datetime


@dataclass(frozen=True, slots=True)
class Page:
    """One parsed page of a list endpoint."""

    total: int
    """The vendor's count of records matching the whole query (not just this page)."""
    size: int
    """How many entries the page held, malformed ones included."""
    records: tuple[CallRecord, ...]
    rejects: tuple[Reject, ...]
    keys: tuple[str, ...]
    """Every key on the page, malformed records' keys included when they have one."""
    unchanged: int = 0
    """Records left out of ``records`` as identical to their stored list copy (their bytes
    hash to its ``content_hash``): received, counted in ``keys``, not normalized again."""


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What one batch upsert did."""

    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0

    def __add__(self, other: WriteResult) -> WriteResult:
        return WriteResult(
            self.inserted + other.inserted,
            self.updated + other.updated,
            self.unchanged + other.unchanged,
            self.rejected + other.rejected,
        )

    @property
    def written(self) -> int:
        return self.inserted + self.updated


@dataclass(frozen=True, slots=True)
class StreamState:
    """The durable progress of one stream (a row of ``sync_state``)."""

    stream: str
    vendor: str
    account: str
    kind: str
    watermark: dt.datetime | None = None
    cursor: dict[str, Any] | None = None
    last_success_at: dt.datetime | None = None
    last_error: str | None = None
    last_error_at: dt.datetime | None = None
    rows_inserted: int = 0
    rows_updated: int = 0
    cycles: int = 0
    updated_at: dt.datetime | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LookupRequest:
    """A per-call lookup to queue (table ``lookups``): by a push, or as a follow-up."""

    kind: str
    """What to fetch, e.g. "ozonetel.cdr", "vcclive.cdr", "vcclive.record"."""
    call_key: str
    """The id the lookup is about (unique per vendor, account and kind)."""
    context: Mapping[str, Any]
    """What the vendor module needs later (JSON-serializable), e.g. the call's start time."""
    not_before: dt.datetime
    """The first attempt is not made before this instant (UTC)."""


@dataclass(frozen=True, slots=True)
class LookupItem:
    """A queued lookup as claimed from ``lookups``."""

    id: int
    vendor: str
    account: str
    kind: str
    call_key: str
    context: Mapping[str, Any]
    attempts: int
    """Requests already made for it (waits that sent nothing do not count)."""
    created_at: dt.datetime
    next_attempt_at: dt.datetime


@dataclass(frozen=True, slots=True)
class CallEvent:
    """One event (disposition) of a VCC Live record, from the record detail endpoint."""

    vendor: str
    account: str
    projectid: int
    numberid: int
    seq: int
    """Position of the event in the vendor's list (0-based)."""
    call_uuid: str | None
    type: str | None
    dispositionid: int | None
    state: str | None
    userid: int | None
    description: str | None
    created_at: dt.datetime | None
    """When the event was created, UTC."""
    raw: str
    """The vendor's event object as JSON text."""


@dataclass(frozen=True, slots=True)
class LookupOutcome:
    """What one attempt at a lookup came to; the lookup stream writes it in one transaction."""

    state: str
    """"done" (finished), "retry" (try again at ``next_attempt_at``) or "gave_up" (final)."""
    records: tuple[CallRecord, ...] = ()
    rejects: tuple[Reject, ...] = ()
    events: tuple[CallEvent, ...] = ()
    """Replace the stored events of each (projectid, numberid) present here."""
    follow_ups: tuple[LookupRequest, ...] = ()
    next_attempt_at: dt.datetime | None = None
    counted: bool = True
    """Whether a request was sent (it counts toward the attempts); a rule-based wait is not."""
    note: str | None = None
    """Why it waits or gave up, in words (stored as ``last_error``)."""


@dataclass(frozen=True, slots=True)
class PushResult:
    """A parsed push (webhook): calls to store now, rejects, and lookups to queue."""

    records: tuple[CallRecord, ...] = ()
    rejects: tuple[Reject, ...] = ()
    lookups: tuple[LookupRequest, ...] = ()
