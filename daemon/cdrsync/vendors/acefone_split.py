"""Acefone list pages split into each record's own bytes, and the few fields normalizing reads.

A backfill spent most of its CPU decoding every field of every record (orjson builds some 40
Python objects per record, ``call_flow`` included) and then writing the whole record back as
sorted-key JSON for ``raw`` and its hash. Here the page is split with msgspec into the vendor's
own bytes per record (``raw`` is a ``jsonb`` column: PostgreSQL canonicalizes key order and
whitespace itself), and only the fields ``acefone.normalize`` reads are decoded.

A record takes this path only when its bytes are certain to mean to PostgreSQL what they mean
here; anything else is left to the full decode (``acefone.parse_page``'s orjson path), which
rejects it or canonicalizes it as before. Pure: no clock, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

# ---------------------------------------------------------------------------- the split


class _Page(msgspec.Struct):
    results: list[msgspec.Raw]
    count: Any = None


class _Step(msgspec.Struct):
    anstime: Any = msgspec.UNSET


class Fields(msgspec.Struct):
    """What ``acefone.normalize`` reads of a record; every other field is skipped unread.

    Read as attributes: building a dict of them per record cost as much as decoding them."""

    id: Any = None
    call_id: Any = None
    uuid: Any = None
    direction: Any = None
    status: Any = None
    date: Any = None
    time: Any = None
    end_stamp: Any = None
    call_duration: Any = None
    answered_seconds: Any = None
    agent_ring_time: Any = None
    agent_name: Any = None
    agent_number: Any = None
    client_number: Any = None
    did_number: Any = None
    department_name: Any = None
    hangup_cause: Any = None
    recording_url: Any = None
    service: Any = None
    description: Any = None
    call_flow: msgspec.Raw = msgspec.Raw(b"null")
    """Left as bytes: decoding its steps was half the cost of this struct, and only a record
    with an ``anstime`` step needs them (``first_anstime``). A record from the full decode
    (``from_mapping``) holds its decoded value here instead."""


class _Key(msgspec.Struct):
    id: Any = None


_PAGE = msgspec.json.Decoder(_Page)
FIELD_NAMES: tuple[str, ...] = Fields.__struct_fields__
_FIELDS = msgspec.json.Decoder(Fields)
_FLOW = msgspec.json.Decoder(list[_Step] | None)
_KEY = msgspec.json.Decoder(_Key)


def split(body: bytes) -> tuple[Any, list[msgspec.Raw]] | None:
    """The page's ``count`` and its records' bytes; None when the page is not plainly an object
    with a ``results`` list (the full decode then says what is wrong, as before)."""
    try:
        page = _PAGE.decode(body)
    except (msgspec.DecodeError, RecursionError):
        return None
    return page.count, page.results


# ---------------------------------------------------------------------------- one record

# What a record's bytes must not hold to be stored as they are; msgspec has checked their syntax
# (escapes, surrogate pairs, number shapes) but skips the fields it does not read, so:
# - a ``\\u`` escape: ``\\u0000`` is refused by jsonb (and an Acefone record carrying it is
#   rejected, as before); any other escape is left to the full decode too, to be safe;
# - a number whose exponent has 5 digits or more (``1e999999``), or a record long enough for a
#   number's fraction digits plus a 4-digit negative exponent to pass numeric's 16383 after the
#   point (``0.<7000 digits>e-9999``): beyond PostgreSQL's numeric, it would fail the whole
#   batch. Acefone's records are about 2 KB; a longer one just takes the full decode.
# Nesting needs no check: jsonb takes a record nested as deep as 6 000 bytes allow (3 000
# levels), and one deeper than msgspec's recursion limit (about 1 000) never gets here.
# One C pass maps digits, "." and signs to "0" and "E" to "e"; one search then finds every "e"
# with a digit before it and five digits (or a sign and four) after it. A signed 4-digit
# exponent (``1e+1234``, within numeric) matches too and merely takes the full decode.
_SHAPE = bytes.maketrans(b"0123456789.E+-", b"00000000000e00")
_EXPONENT = b"0e00000"
_BEFORE_NUMBER = frozenset(b":,[ \t\r\n")
_MAX_BYTES = 6_000


def _huge_exponent(shape: bytes) -> bool:
    """Whether a number with a 5-digit exponent stands in ``shape``: the digits before the
    ``e`` must follow what precedes a JSON number (a hex id in a string, ``"ab12e45678"``,
    does not)."""
    at = shape.find(_EXPONENT)
    while at > 0:
        start = at
        while start > 0 and shape[start - 1] == 0x30:
            start -= 1
        if shape[start - 1] in _BEFORE_NUMBER:
            return True
        at = shape.find(_EXPONENT, at + 1)
    return False


def plain(data: bytes) -> bool:
    """Whether a record's bytes (valid JSON by msgspec) can be stored as they are."""
    if len(data) > _MAX_BYTES or (b"\\" in data and b"\\u" in data):  # a 1-byte search first
        return False
    return not _huge_exponent(data.translate(_SHAPE))


def fields(data: bytes) -> Fields | None:
    """The fields normalizing reads; None when the record is not a JSON object (the full
    decode decides what it is)."""
    try:
        return _FIELDS.decode(data)
    except (msgspec.DecodeError, RecursionError):
        return None


def from_mapping(record: Mapping[str, Any]) -> Fields:
    """The fields normalizing reads of a fully decoded record."""
    get = record.get
    values: list[Any] = [get(name) for name in FIELD_NAMES]  # call_flow: decoded, not bytes
    return Fields(*values)


def first_anstime(flow: Any) -> Any:
    """The ``anstime`` of the first ``call_flow`` step that has one (``msgspec.UNSET`` when none
    does). From the split, ``call_flow`` is still bytes: decoded only when it holds one."""
    if isinstance(flow, msgspec.Raw):
        data = bytes(flow)
        if b'"anstime"' not in data:
            return msgspec.UNSET
        try:
            steps = _FLOW.decode(data)
        except (msgspec.DecodeError, RecursionError):  # not a list of objects: read it whole
            flow = _whole(data)
        else:
            for step in steps or ():
                if step.anstime is not msgspec.UNSET:
                    return step.anstime
            return msgspec.UNSET
    if isinstance(flow, list):
        for step in flow:
            if isinstance(step, dict) and "anstime" in step:
                return step["anstime"]
    return msgspec.UNSET


def _whole(data: bytes) -> Any:
    try:
        return msgspec.json.decode(data)
    except (msgspec.DecodeError, RecursionError):  # e.g. a number beyond a double
        return None


def key(data: bytes) -> Any:
    """A record's ``id`` as sent, without decoding the rest; None when there is none."""
    try:
        return _KEY.decode(data).id
    except (msgspec.DecodeError, RecursionError):
        return None
