"""HTTP to the vendors: one aiohttp session, rate limits, retries, and error translation.

This is the only module of cdrsync that imports aiohttp's client. Every request goes through
:meth:`Transport.request`, which for each attempt waits for the endpoint group's
:class:`~cdrsync.http.limiter.SlidingWindowLimiter` (retries spend the same budget), sends,
reads the whole body and turns the outcome into a value (via the caller's ``parse``) or into
one of the categories of :mod:`cdrsync.errors`. Only transient errors are retried, with stamina.

Secrets never leave this module in errors or logs: messages name the endpoint group and the
status or failure kind, never the URL (Acefone recording URLs carry ``token=``), its query,
the headers or the body, and aiohttp's own exceptions (whose text includes the URL) are not
chained onto ours.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import email.utils
import math
import re
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import aiohttp
import orjson
import stamina
import structlog
from multidict import CIMultiDict, CIMultiDictProxy

from cdrsync import __version__
from cdrsync.errors import (
    AuthError,
    BadPageError,
    CdrsyncError,
    PermanentError,
    RateLimited,
    TransientError,
    UnexpectedAnswer,
)
from cdrsync.http.limiter import SlidingWindowLimiter

__all__ = [
    "MAX_RETRY_AFTER_S",
    "Response",
    "RetryPolicy",
    "Transport",
    "default_pause_s",
    "error_for_status",
    "parse_retry_after",
]

log = structlog.get_logger(__name__)

T = TypeVar("T")

# A Retry-After beyond an hour is a misbehaving header, not a plan: honouring it would park the
# stream for days. An hour is longer than any window a vendor documents (Ozonetel: 1 hour).
MAX_RETRY_AFTER_S = 3600.0
# Without Retry-After we wait one full window (capped at a minute): afterwards nothing we sent
# is still inside the vendor's window, so the next request cannot be counted over the limit.
_DEFAULT_PAUSE_CAP_S = 60.0
# Only a short prefix of an error body is inspected for the vendor's `message`.
_MAX_ERROR_BODY = 64 * 1024
_MAX_VENDOR_MESSAGE = 200
_AUTH_SCHEMES = frozenset({"bearer", "basic", "digest", "token"})
_SECRET_ASSIGNMENT = re.compile(
    r"(?i)\b(token|access_token|api_?key|apikey|password|secret|authorization)(\s*[=:]\s*)\S+"
)


@dataclass(frozen=True, slots=True)
class Response:
    """A complete HTTP response: the whole body is read before anyone looks at it."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    elapsed_s: float

    def json(self) -> Any:
        """The body as JSON; a body that does not parse is a bad page, fetched again."""
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError:
            raise BadPageError(
                f"HTTP {self.status} body of {len(self.body)} bytes is not complete JSON; "
                "will fetch the page again"
            ) from None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how long one request is retried before its error goes to the stream."""

    attempts: int = 6
    timeout_s: float = 300.0
    wait_initial_s: float = 0.5
    wait_max_s: float = 30.0
    wait_jitter_s: float = 1.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"a retry policy needs at least 1 attempt, got {self.attempts}")
        if not self.timeout_s > 0:
            raise ValueError(f"a retry policy needs a timeout above 0 s, got {self.timeout_s}")


class RequestObserver(Protocol):
    """Receives one call per attempt (metrics): a response, an error, and a scheduled retry."""

    def on_response(self, endpoint: str, status: int, elapsed_s: float) -> None:
        """An attempt got a complete response with this status."""

    def on_error(self, endpoint: str, error: CdrsyncError) -> None:
        """An attempt failed with this (already translated) error."""

    def on_retry(self, endpoint: str, attempt: int, wait_s: float, error: CdrsyncError) -> None:
        """Attempt number ``attempt`` failed and another follows after about ``wait_s``."""


def parse_retry_after(value: str | None, *, now: dt.datetime) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), else None.

    A date in the past means 0; an absent or unreadable header means None; the result is
    capped at :data:`MAX_RETRY_AFTER_S`.
    """
    if value is None or not (text := value.strip()):
        return None
    try:
        seconds = float(text)
        if seconds < 0:
            return None  # not delta-seconds: treat as garbage and fall back to the default pause
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            # RFC 9110 dates are GMT; a naive result means the zone was "-0000".
            when = when.replace(tzinfo=dt.UTC)
        seconds = (when - now).total_seconds()
    if math.isnan(seconds):
        return None
    return min(max(0.0, seconds), MAX_RETRY_AFTER_S)


def default_pause_s(limiter: SlidingWindowLimiter) -> float:
    """The pause after a 429 without a usable Retry-After: one window, at most 60 s."""
    return min(limiter.period + limiter.margin, _DEFAULT_PAUSE_CAP_S)


def _vendor_message(body: bytes, secrets: tuple[str, ...]) -> str:
    """The vendor's short ``message`` from a JSON error body, scrubbed and truncated, or ""."""
    if not body or len(body) > _MAX_ERROR_BODY:
        return ""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return ""
    message = doc.get("message") if isinstance(doc, dict) else None
    if not isinstance(message, str):
        return ""
    # Some vendors echo what they were sent (Ozonetel echoes the Apikey): scrub every value we
    # sent in headers or the query before the text reaches an error or a log line.
    for secret in secrets:
        message = message.replace(secret, "***")
    message = _SECRET_ASSIGNMENT.sub(r"\1\2***", message)
    message = " ".join(message.split())
    if len(message) > _MAX_VENDOR_MESSAGE:
        message = message[: _MAX_VENDOR_MESSAGE - 1] + "…"
    return message


def error_for_status(
    response: Response,
    *,
    endpoint: str,
    retry_after: float | None = None,
    secrets: tuple[str, ...] = (),
) -> CdrsyncError:
    """Translate a non-2xx response into the error category that decides what happens next."""
    status = response.status
    message = _vendor_message(response.body, secrets)
    said = f' (vendor says: "{message}")' if message else ""
    if status == 429:
        wait = "as Retry-After asks" if retry_after is None else f"{retry_after:g} s"
        return RateLimited(
            f"{endpoint}: HTTP 429, the vendor's rate limit was hit{said}; "
            f"slowing down and will retry after {wait}",
            retry_after=retry_after,
        )
    if status == 408 or 500 <= status <= 599:
        return TransientError(f"{endpoint}: HTTP {status} from the vendor{said}; will retry")
    if status in (401, 403):
        return AuthError(
            f"{endpoint}: HTTP {status}, the vendor rejected the credentials{said}; "
            "not retried, check the account's token, password or IP allow-list"
        )
    return PermanentError(
        f"{endpoint}: HTTP {status}, the vendor refused the request{said}; "
        "not retried now, check the account settings (the stream tries again next cycle)"
    )


def _failure_kind(exc: BaseException) -> str:
    """A short, URL-free description of a driver failure."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "server closed the connection"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "response body cut short"
    if isinstance(exc, aiohttp.ClientConnectionError | OSError):
        return "connection failed"
    return "HTTP client error"


def _secrets_of(
    url: str, params: Mapping[str, str] | None, headers: Mapping[str, str], body: bytes | None
) -> tuple[str, ...]:
    """Every word we send (query, userinfo, headers, top JSON strings) that may be a secret."""
    parts = urllib.parse.urlsplit(url)
    values: list[object] = [v for _, v in urllib.parse.parse_qsl(parts.query)]
    values += [parts.password or "", *(params or {}).values(), *headers.values()]
    if body:
        with contextlib.suppress(orjson.JSONDecodeError):
            doc = orjson.loads(body)
            if isinstance(doc, dict):
                values += [v for v in doc.values() if isinstance(v, str)]
    words = {
        word
        for value in values
        for word in str(value).split()
        if len(word) >= 6 and word.lower() not in _AUTH_SCHEMES
    }
    # Longest first so that a token is scrubbed whole before any shorter word inside it.
    return tuple(sorted(words, key=len, reverse=True))


def _parsed(parse: Callable[[Response], T], response: Response, endpoint: str) -> T:
    """``parse(response)``, with the endpoint named in a bad page's message."""
    try:
        return parse(response)
    except BadPageError as exc:
        if str(exc).startswith(f"{endpoint}:"):
            raise
        raise type(exc)(f"{endpoint}: {exc}") from exc


def _should_retry(exc: Exception) -> bool | float:
    """stamina's hook: never retry non-transient errors; wait Retry-After when the vendor said."""
    if not isinstance(exc, TransientError) or isinstance(exc, UnexpectedAnswer):
        return False
    if isinstance(exc, RateLimited) and exc.retry_after is not None:
        return exc.retry_after
    return True


class Transport:
    """The shared HTTP client of the daemon (one aiohttp session; TLS verification always on)."""

    __slots__ = ("_observer", "_policy", "_session")

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        policy: RetryPolicy,
        observer: RequestObserver | None,
    ) -> None:
        self._session = session
        self._policy = policy
        self._observer = observer

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls,
        *,
        user_agent: str = f"cdrsync/{__version__}",
        request_timeout_s: float = 30.0,
        connect_timeout_s: float = 10.0,
        policy: RetryPolicy = RetryPolicy(),
        observer: RequestObserver | None = None,
    ) -> AsyncIterator[Transport]:
        """Open the session inside the running loop and close it (and its sockets) on exit."""
        session = aiohttp.ClientSession(
            headers={"User-Agent": user_agent},
            timeout=aiohttp.ClientTimeout(total=request_timeout_s, connect=connect_timeout_s),
            # Accounts of one vendor share the session: a cookie set for one account must never
            # ride along on another account's requests.
            cookie_jar=aiohttp.DummyCookieJar(),
            # Proxies and .netrc from the environment would bypass the validated config.
            trust_env=False,
            raise_for_status=False,
        )
        try:
            yield cls(session, policy=policy, observer=observer)
        finally:
            await session.close()

    async def request(
        self,
        method: str,
        url: str,
        *,
        limiter: SlidingWindowLimiter,
        endpoint: str,
        parse: Callable[[Response], T],
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        json_body: bytes | None = None,
        timeout_s: float | None = None,
        policy: RetryPolicy | None = None,
        accept: frozenset[int] = frozenset(),
    ) -> T:
        """Send a request under ``limiter`` and return ``parse(response)`` of a 2xx response.

        ``endpoint`` names the endpoint group in errors, logs and metrics (never the URL).
        Transient failures (network, timeout, 5xx, 408, 429, a ``BadPageError`` from ``parse``)
        are retried under ``policy``; when the attempts run out the last error propagates.
        Auth and other permanent errors are raised at once. Statuses in ``accept`` are
        answers, not failures (VCC Live's 404 "not processed yet"): ``parse`` gets them like a
        2xx, and they are neither logged as failures nor retried.
        """
        policy = policy or self._policy
        sent_headers = dict(headers or {})
        if json_body is not None:
            # Sent for any method: Ozonetel's bulk report is a GET with a JSON body.
            sent_headers["Content-Type"] = "application/json"
        timeout = None
        if timeout_s is not None:
            timeout = aiohttp.ClientTimeout(total=timeout_s, connect=self._session.timeout.connect)
        send = _Attempt(
            session=self._session,
            method=method,
            url=url,
            params=params,
            headers=sent_headers,
            body=json_body,
            timeout=timeout,
            limiter=limiter,
            endpoint=endpoint,
            secrets=_secrets_of(url, params, sent_headers, json_body),
            observer=self._observer,
            accept=accept,
        )
        started = time.monotonic()
        async for attempt in stamina.retry_context(
            on=_should_retry,
            attempts=policy.attempts,
            timeout=policy.timeout_s,
            wait_initial=policy.wait_initial_s,
            wait_max=policy.wait_max_s,
            wait_jitter=policy.wait_jitter_s,
        ):
            with attempt:
                try:
                    return _parsed(parse, await send(), endpoint)
                except CdrsyncError as exc:
                    self._report(
                        endpoint,
                        exc,
                        num=attempt.num,
                        next_wait=attempt.next_wait,
                        policy=policy,
                        started=started,
                    )
                    raise
        raise AssertionError("unreachable: stamina re-raises the last error")  # pragma: no cover

    def _report(
        self,
        endpoint: str,
        exc: CdrsyncError,
        *,
        num: int,
        next_wait: float,
        policy: RetryPolicy,
        started: float,
    ) -> None:
        """Log and observe one failed attempt, saying whether another one follows."""
        if self._observer is not None:
            self._observer.on_error(endpoint, exc)
        decision = _should_retry(exc)
        budget_left = time.monotonic() - started < policy.timeout_s
        kind = type(exc).__name__
        if decision is False or num >= policy.attempts or not budget_left:
            log.warning("http.failed", endpoint=endpoint, attempt=num, error=kind, message=str(exc))
            return
        # stamina picks the jitter; its jitter-less lower bound is what we can report.
        wait_s = float(decision) if not isinstance(decision, bool) else next_wait
        log.warning(
            "http.retry",
            endpoint=endpoint,
            attempt=num,
            error=kind,
            message=str(exc),
            wait_s=round(wait_s, 3),
        )
        if self._observer is not None:
            self._observer.on_retry(endpoint, num, wait_s, exc)


@dataclass(frozen=True, slots=True)
class _Attempt:
    """One send of a prepared request: wait for the limiter, send, read, classify."""

    session: aiohttp.ClientSession
    method: str
    url: str
    params: Mapping[str, str] | None
    headers: Mapping[str, str]
    body: bytes | None
    timeout: aiohttp.ClientTimeout | None
    limiter: SlidingWindowLimiter
    endpoint: str
    secrets: tuple[str, ...]
    observer: RequestObserver | None
    accept: frozenset[int] = frozenset()

    async def __call__(self) -> Response:
        """A 2xx :class:`Response`, or the translated error of this attempt."""
        await self.limiter.acquire()
        response = await self._send()
        if self.observer is not None:
            self.observer.on_response(self.endpoint, response.status, response.elapsed_s)
        if 200 <= response.status <= 299 or response.status in self.accept:
            return response
        retry_after = None
        if response.status == 429:
            retry_after = parse_retry_after(
                response.headers.get("Retry-After"), now=dt.datetime.now(dt.UTC)
            )
            pause = default_pause_s(self.limiter) if retry_after is None else retry_after
            self.limiter.pause(pause)
            log.warning(
                "http.rate_limited",
                endpoint=self.endpoint,
                limiter=self.limiter.name,
                retry_after=retry_after,
                pause_s=round(pause, 3),
            )
        raise error_for_status(
            response, endpoint=self.endpoint, retry_after=retry_after, secrets=self.secrets
        )

    async def _send(self) -> Response:
        """Send once and read the whole body; driver failures become ``TransientError``."""
        started = time.monotonic()
        try:
            async with self.session.request(
                self.method,
                self.url,
                params=self.params,
                headers=self.headers,
                data=self.body,
                timeout=self.timeout or self.session.timeout,
            ) as resp:
                body = await resp.read()
                return Response(
                    status=resp.status,
                    headers=CIMultiDictProxy(CIMultiDict(resp.headers)),
                    body=body,
                    elapsed_s=time.monotonic() - started,
                )
        # `from None`: aiohttp's exception text carries the URL with its query (tokens).
        except aiohttp.InvalidURL:
            raise PermanentError(
                f"{self.endpoint}: the request URL is invalid; check the account's base URL"
            ) from None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise TransientError(
                f"{self.endpoint}: {_failure_kind(exc)} ({type(exc).__name__}); will retry"
            ) from None
