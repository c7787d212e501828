"""Decoding vendor JSON so that one odd number cannot stall a stream.

orjson refuses a number beyond a double's range (``1e400``) and so refuses the whole document:
a list page holding such a record would be fetched again on every cycle, and its stream would
never get past it. ``loads`` falls back to the standard library for such a document and keeps
every number it cannot hold exactly as its text, so the page is read, the record is kept (or
rejected on its own by normalization) and the stream carries on.
"""

from __future__ import annotations

import json
import math
import reprlib
from typing import Any

import orjson

from cdrsync.errors import ParseError

_INT64 = range(-(2**63), 2**63)


def _int_or_text(text: str) -> int | str:
    # Checked on length first: int() of a 5000-digit string raises (Python's digit limit).
    if len(text) <= 20 and int(text) in _INT64:
        return int(text)
    return text


def _float_or_text(text: str) -> float | str:
    value = float(text)
    return value if math.isfinite(value) else text


def _no_constant(text: str) -> Any:
    raise ValueError(f"{text} is not JSON")


def loads(body: bytes | str) -> Any:
    """``orjson.loads``; a document orjson refuses only for a number out of range is decoded
    with such numbers kept as strings. Anything else that is not JSON raises
    ``orjson.JSONDecodeError`` as before (a cut or garbled answer is fetched again)."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if "number" not in exc.msg:
            raise
        try:
            return json.loads(
                body,
                parse_int=_int_or_text,
                parse_float=_float_or_text,
                parse_constant=_no_constant,
            )
        except (ValueError, RecursionError):
            # RecursionError: deeply nested arrays, which orjson refuses at depth 1024 but the
            # standard library follows until Python's stack runs out. Still not a page to keep.
            raise exc from None


_TOO_DEEP = "nested too deeply to store (JSON deeper than 255 levels)"


def canonical(value: Any) -> bytes:
    """``value`` as sorted-key JSON (a record's ``raw``, whose hash tracks its content).

    orjson writes at most 255 levels (and Python's own stack ends near 1000): a vendor record
    nested deeper cannot be stored and is a ``ParseError`` (a reject), not a crash of its
    stream."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except (orjson.JSONEncodeError, RecursionError) as exc:
        raise ParseError(f"record {_TOO_DEEP}") from exc


def reject_text(value: Any) -> str:
    """What ``rejects.payload`` keeps of a value: sorted-key JSON, or, for one that cannot be
    written as JSON (too deep, not JSON at all), a JSON note with a shortened repr. Never
    raises: a reject must always be storable."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    except (orjson.JSONEncodeError, RecursionError):
        note = {"unstorable": _TOO_DEEP, "repr": reprlib.repr(value)}
        return orjson.dumps(note, option=orjson.OPT_SORT_KEYS).decode()
