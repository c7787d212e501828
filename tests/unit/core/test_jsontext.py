"""Vendor JSON with numbers orjson cannot hold still decodes (pure)."""

from __future__ import annotations

import orjson
import pytest

from cdrsync import jsontext
from cdrsync.errors import ParseError


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"a": 1, "b": 2.5}', {"a": 1, "b": 2.5}),  # ordinary: orjson's answer
        (b'{"a": 1e400, "b": 3}', {"a": "1e400", "b": 3}),  # beyond a double: kept as text
        (b'{"a": -1e400, "b": 1.5}', {"a": "-1e400", "b": 1.5}),
        (b'{"a": 1e400, "n": 9223372036854775807}', {"a": "1e400", "n": 2**63 - 1}),
        (b'{"a": 1e400, "n": 92233720368547758070}', {"a": "1e400", "n": "92233720368547758070"}),
        (b'{"a": 1e400, "n": ' + b"9" * 5000 + b"}", {"a": "1e400", "n": "9" * 5000}),
        ('{"a": 1e400, "s": "\u00e9"}', {"a": "1e400", "s": "\u00e9"}),  # str bodies too
    ],
)
def test_decodes_and_keeps_out_of_range_numbers_as_text(body, expected):
    """A document is refused only for what is not JSON, never for the size of a number."""
    assert jsontext.loads(body) == expected


@pytest.mark.parametrize(
    "body",
    [
        b'{"a": 1e400, "b": [',  # cut, with a huge number before the cut
        b'{"a": 1',
        b"<html>503</html>",
        b'{"a": NaN}',
        b'{"a": Infinity, "b": 1e400}',
        # nested past Python's stack: refused as JSON, not a RecursionError out of the stream
        b'{"a": 1e400, "b": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    ],
)
def test_what_is_not_json_is_still_refused(body):
    """A cut or garbled answer still raises, so it is fetched again rather than half-read."""
    with pytest.raises(orjson.JSONDecodeError):
        jsontext.loads(body)


DEEP: list[object] = [[[]]]
for _ in range(400):
    DEEP = [DEEP]


def test_a_value_too_deep_to_store_is_a_parse_error_and_still_a_storable_reject():
    """orjson writes 255 levels at most: such a record is a reject (not a crash), and what the
    reject keeps of it is still JSON."""
    with pytest.raises(ParseError, match="nested too deeply"):
        jsontext.canonical({"x": DEEP})
    kept = orjson.loads(jsontext.reject_text({"x": DEEP}))
    assert "nested too deeply" in kept["unstorable"]
    assert jsontext.reject_text({"b": 1, "a": 2}) == '{"a":2,"b":1}'
