"""Push receivers: ``POST /hooks/{account}?token=SECRET`` on ``daemon.http_listen``.

Ozonetel posts the whole call record after a call (form data, a ``data`` field holding JSON;
plain JSON is accepted too); VCC Live posts its Call Disposition webhook as JSON. Neither vendor
can sign a push or add a header, so the account's ``webhook_secret`` travels in the URL's query:
it is compared in constant time, and neither the URL's query nor the body is ever logged (the
access log is off; Ozonetel's body carries the account's ``Apikey``). A push is stored (its calls,
and the lookups that will confirm them) in one transaction before the 200 goes out, so a vendor
that sees 200 can forget it. Every refusal is a 4xx with a short JSON reason, and a log line
saying what was refused and what to do; the daemon carries on.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import email.policy
import hmac
import re
import time
from collections.abc import Callable, Iterable, Mapping
from email.parser import BytesParser
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import orjson
import structlog
from aiohttp import web

from cdrsync import jsontext
from cdrsync.config import SECRET_KEYS
from cdrsync.errors import RECORD_ERRORS, StoreError
from cdrsync.model import PushResult, Reject
from cdrsync.ops.observability import MASK
from cdrsync.settings_types import Secret
from cdrsync.vendors import push_parser

if TYPE_CHECKING:
    from cdrsync.config import AccountSettings
    from cdrsync.store.store import Store

log = structlog.get_logger(__name__)

MAX_BODY = 1024 * 1024
"""Bytes a push may have (a call record is a few kB)."""
_FORMS = ("application/x-www-form-urlencoded", "multipart/form-data")
# Keys whose values are secrets wherever they appear in a push (Ozonetel echoes its Apikey).
_SECRET_KEY = re.compile(r"(?i)^(api_?key|apikey|token|access_token|password|secret)$")


def push_stream(account: str) -> str:
    """The ``sync_state`` stream that counts an account's pushes."""
    return f"{account}/push"


def scrub_doc(doc: Any) -> Any:
    """``doc`` without any key-like field (Apikey, token, password, ...), at any depth: what
    is kept of a refused push in ``rejects``.

    A string holding a JSON object or array is decoded and scrubbed too: Ozonetel's record
    arrives as JSON text inside a form field (``data``, or another name: the field's name is
    unverified), and a push refused before that text was unwrapped still carries its Apikey."""
    if isinstance(doc, dict):
        return {k: scrub_doc(v) for k, v in doc.items() if not _SECRET_KEY.match(str(k))}
    if isinstance(doc, list):
        return [scrub_doc(v) for v in doc]
    if isinstance(doc, str) and doc.lstrip()[:1] in ("{", "["):
        try:
            inner = jsontext.loads(doc)
        except orjson.JSONDecodeError:
            return doc
        return scrub_doc(inner) if isinstance(inner, dict | list) else doc
    return doc


def mask(text: str, secrets: Iterable[str]) -> str:
    """``text`` (JSON) with every value of ``secrets`` (4 characters or more) replaced by the
    mask, as it is and as JSON escapes it (a secret with a quote or a backslash in it)."""
    for secret in sorted((s for s in secrets if len(s) >= 4), key=len, reverse=True):
        escaped = orjson.dumps(secret).decode()[1:-1]
        text = text.replace(secret, MASK).replace(escaped, MASK)
    return text


def reject_payload(doc: Any, secrets: Iterable[str] = ()) -> str:
    """A refused push as text for ``rejects``: scrubbed JSON (a NUL stays escaped), with every
    value in ``secrets`` (the account's configured credentials) masked wherever it still is."""
    try:
        scrubbed = scrub_doc(doc)
    except RecursionError:  # deeper than Python's stack: nothing unscrubbed may be kept
        scrubbed = {"unstorable": "nested too deeply to scrub"}
    return mask(jsontext.reject_text(scrubbed), secrets)


def account_secrets(account: AccountSettings) -> list[str]:
    """The account's configured credentials, revealed, to mask in what is stored of a push."""
    values = (getattr(account, key, None) for key in sorted(SECRET_KEYS))
    return [value.reveal() for value in values if isinstance(value, Secret)]


class Refusal(Exception):
    """A push that is not stored: HTTP status, a reason for the vendor, advice for the log."""

    def __init__(self, status: int, reason: str, advice: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.advice = advice


class Receiver:
    """The ``/hooks/{account}`` handler for every account that takes pushes."""

    def __init__(
        self,
        accounts: Mapping[str, AccountSettings],
        store: Store,
        *,
        wake: Callable[[str], None] = lambda account: None,
        observe: Callable[[str, str], None] = lambda account, result: None,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self._accounts = accounts
        self.accounts = accounts
        """The running accounts (the supervisor's live mapping)."""
        self._store = store
        self._wake = wake
        self._observe = observe
        self._clock = clock

    def routes(self, app: web.Application) -> None:
        """Add the receiver's route to ``app``."""
        app.router.add_post("/hooks/{account}", self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        """Authenticate, decode, store, answer; any refusal is a logged 4xx."""
        began = time.monotonic()
        name = request.match_info["account"]
        try:
            account = self._authenticate(name, request.query.get("token"))
            result, body = await self._decode(account, request)
            written = await self._store.queues.write_push(
                push_stream(account.name), result.records, result.rejects, result.lookups,
                vendor=account.vendor, account=account.name, now=self._clock(),
            )  # fmt: skip
        except Refusal as refusal:
            # A probe may name any account: the metric label stays bounded.
            self._observe(name if name in self._accounts else "(unknown)", str(refusal.status))
            log.warning(
                "webhook.refused", account=name, status=refusal.status, reason=refusal.reason,
                action=refusal.advice,
            )  # fmt: skip
            return web.json_response({"status": "refused", "reason": refusal.reason},
                                     status=refusal.status)  # fmt: skip
        except StoreError as exc:
            self._observe(name, "503")
            log.warning("webhook.not_stored", account=name, error=str(exc),
                        action="answered 503 so the vendor retries the push")  # fmt: skip
            return web.json_response({"status": "unavailable"}, status=503)
        self._wake(account.name)
        self._observe(name, "200")
        log.info(
            "webhook.stored", vendor=account.vendor, account=account.name,
            calls=len(result.records), rejects=len(result.rejects), lookups=len(result.lookups),
            inserted=written.inserted, updated=written.updated, bytes=len(body),
            ms=round((time.monotonic() - began) * 1000, 1),
        )  # fmt: skip
        return web.json_response({"status": "ok", "calls": len(result.records)})

    def _authenticate(self, name: str, token: str | None) -> AccountSettings:
        account = self._accounts.get(name)
        if account is None or push_parser(account.vendor) is None:
            raise Refusal(404, "unknown account", "check the push URL configured at the vendor")
        if account.webhook_secret is None:
            raise Refusal(
                404, "pushes are not enabled for this account",
                f"set webhook_secret for account {name} to accept its pushes",
            )  # fmt: skip
        expected = account.webhook_secret.reveal().encode()
        if token is None or not hmac.compare_digest(token.encode(), expected):
            raise Refusal(
                403, "wrong or missing token",
                "the push URL's token= must equal the account's webhook_secret; check the "
                "vendor's push URL (or someone is probing the endpoint)",
            )  # fmt: skip
        return account

    async def _decode(
        self, account: AccountSettings, request: web.Request
    ) -> tuple[PushResult, bytes]:
        if request.content_length is not None and request.content_length > MAX_BODY:
            raise Refusal(413, "body too large", f"a push may have at most {MAX_BODY} bytes")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise Refusal(
                413, "body too large", f"a push may have at most {MAX_BODY} bytes"
            ) from None
        doc = decode_push(body, request.content_type, request.headers.get("Content-Type", ""))
        parse = push_parser(account.vendor)
        if parse is None:  # pragma: no cover - _authenticate refused such accounts
            raise Refusal(404, "unknown account", "this vendor takes no pushes")
        received = self._clock()
        secrets = account_secrets(account)
        try:
            result = parse(doc, account=account, received_at=received)
        except RECORD_ERRORS as exc:
            reject = Reject(account.vendor, account.name, push_stream(account.name), None,
                            f"push: {exc}", reject_payload(doc, secrets), received)  # fmt: skip
            await self._store.queues.write_push(
                push_stream(account.name), (), (reject,), (),
                vendor=account.vendor, account=account.name, now=received,
            )  # fmt: skip
            raise Refusal(
                422,
                f"not a usable call record: {exc}",
                "kept in the rejects table; check the vendor's push format",
            ) from None
        # The vendor's parser scrubbed its records' key fields; a credential the push carries
        # under another name, or inside JSON text, is masked by value before it is stored.
        rejects = tuple(
            dataclasses.replace(r, payload=mask(r.payload, secrets)) for r in result.rejects
        )
        return dataclasses.replace(result, rejects=rejects), body


def decode_push(body: bytes, content_type: str, header: str = "") -> Any:
    """The push as a JSON value: form data's ``data`` field (Ozonetel), or the JSON body.

    ``header`` is the whole Content-Type header (a multipart body needs its boundary).
    "Form data" is all Ozonetel says of its push: url-encoded and multipart are both read."""
    if not body.strip():
        raise Refusal(400, "empty body", "the vendor sent no record")
    text: bytes | str = body
    if content_type in _FORMS:
        if content_type == "multipart/form-data":
            fields = _multipart_fields(body, header)
        else:
            fields = _urlencoded_fields(body)
        if "data" not in fields:
            # Ozonetel's field name is unverified: a form without `data` is the record itself.
            return fields
        text = fields["data"]
    try:
        return jsontext.loads(text)
    except orjson.JSONDecodeError:
        raise Refusal(
            400,
            "body is not JSON (nor form data with a JSON data field)",
            "check the vendor's push format",
        ) from None


def _urlencoded_fields(body: bytes) -> dict[str, str]:
    try:
        fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        raise Refusal(400, "form body is not UTF-8", "check the vendor's push format") from None
    return {key: values[-1] for key, values in fields.items()}


def _multipart_fields(body: bytes, header: str) -> dict[str, str]:
    """The text fields of a multipart/form-data body (its Content-Type ``header`` included)."""
    try:
        head = f"Content-Type: {header}\r\n\r\n".encode("latin-1")
    except UnicodeEncodeError:
        head = b""
    message = BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not head or not message.is_multipart() or message.get_boundary() is None:
        raise Refusal(400, "multipart body without a usable boundary",
                      "check the vendor's push format")  # fmt: skip
    fields: dict[str, str] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if not isinstance(name, str) or not isinstance(payload, bytes):
            continue
        try:
            fields[name] = payload.decode("utf-8")
        except UnicodeDecodeError:
            raise Refusal(400, "form body is not UTF-8", "check the vendor's push format") from None
    if not fields:
        raise Refusal(400, "multipart body without form fields", "check the vendor's push format")
    return fields
