"""Looking for outbox rows in doubt among a VCC Live project's records (pure: no I/O).

Add record is not idempotent, so a row whose answer was lost is looked for before it is sent
again: the numberids after the last one known are read one by one (record ids increase in the
vendor's examples) and each record's form data is compared with the row's (``record_verdict``).
``ProbeScan`` is one such pass, kept over cycles; ``judge`` says what a finished pass proves.
The stream that does the reading is ``outbox.OutboxStream``.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from cdrsync.store.queues import OutboxRow, ProbeBounds

PROBE_MISSES = 20
"""Without a later batch to stop at, this many absent numberids in a row end a scan: numberids
may be shared by a call centre's projects, so a few absent ones prove little."""

FieldVerdict = Literal["same", "differs", "unverifiable"]
RecordVerdict = Literal["match", "other", "maybe"]


# ---------------------------------------------------------------------------- pure: comparing

_VALUEIDS = re.compile(r"\d+(?:\s*[|,;]\s*\d+)*")
"""Digits, or digit groups as several valueids might be listed: perhaps a value's id."""


def _text(value: Any) -> str | None:
    """A scalar form value as text; None for null, empty, booleans, objects and arrays."""
    if value is None or isinstance(value, bool | dict | list):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip() or None


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def field_verdict(sent: Any, returned: Any) -> FieldVerdict:
    """How a form value sent compares with the value record detail returns for its field.

    VCC quirk: record detail returns valueids, not text, for 'simple' and 'multiple' value
    fields, while Add record takes their text ("sports|movies" becomes two valueids, created
    when new). A number (a list of them, or digits in a string: the type is undocumented) where
    text was sent proves nothing either way, nor does a field the record does not show. A
    valueid sent as a number, as the docs ask, compares with the one returned.
    """
    want = _text(sent)
    got = None if isinstance(returned, list) else _text(returned)
    if want is None or got is None:
        return "unverifiable"
    if got == want:
        return "same"
    if _VALUEIDS.fullmatch(got) and not (_number(sent) and _number(returned)):
        return "unverifiable"
    return "differs"


def record_verdict(payload: Mapping[str, Any], data: Mapping[str, Any]) -> RecordVerdict:
    """Whether a record (its ``data``) is the payload's: ``match`` (every field that compares is
    equal, one at least), ``other`` (a field differs), ``maybe`` (no field compares)."""
    form = payload.get("form") if isinstance(payload, Mapping) else None
    if not isinstance(form, Mapping):
        return "maybe"
    verdicts = {field_verdict(value, data.get(key)) for key, value in form.items()}
    if "differs" in verdicts:
        return "other"
    return "match" if "same" in verdicts else "maybe"


# ---------------------------------------------------------------------------- pure: the scan


def settles_at(row: OutboxRow, delay: dt.timedelta) -> dt.datetime:
    """When a row in doubt may be ruled absent: ``delay`` after it became ``unknown`` (VCC may
    still be adding a batch whose answer was lost)."""
    since = row.updated_at or row.sent_at
    if since is None:  # a row not read from the store: never judged
        return dt.datetime.max.replace(tzinfo=dt.UTC)
    return since + delay


@dataclass(slots=True)
class ProbeScan:
    """One pass over a project's numberids looking for its rows in doubt, read after ``after``
    in order over as many cycles as it takes. It can rule absent only rows in doubt when it
    began (``members``) that had settled by then (``settles_at``): a record VCC was still adding
    could have been passed over before."""

    after: int
    began_at: dt.datetime
    members: frozenset[int]
    misses_allowed: int
    position: int = -1
    """The last numberid read."""
    misses: int = 0
    """Absent numberids read in a row."""
    maybe: set[int] = field(default_factory=set)
    """Rows some record read could not be told apart from."""

    def __post_init__(self) -> None:
        self.position = max(self.position, self.after)

    def rebase(self, after: int) -> bool:
        """Follow a new start; False when the pass no longer covers it (rows sent earlier
        joined: their records may lie before it)."""
        if after < self.after:
            return False
        if after > self.position:
            # Records up to `after` were added before the rows were sent.
            self.position, self.misses = after, 0
        self.after = after
        return True

    def next_numberid(self, bounds: ProbeBounds) -> int | None:
        """The next numberid to read; None once the pass is over."""
        numberid = self.position + 1
        while numberid in bounds.taken:
            numberid += 1
        if bounds.until is not None and bounds.until > self.after:
            # A batch sent after the rows: theirs, if added at all, lie below its records.
            # (Below the start instead, numberids did not increase: only misses can tell.)
            return numberid if numberid < bounds.until else None
        return numberid if self.misses < self.misses_allowed else None

    def saw(
        self, numberid: int, data: Mapping[str, Any] | None, rows: Sequence[OutboxRow]
    ) -> OutboxRow | None:
        """Take in what ``numberid`` holds (None: no record there); the row it is, if any."""
        self.position = numberid
        if data is None:
            self.misses += 1
            return None
        self.misses = 0
        maybe = []
        for row in rows:
            verdict = record_verdict(row.payload, data)
            if verdict == "match":
                return row
            if verdict == "maybe":
                maybe.append(row.id)
        self.maybe.update(maybe)
        return None


@dataclass(frozen=True, slots=True)
class Verdicts:
    """What a finished pass says of the rows it did not find."""

    absent: tuple[OutboxRow, ...] = ()
    """Not in VCC Live: sent again."""
    unverifiable: tuple[OutboxRow, ...] = ()
    """A record read may be theirs: left in doubt for an operator."""
    waiting: tuple[OutboxRow, ...] = ()
    """Too recent (or new) for this pass to judge: another pass will."""


def judge(scan: ProbeScan, rows: Sequence[OutboxRow], *, delay: dt.timedelta) -> Verdicts:
    """The verdicts of a finished pass on ``rows``, the rows in doubt it did not find."""
    absent, unverifiable, waiting = [], [], []
    for row in rows:
        if row.id not in scan.members or settles_at(row, delay) > scan.began_at:
            waiting.append(row)
        elif row.id in scan.maybe:
            unverifiable.append(row)
        else:
            absent.append(row)
    return Verdicts(tuple(absent), tuple(unverifiable), tuple(waiting))


def next_pass_at(
    scan: ProbeScan, waiting: Sequence[OutboxRow], *, now: dt.datetime, delay: dt.timedelta
) -> dt.datetime:
    """When the next pass may begin: at once for rows this one did not cover (it may find them
    early), else when the first waiting row settles (passes before that cannot judge)."""
    if any(row.id not in scan.members for row in waiting):
        return now
    return max(now, min(settles_at(row, delay) for row in waiting))
