"""Ozonetel CloudAgent's CDR in CallBacks lookups: one call by UCID, for the lookup queue.

The request rules (``lookup_decision``: the report type by the call's IST day, no request
between 00:00 and 03:00 IST for yesterday's calls, nothing past 15 days) are pure and live in
``ozonetel``; this is the thin client that applies them at the instant a request goes out.
Vendor behaviour this answers:
- the legacy API takes the apiKey in the query and answers every question with HTTP 200 and a
  status string: "No Data Found with UCID ..." (not there yet: asked again later, the waits
  doubling up to 6 hours), or a refusal about the call;
- 50 requests a minute per account ("max limit exceeded" pauses the limiter).
"""

from __future__ import annotations

import datetime as dt
import functools
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from cdrsync.errors import AuthError, CdrsyncError, EndpointError, PermanentError
from cdrsync.model import CallRecord, LookupOutcome, Reject
from cdrsync.vendors.ozonetel import LookupDecision, lookup_decision, unsent_outcome
from cdrsync.vendors.ozonetel_client import _Client, _pausing
from cdrsync.vendors.ozonetel_parse import LOOKUP_KIND, parse_lookup

if TYPE_CHECKING:
    from cdrsync.http.limiter import SlidingWindowLimiter
    from cdrsync.http.transport import Response
    from cdrsync.model import LookupItem

__all__ = ["MAX_RETRY_WAIT", "OzonetelLookups", "asked_leg", "retry_wait"]


def _started_at(item: LookupItem) -> dt.datetime | None:
    value = item.context.get("started_at")
    try:
        started = dt.datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None
    if started is not None and started.tzinfo is None:
        return None
    return started


def asked_leg(records: list[CallRecord], ucid: str, started_at: dt.datetime) -> list[CallRecord]:
    """The records of a CallBacks answer that are the asked leg's copy, or another leg's that
    names itself by ``UCID``.

    A record without ``UCID`` is keyed by the UCID asked for (``parse_lookup``). Were the API
    to answer one ``ucid`` with every leg sharing its ``monitorUCID`` (a transferred call),
    several would take that key: only the one that started when the pushed leg did is the
    asked leg's, and none is when none did (the list's copies bring the legs anyway).
    """
    asked = [r for r in records if r.call_key == ucid]
    if len(asked) <= 1:
        return records
    same = [r for r in asked if r.started_at == started_at][:1]
    return [r for r in records if r.call_key != ucid] + same


MAX_RETRY_WAIT = dt.timedelta(hours=6)


def retry_wait(base: dt.timedelta, attempts: int) -> dt.timedelta:
    """The wait after a "No Data Found": ``base`` doubled per attempt already made, at most
    6 hours, so a call the CallBacks API never serves costs some 60 requests over the 15-day
    horizon rather than two thousand."""
    wait: dt.timedelta = base * (2 ** min(attempts, 16))
    return min(wait, MAX_RETRY_WAIT)


class _Superseded(Exception):
    """The report type chosen before the limiter's wait no longer holds when it grants."""

    def __init__(self, decision: LookupDecision, at: dt.datetime) -> None:
        super().__init__(decision.reason)
        self.decision, self.at = decision, at


class _Recheck:
    """The lookup limiter, deciding again once it grants, right before the request goes out.

    The limiter (and the transport's retries) may wait across IST midnight: a "currentday"
    chosen at 23:59:40 must not go out at 00:00:05, when the call's day is migrating to the
    historical report (no request between 00:00 and 03:00 IST)."""

    __slots__ = ("_base", "_check")

    def __init__(self, base: SlidingWindowLimiter, check: Callable[[], _Superseded | None]) -> None:
        self._base, self._check = base, check

    async def acquire(self) -> None:
        """Wait for a grant, then raise ``_Superseded`` if the decision changed meanwhile."""
        await self._base.acquire()
        if (stale := self._check()) is not None:
            raise stale

    def __getattr__(self, name: str) -> object:
        return getattr(self._base, name)


class OzonetelLookups(_Client):
    """CDR in CallBacks lookups for one account (a ``LookupSource``)."""

    kinds: tuple[str, ...] = (LOOKUP_KIND,)

    def limiter_group(self, kind: str) -> str:
        """Every lookup spends the CallBacks API's 50/min."""
        return "lookup"

    async def perform(self, item: LookupItem, now: dt.datetime) -> LookupOutcome:
        """One attempt: wait, give up or ask, as the report-type rules say for ``now``."""
        started = _started_at(item)
        if started is None:
            note = "the lookup has no started_at to pick a report type with"
            return LookupOutcome("gave_up", counted=False, note=note)
        if not (item.call_key.isascii() and item.call_key.isdigit()):
            # Ozonetel answers "ucid should be numeric only": asking would fail forever.
            note = "Ozonetel UCIDs are numeric; this one is not"
            return LookupOutcome("gave_up", counted=False, note=note)
        retention = self._account.option("retention")
        decision = lookup_decision(started, now, zone=self._zone, retention=retention)
        if decision.action != "request" or decision.report_type is None:
            return unsent_outcome(decision, now)
        began = time.monotonic()

        def superseded() -> _Superseded | None:
            # `now` moved on by the time waited since (limiter, retries): the instant it goes out.
            at = now + dt.timedelta(seconds=time.monotonic() - began)
            fresh = lookup_decision(started, at, zone=self._zone, retention=retention)
            same = (fresh.action, fresh.report_type) == (decision.action, decision.report_type)
            return None if same else _Superseded(fresh, at)

        try:
            found = await self._ask(item.call_key, decision.report_type, superseded)
        except _Superseded as stale:
            return unsent_outcome(stale.decision, stale.at)
        if found is None:
            retry_at = now + retry_wait(self._account.option("lookup_retry"), item.attempts)
            return LookupOutcome("retry", next_attempt_at=retry_at, note="No Data Found yet")
        records, rejects = found
        records = asked_leg(records, item.call_key, started)
        return LookupOutcome("done", records=tuple(records), rejects=tuple(rejects))

    async def _ask(
        self, ucid: str, report_type: str, superseded: Callable[[], _Superseded | None]
    ) -> tuple[list[CallRecord], list[Reject]] | None:
        limiter = self._limiters["lookup"]
        fetched_at = dt.datetime.now(dt.UTC)
        answers: list[CdrsyncError] = []
        read = _pausing(
            limiter,
            functools.partial(
                _lookup_of,
                account=self._account.name,
                stream=self._stream,
                zone=self._zone,
                fetched_at=fetched_at,
                secrets=self._secrets,
                ucid=ucid,
            ),
        )

        def parse(response: Response) -> tuple[list[CallRecord], list[Reject]] | None:
            try:
                return read(response)
            except CdrsyncError as exc:
                answers.append(exc)  # Ozonetel's answer about this call, in a 200 body
                raise

        # The legacy API takes the key in the query: the transport blanks every value it sent
        # out of its errors and logs, and our messages never quote a URL.
        params = {
            "userName": self._username,
            "apiKey": self._api_key,
            "ucid": ucid,
            "reportType": report_type,
        }
        try:
            return await self._transport.request(
                "GET",
                self._url("lookup"),
                limiter=cast("SlidingWindowLimiter", _Recheck(limiter, superseded)),
                endpoint=f"{self._account.name}/ozonetel.callbacks",
                params=params,
                headers={"Accept": "application/json"},
                parse=parse,
                timeout_s=self._timeout_s,
                policy=self._policy,
            )
        except AuthError:
            raise
        except PermanentError as exc:
            if any(exc is answer for answer in answers):
                raise
            # Ozonetel answers every CallBacks question with HTTP 200 and a status string, so
            # an HTTP 4xx refuses the endpoint itself (the unverified callbacks.php path is
            # wrong for this account): it would refuse every call alike.
            raise self._endpoint_refused(exc) from exc

    def _endpoint_refused(self, exc: PermanentError) -> EndpointError:
        path = self._account.endpoints["lookup"]
        return EndpointError(
            f"{exc}. It refuses the CallBacks endpoint itself, not one call: no lookup of "
            f"account {self._account.name} can succeed, so they stay queued and the lookup "
            f'stream backs off. Check the account\'s [accounts.endpoints] lookup = "{path}" '
            "(the default path's casing is unverified) and its base_url"
        )


def _lookup_of(response: Response, **kwargs: Any) -> tuple[list[CallRecord], list[Reject]] | None:
    return parse_lookup(response.body, **kwargs)
