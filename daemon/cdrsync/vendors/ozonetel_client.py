"""Ozonetel CloudAgent: what the bulk and CallBacks clients share (``_Client``): the account's
headers, the generateToken token (one per account, shared by its streams: 10 tokens an hour)
and the auth mode (``auth``: "apikey", "token" or "auto", which finds out which one the
account's "API Authentication" setting, BASIC_AUTH or TOKEN, wants).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import hashlib
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, TypeVar

import orjson
import stamina
import structlog

from cdrsync.errors import AuthError, RateLimited, TransientError, UnexpectedAnswer
from cdrsync.http.transport import RetryPolicy
from cdrsync.vendors.ozonetel_parse import TokenExpired, check_status

if TYPE_CHECKING:
    from collections.abc import Mapping

    from cdrsync.config import AccountSettings
    from cdrsync.http.limiter import SlidingWindowLimiter
    from cdrsync.http.transport import Response, Transport

T = TypeVar("T")
log = structlog.get_logger(__name__)

# Third-party code found generateToken's token valid about 60 minutes (the answer does not say):
# renew 5 minutes before that.
TOKEN_LIFE_S = 3600.0
TOKEN_REFRESH_MARGIN_S = 300.0


# ---------------------------------------------------------------------------- thin clients


@dataclass(slots=True)
class _TokenSlot:
    """One account's generateToken token, shared by all its streams (10 tokens an hour)."""

    token: str | None = None
    expires: float = 0.0  # time.monotonic()
    mode: str | None = None
    """``auth = "auto"``: the mode that last worked ("apikey" or "token"); None: not tried."""
    lock: asyncio.Lock | None = None
    loop: weakref.ref[asyncio.AbstractEventLoop] | None = None
    refused_until: float = 0.0  # time.monotonic()
    """generateToken refused these credentials: no token is asked for before this."""
    refusal: str = ""

    def fresh(self) -> str | None:
        if self.token is not None and time.monotonic() < self.expires - TOKEN_REFRESH_MARGIN_S:
            return self.token
        return None

    def guard(self) -> asyncio.Lock:
        # An asyncio.Lock belongs to one loop; tests (and restarts) bring new loops.
        loop = asyncio.get_running_loop()
        if self.lock is None or self.loop is None or self.loop() is not loop:
            self.lock, self.loop = asyncio.Lock(), weakref.ref(loop)
        return self.lock


_TOKENS: dict[tuple[str, str, str], _TokenSlot] = {}


def forget_tokens() -> None:
    """Drop every cached token (tests start each simulator with a clean slate)."""
    _TOKENS.clear()


def lift_token_refusal(account: AccountSettings) -> bool:
    """A reload kept ``account``: forget a generateToken refusal of its credentials, so that its
    streams ask again at their next cycle (the operator may have fixed the account on
    Ozonetel's side, with the same username and key). True if a refusal was held."""
    if account.api_key is None:
        return False
    slot = _TOKENS.get(_slot_key(account, account.api_key.reveal()))
    if slot is None or slot.refused_until <= time.monotonic():
        return False
    slot.refused_until, slot.refusal = 0.0, ""
    return True


def _slot_key(account: AccountSettings, api_key: str) -> tuple[str, str, str]:
    # Keyed by a digest of the key too: a changed key must not reuse the old key's token.
    tag = hashlib.blake2b(api_key.encode(), digest_size=8).hexdigest()
    return (account.base_url, account.username or "", tag)


def _slot(account: AccountSettings, api_key: str) -> _TokenSlot:
    return _TOKENS.setdefault(_slot_key(account, api_key), _TokenSlot())


def _token_of(response: Response, *, endpoint: str, secrets: tuple[str, ...]) -> str:
    doc = response.json()
    if isinstance(doc, dict) and "status" in doc:
        check_status(doc, endpoint=endpoint, secrets=secrets)
    token = doc.get("token") if isinstance(doc, dict) else None
    if not isinstance(token, str) or not token:
        raise AuthError(
            f"{endpoint}: generateToken answered without a token; check the account's "
            'username, api_key and its "API Authentication" setting'
        )
    return token


def _pausing(limiter: SlidingWindowLimiter, parse: Callable[[Response], T]) -> Callable[..., T]:
    """``parse``, pausing ``limiter`` for a rate limit that arrived in a 200 body."""

    def wrapped(response: Response) -> T:
        try:
            return parse(response)
        except RateLimited as exc:
            # The transport pauses only on HTTP 429; Ozonetel's "max limit exceeded" is a 200.
            limiter.pause(exc.retry_after or 60.0)
            raise

    return wrapped


def _retry_token(exc: Exception) -> bool:
    """stamina's hook for generateToken: transient failures are retried, its rate limit never.

    generateToken allows 10 tokens an hour: "max limit exceeded" (or a 429) means the hour's
    budget is spent, so every retry within the hour is refused as well, spends nothing useful
    and may keep the account locked out. Nor is an answer of an undocumented shape: it would
    most likely come back the same, each time for one of the hour's tokens."""
    return isinstance(exc, TransientError) and not isinstance(exc, RateLimited | UnexpectedAnswer)


def _expired(exc: AuthError) -> bool:
    # "Token Expired" comes as a 200 body (TokenExpired) or as HTTP 401 quoting the message.
    text = str(exc).lower()
    return isinstance(exc, TokenExpired) or "token expired" in text or "invalid token" in text


class _Client:
    """What both clients share: the account, the transport, the token and the headers."""

    def __init__(
        self,
        account: AccountSettings,
        transport: Transport,
        limiters: Mapping[str, SlidingWindowLimiter],
        stream: str,
    ) -> None:
        if account.username is None or account.api_key is None:
            raise AuthError(f"account {account.name}: Ozonetel needs username and api_key")
        self._account = account
        self._transport = transport
        self._limiters = limiters
        self._stream = stream
        self._zone = account.zone
        self._username = account.username
        self._api_key = account.api_key.reveal()
        self._secrets = (self._api_key,)
        self._timeout_s = account.request_timeout.total_seconds()
        self._policy = RetryPolicy(attempts=account.retry_attempts)
        self._auth = str(account.option("auth"))
        self._tokens = _slot(account, self._api_key)
        self._refusal_hold_s = account.option("token_refusal_hold").total_seconds()

    @property
    def _token_mode(self) -> bool:
        mode = (self._tokens.mode or "apikey") if self._auth == "auto" else self._auth
        return mode == "token"

    def _url(self, name: str) -> str:
        return f"{self._account.base_url}{self._account.endpoints[name]}"

    async def _headers(self, token_mode: bool | None = None) -> dict[str, str]:
        headers = {"apiKey": self._api_key, "Accept": "application/json"}
        if self._token_mode if token_mode is None else token_mode:
            headers["Authorization"] = f"Bearer {await self._token()}"
        return headers

    async def _with_token(self, send: Callable[[dict[str, str]], Awaitable[T]]) -> T:
        """``send(headers)``; a "Token Expired" answer renews the token once and repeats. With
        ``auth = "auto"`` a refusal in one mode tries the other once (see ``_other_mode``)."""
        token_mode = self._token_mode
        headers = await self._headers(token_mode)
        try:
            result = await send(headers)
        except AuthError as exc:
            if token_mode and _expired(exc):
                await self._renew(headers["Authorization"].removeprefix("Bearer "))
                return await send(await self._headers(token_mode))
            if self._auth == "auto":
                return await self._other_mode(send, token_mode, exc)
            if not _expired(exc):
                raise
            raise AuthError(
                f"account {self._account.name}: Ozonetel asks for a token; the account's "
                '"API Authentication" is TOKEN: set auth = "token" (or "auto")'
            ) from None
        if self._auth == "auto" and self._tokens.mode is None:
            self._worked("token" if token_mode else "apikey", None)
        return result

    def _worked(self, mode: str, refused: str | None) -> None:
        if self._tokens.mode != mode:  # streams refused at once all switch; one says so
            self._tokens.mode = mode
            log.info("ozonetel.auth_mode", account=self._account.name, mode=mode, refused=refused)

    async def _other_mode(
        self, send: Callable[[dict[str, str]], Awaitable[T]], token_mode: bool, refused: AuthError
    ) -> T:
        """``auth = "auto"``: an account is BASIC_AUTH (the apiKey header) or TOKEN (a Bearer
        from generateToken too) on Ozonetel's side, and which one is not visible from outside.
        Refused in one mode, try the other once; keep (for every stream of the account) the
        one that works, and say which it was."""
        tried, other = ("token", "apikey") if token_mode else ("apikey", "token")
        try:
            result = await send(await self._headers(not token_mode))
        except AuthError as again:
            raise AuthError(
                f"account {self._account.name}: Ozonetel refused both auth modes ({tried}: "
                f"{refused}; {other}: {again}); no request succeeds until fixed: check username "
                'and api_key, and set auth = "apikey" or "token" to match the account\'s '
                '"API Authentication" setting'
            ) from None
        self._worked(other, tried)
        return result

    async def _renew(self, stale: str) -> None:
        async with self._tokens.guard():
            if self._tokens.token == stale:  # another stream may have renewed it already
                self._tokens.token = None

    async def _token(self) -> str:
        slot = self._tokens
        if (token := slot.fresh()) is not None:
            return token
        async with slot.guard():
            if (token := slot.fresh()) is not None:
                return token
            if slot.refused_until > time.monotonic():
                # Refused before: asking again would spend one of the hour's 10 tokens on the
                # same answer (the slot is per key and username: new credentials ask at once;
                # a reload lifts the hold of the same ones, see lift_token_refusal).
                raise AuthError(slot.refusal)
            limiter = self._limiters["token"]
            if (left := limiter.paused_until() - time.monotonic()) > 0:
                # Raised, not waited for inside the request: the stream backs off, logs this
                # every cycle and still stops at once.
                raise self._token_wait(limiter, left)
            try:
                token = await self._generate(limiter)
            except RateLimited:
                # generateToken's limit is per hour (not per minute like the others): pause for
                # the limiter's whole period, one window in which nothing more can be granted.
                limiter.pause(limiter.period)
                error = self._token_wait(limiter, limiter.period)
                log.warning(
                    "ozonetel.token_rate_limited", account=self._account.name,
                    pause_s=limiter.period, error=str(error),
                )  # fmt: skip
                raise error from None
            except AuthError as exc:
                raise self._refused(exc) from None
            slot.token, slot.expires = token, time.monotonic() + TOKEN_LIFE_S
            log.info("ozonetel.token_renewed", account=self._account.name)
            return token

    def _refused(self, exc: AuthError) -> AuthError:
        """generateToken refused the credentials (a wrong key or username): remember it for
        ``token_refusal_hold`` and say so once; until then no token is asked for (each refused
        request spent one of the hour's 10 tokens, and then the stream waited for the limit)."""
        slot = self._tokens
        slot.refused_until = time.monotonic() + self._refusal_hold_s
        resume = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self._refusal_hold_s)
        slot.refusal = (
            f"{exc}. generateToken is not asked again before {resume:%Y-%m-%d %H:%M:%S} UTC "
            "(token_refusal_hold); fix username or api_key and reload (systemctl reload "
            "cdrsync; also after a fix on Ozonetel's side) to ask again at the next cycle"
        )
        log.warning(
            "ozonetel.token_refused", account=self._account.name,
            hold_s=self._refusal_hold_s, error=slot.refusal,
        )  # fmt: skip
        return AuthError(slot.refusal)

    async def _generate(self, limiter: SlidingWindowLimiter) -> str:
        """A new token from generateToken; transient failures are retried, a rate limit not."""
        endpoint = f"{self._account.name}/ozonetel.token"
        policy = self._policy
        async for attempt in stamina.retry_context(
            on=_retry_token, attempts=policy.attempts, timeout=policy.timeout_s,
            wait_initial=policy.wait_initial_s, wait_max=policy.wait_max_s,
            wait_jitter=policy.wait_jitter_s,
        ):  # fmt: skip
            with attempt:
                # One attempt per request: the transport would retry a rate limit too.
                return await self._transport.request(
                    "POST",
                    self._url("token"),
                    limiter=limiter,
                    endpoint=endpoint,
                    headers={"apiKey": self._api_key, "Accept": "application/json"},
                    json_body=orjson.dumps({"userName": self._username}),
                    parse=functools.partial(_token_of, endpoint=endpoint, secrets=self._secrets),
                    timeout_s=self._timeout_s,
                    policy=replace(policy, attempts=1),
                )
        raise AssertionError("unreachable: stamina re-raises the last error")  # pragma: no cover

    def _token_wait(self, limiter: SlidingWindowLimiter, wait_s: float) -> RateLimited:
        resume = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=wait_s)
        return RateLimited(
            f"{self._account.name}/ozonetel.token: generateToken refused a new token for its rate "
            f"limit ({limiter.limit} per {limiter.period / 60:g} min); no token is asked for "
            f"before {resume:%Y-%m-%d %H:%M:%S} UTC, so this account's bulk reports wait until "
            "then. If this recurs, make sure nothing else generates tokens with this API key "
            "(they share the budget) or lower rate_limits.token",
            retry_after=wait_s,
        )
