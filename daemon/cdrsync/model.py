"""Plain frozen values that cross module boundaries: windows, normalized calls, rejects, state."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

UTC = dt.UTC

# Column order of `calls` as written by the batch upsert (COPY into a temp table).
CALL_COLUMNS: tuple[str, ...] = (
    "vendor",
    "account",
    "call_key",
    "call_id",
    "call_uuid",
    "direction",
    "status",
    "started_at",
    "answered_at",
    "ended_at",
    "duration_s",
    "talk_s",
    "ring_s",
    "agent_name",
    "agent_number",
    "customer_number",
    "line_number",
    "department",
    "hangup_cause",
    "recording_url",
    "service",
    "description",
    "local_date",
    "raw",
    "content_hash",
    "fetched_at",
)


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


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One call, normalized: UTC timestamps, seconds, the vendor record beside it (scrubbed)."""

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
    raw: str
    """The vendor's record as JSON text, secrets scrubbed."""
    content_hash: bytes
    """A digest of ``raw``: an unchanged re-read writes nothing."""
    fetched_at: dt.datetime
    """When cdrsync asked the vendor for this copy: an older copy never replaces a newer one."""

    def row(self) -> tuple[Any, ...]:
        """The values in ``CALL_COLUMNS`` order."""
        return (
            self.vendor,
            self.account,
            self.call_key,
            self.call_id,
            self.call_uuid,
            self.direction,
            self.status,
            self.started_at,
            self.answered_at,
            self.ended_at,
            self.duration_s,
            self.talk_s,
            self.ring_s,
            self.agent_name,
            self.agent_number,
            self.customer_number,
            self.line_number,
            self.department,
            self.hangup_cause,
            self.recording_url,
            self.service,
            self.description,
            self.local_date,
            self.raw,
            self.content_hash,
            self.fetched_at,
        )


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
