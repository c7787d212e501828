"""Decoding and scrubbing of pushes (pure parts of the receiver)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import orjson
import pytest

from cdrsync.app.webhooks import Refusal, decode_push, reject_payload, scrub_doc

RECORD = {"monitorUCID": "1234", "Apikey": "KK7-secret-key", "CallerID": "98"}


@pytest.mark.parametrize(
    ("body", "content_type", "expected"),
    [
        (orjson.dumps(RECORD), "application/json", RECORD),
        (orjson.dumps(RECORD), "text/plain", RECORD),  # VCC Live-style text/plain JSON
        (urlencode({"data": orjson.dumps(RECORD).decode()}).encode(),
         "application/x-www-form-urlencoded", RECORD),  # Ozonetel: a form field holding JSON
        (urlencode({"monitorUCID": "1234"}).encode(), "application/x-www-form-urlencoded",
         {"monitorUCID": "1234"}),  # a form without `data` is the record itself
    ],
)  # fmt: skip
def test_push_bodies_decode(body: bytes, content_type: str, expected: Any) -> None:
    """JSON bodies (whatever the content type) and Ozonetel's form data decode to the record."""
    assert decode_push(body, content_type) == expected


def multipart(fields: dict[str, str], boundary: str = "b0und4ry") -> tuple[bytes, str]:
    """A multipart/form-data body and its Content-Type header."""
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        for name, value in fields.items()
    ]
    body = ("".join(parts) + f"--{boundary}--\r\n").encode()
    return body, f"multipart/form-data; boundary={boundary}"


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"data": orjson.dumps(RECORD).decode()}, RECORD),
        ({"monitorUCID": "1234", "note": "é"}, {"monitorUCID": "1234", "note": "é"}),
    ],
)
def test_multipart_form_data_decodes_like_a_url_encoded_form(fields: Any, expected: Any) -> None:
    """Ozonetel says only "form data": a multipart form is read as well as a url-encoded one."""
    body, header = multipart(fields)
    assert decode_push(body, "multipart/form-data", header) == expected


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (b"", "application/json", 400),
        (b"{not json", "application/json", 400),
        (b"data=%7Bbroken", "application/x-www-form-urlencoded", 400),
        (b"--x\r\n", "multipart/form-data", 400),  # no boundary in the header
        (b"\xff\xfe=1", "application/x-www-form-urlencoded", 400),
    ],
)
def test_broken_push_bodies_are_refused(body: bytes, content_type: str, status: int) -> None:
    """An empty, non-JSON, boundary-less multipart or non-UTF-8 body is a 4xx refusal, not a
    crash."""
    with pytest.raises(Refusal) as refused:
        decode_push(body, content_type)
    assert refused.value.status == status


def test_refused_pushes_keep_no_secret() -> None:
    """What is kept of a refused push has no Apikey/token/password value at any depth."""
    doc = {"a": [{"APIKEY": "s1", "x": 1}], "token": "s2", "nested": {"api_key": "s3"}, "ok": 2}
    assert scrub_doc(doc) == {"a": [{"x": 1}], "nested": {}, "ok": 2}
    text = reject_payload(doc)
    assert not any(secret in text for secret in ("s1", "s2", "s3"))


def test_a_record_still_in_json_text_is_scrubbed_too() -> None:
    """A push refused before its JSON text was unwrapped (Ozonetel's record in a form field
    of an unexpected name, or a double-encoded data field) keeps no Apikey either."""
    inner = orjson.dumps({"Apikey": "KK7secret", "UCID": "1", "deeper": '{"token": "t0k3n"}'})
    doc = {"cdr": inner.decode(), "note": "[not json", "n": 3}
    assert scrub_doc(doc) == {"cdr": {"UCID": "1", "deeper": {}}, "note": "[not json", "n": 3}
    assert "KK7secret" not in reject_payload(doc)


def test_configured_secrets_are_masked_wherever_they_are() -> None:
    """The account's own credentials are masked by value, under any field name."""
    doc = {"remark": "key=KK7secret; hook abcd1234", "short": "abc"}
    text = reject_payload(doc, ["KK7secret", "abcd1234", "abc"])
    assert "KK7secret" not in text and "abcd1234" not in text
    assert '"short":"abc"' in text  # values under 4 characters would mask ordinary words


def test_a_secret_with_a_quote_is_masked_in_its_json_escaped_form() -> None:
    """JSON writes a quote or a backslash escaped: the secret is masked in that form too."""
    secret = 'ab"cd\\ef'
    text = reject_payload({"note": f"key {secret} here"}, [secret])
    assert "cd" not in text, text
