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

# What a record's bytes must not hold to be stored as they are: a ``\\u`` escape. ``\\u0000``
# is refused by jsonb (and an Acefone record carrying it is rejected, as before); any other
# escape is left to the full decode too, which canonicalizes it. msgspec has checked the
# bytes' syntax (escapes, surrogate pairs, number shapes) but skips the fields it does not
# read. A number PostgreSQL's numeric cannot hold (``1e-99999``) is not looked for here: a
# byte check of every record cost a tenth of a backfill's CPU (issue 11), and the store
# writes a record PostgreSQL refuses as the full decode would (``Store.write_batch``), so one
# absurd number never costs the batch. Nesting needs no check: jsonb takes a record nested as
# deep as 3 000 levels, and one deeper than msgspec's recursion limit (about 1 000) never
# gets here.


def plain(data: bytes) -> bool:
    """Whether a record's bytes (valid JSON by msgspec) can be stored as they are."""
    return not (b"\\" in data and b"\\u" in data)  # a 1-byte search first


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
