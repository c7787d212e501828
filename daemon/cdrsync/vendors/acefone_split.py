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

from typing import Any

import msgspec

# ---------------------------------------------------------------------------- the split


class _Page(msgspec.Struct):
    results: list[msgspec.Raw]
    count: Any = None


class _Step(msgspec.Struct):
    anstime: Any = msgspec.UNSET


class _Fields(msgspec.Struct):
    """What ``acefone.normalize`` reads of a record; every other field is skipped unread."""

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
    with an ``anstime`` step needs them."""


class _Key(msgspec.Struct):
    id: Any = None


_PAGE = msgspec.json.Decoder(_Page)
_FIELDS = msgspec.json.Decoder(_Fields)
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
#   batch. Acefone's records are about 2 KB; a longer one just takes the full decode;
# - more than 255 brackets: orjson writes back at most 255 levels, and a record nested deeper
#   is rejected by the full decode, as before.
# One C pass maps digits and "." to "0", "E" to "e", signs to "s" and "[" to "{".
_SHAPE = bytes.maketrans(b"0123456789.E+-[", b"00000000000ess{")
_EXPONENTS = (b"0e00000", b"0es00000")  # a digit (or ".") always stands before the "e"
_BEFORE_NUMBER = frozenset(b":,{ s\t\r\n")
_MAX_BRACKETS = 255
_MAX_BYTES = 6_000


def _huge_exponent(shape: bytes) -> bool:
    """Whether a number with a 5-digit exponent stands in ``shape``: the digits before the
    ``e`` must follow what precedes a JSON number (a hex id in a string, ``"ab12e45678"``,
    does not)."""
    for pattern in _EXPONENTS:
        at = shape.find(pattern)
        while at > 0:
            start = at
            while start > 0 and shape[start - 1] == 0x30:
                start -= 1
            if shape[start - 1] in _BEFORE_NUMBER:
                return True
            at = shape.find(pattern, at + 1)
    return False


def plain(data: bytes) -> bool:
    """Whether a record's bytes (valid JSON by msgspec) can be stored as they are."""
    if len(data) > _MAX_BYTES or (b"\\" in data and b"\\u" in data):
        return False
    shape = data.translate(_SHAPE)
    return shape.count(b"{") <= _MAX_BRACKETS and not _huge_exponent(shape)


def fields(data: bytes) -> dict[str, Any] | None:
    """The fields normalizing reads, as the dict the full decode would give for them (a
    ``call_flow`` holds just its ``anstime`` entries); None when the record is not an object
    of the expected shapes (the full decode decides what it is)."""
    try:
        got = _FIELDS.decode(data)
        flow = bytes(got.call_flow)
        steps = _FLOW.decode(flow) if b'"anstime"' in flow else None
    except (msgspec.DecodeError, RecursionError):
        return None
    values = msgspec.structs.asdict(got)
    values["call_flow"] = steps and [
        {"anstime": step.anstime} for step in steps if step.anstime is not msgspec.UNSET
    ]
    return values


def key(data: bytes) -> Any:
    """A record's ``id`` as sent, without decoding the rest; None when there is none."""
    try:
        return _KEY.decode(data).id
    except (msgspec.DecodeError, RecursionError):
        return None
