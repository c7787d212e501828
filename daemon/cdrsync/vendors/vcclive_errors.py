"""VCC Live: what the ``errors`` of a ``GET /v2/cdr/Y/M/{uuid}`` answer under HTTP 200 mean.

Pure (no I/O). Vendor behaviour answered here (vendor-notes.md, "Errors"): a refusal is HTTP 200
with ``errors`` filled, but neither the shape of an error nor how "not processed yet" is said
is documented (the "HTTP Response Codes" table was not found). So each error is read by its
``code`` where it has one (HTTP-like: 404 not found, 401 credentials, 403 permission, 400/405/422
a malformed request), else by its words:
- "auth": the credentials are refused: the stream waits, like any other auth failure;
- "permission": the API token may not ask this (the endpoint, or the call's project: which one
  is undocumented): the account's CDR lookups wait (``permission_hold``), none ends;
- "malformed" (by code only): this lookup can never succeed: it ends with the reason, once
  every month asked has refused it;
- "not_yet": not found / not processed yet: the 5-minute x 20 schedule goes on;
- anything unrecognised is read as "not yet" too: the schedule is bounded (20 attempts), and
  giving up on the first answer of an unknown wording could lose a call for good.
A 400-like code whose words say "not found" is read as "not yet". When errors disagree, the
worst wins: auth, then permission, then malformed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

CdrErrorKind = Literal["auth", "permission", "malformed", "not_yet"]

_BY_CODE: Mapping[int, CdrErrorKind] = {
    401: "auth",
    403: "permission",
    400: "malformed",
    405: "malformed",
    422: "malformed",
    404: "not_yet",
    410: "not_yet",
}
# Checked in this order: "not found" must not be read as malformed because of "invalid" etc.
_BY_WORDS: tuple[tuple[CdrErrorKind, tuple[str, ...]], ...] = (
    ("not_yet", ("not found", "not yet", "not processed", "no data", "no cdr", "does not exist",
                 "no such", "no result", "not available", "being processed", "still processing")),
    ("auth", ("authentication", "unauthori", "credential", "api token", "invalid token",
              "login", "password")),
    ("permission", ("permission", "forbidden", "access denied", "not allowed", "no access",
                    "not authorized to", "privilege")),
)  # fmt: skip
# "Malformed" is read by code only: worded alone ("Invalid uuid", "uuid is required"), it is
# also how an API may well answer a uuid it does not know yet, which must stay "not yet".
_RANK: tuple[CdrErrorKind, ...] = ("auth", "permission", "malformed", "not_yet")


def _code(item: Any) -> int | None:
    code = item.get("code") if isinstance(item, Mapping) else None
    if isinstance(code, str) and code.strip().isdecimal():
        return int(code)
    return code if isinstance(code, int) and not isinstance(code, bool) else None


def _text(item: Any) -> str:
    if isinstance(item, Mapping):
        return " ".join(
            str(item[k]) for k in ("message", "msg", "error", "description") if k in item
        ).lower()
    return str(item).lower()


def error_kind(item: Any) -> CdrErrorKind:
    """One error (an object with ``code``/``message``, or a string): what it stands for."""
    text = _text(item)
    said = next((kind for kind, words in _BY_WORDS if any(w in text for w in words)), None)
    code = _code(item)
    by_code = _BY_CODE.get(code) if code is not None else None
    if by_code == "malformed" and said == "not_yet":
        return "not_yet"  # "not found" under a 400: most likely the uuid is not there yet
    return by_code or said or "not_yet"


def cdr_errors_kind(errors: Any) -> CdrErrorKind:
    """All the ``errors`` of one answer (a list, an object of errors, or one value)."""
    if isinstance(errors, Mapping) and not ({"code", "message"} & set(errors)):
        items = list(errors.values())
    else:
        items = list(errors) if isinstance(errors, list | tuple) else [errors]
    kinds = {error_kind(item) for item in items}
    return next((kind for kind in _RANK if kind in kinds), "not_yet")
