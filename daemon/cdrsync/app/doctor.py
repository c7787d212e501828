"""`cdrsync doctor`: a handful of probes per account, judged by ``ops.diagnosis``.

Every request goes through the account's own limiters with the shared grants in
``rate_grants`` (``streams.shared_limiters``), exactly as the daemon's, so doctor is safe
beside a running daemon: it spends from the same budget and never more than it allows. It
writes no call. At most: Acefone 3 list requests (plus a login with email/password); Ozonetel
2 bulk requests and 1 CallBacks lookup (plus a token in TOKEN mode); VCC Live 1 day-list and
1 CDR request.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, cast

import orjson

from cdrsync.app.streams import shared_limiters
from cdrsync.errors import AuthError, CdrsyncError
from cdrsync.model import LookupItem, Page, Window
from cdrsync.ops import diagnosis as judge
from cdrsync.ops.diagnosis import AccountReport, Check

if TYPE_CHECKING:
    from cdrsync.app.runtime import Runtime
    from cdrsync.config import AccountSettings
    from cdrsync.http.limiter import SlidingWindowLimiter
    from cdrsync.http.transport import Response, Transport

PROBE_SPAN = dt.timedelta(days=1)
"""How far back the list probe looks for recent calls. The probe windows also reach into the
future (Acefone: a day; Ozonetel, VCC Live: the rest of the local day): read in a zone west of
the vendor's, the newest calls then start "in the future", which is how a wrong zone shows."""

RECENT_SPAN = dt.timedelta(hours=1)
"""Ozonetel's list probe starts this long before now (its pages run oldest first)."""

Limiters = Mapping[str, "SlidingWindowLimiter"]


class _Recorder:
    """The shared transport, keeping the last response: some checks name its raw shape."""

    def __init__(self, inner: Transport) -> None:
        self._inner = inner
        self.last: Response | None = None
        self.last_headers: dict[str, str] = {}

    async def request(self, method: str, url: str, *, parse: Callable[..., Any], **kw: Any) -> Any:
        def keep(response: Response) -> Any:
            self.last = response
            return parse(response)

        self.last = None
        self.last_headers = dict(kw.get("headers") or {})
        return await self._inner.request(method, url, parse=keep, **kw)

    def last_json(self) -> Any:
        if self.last is None:
            return None
        try:
            return orjson.loads(self.last.body)
        except orjson.JSONDecodeError:
            return None


async def diagnose(rt: Runtime, account: AccountSettings, *, now: dt.datetime) -> AccountReport:
    """Probe one account and judge what came back."""
    limiters = await shared_limiters(rt, account)
    recorder = _Recorder(rt.transport)
    probes: dict[str, Callable[..., Awaitable[list[Check]]]] = {
        "acefone": _acefone,
        "ozonetel": _ozonetel,
        "vcclive": _vcclive,
    }
    checks = await probes[account.vendor](account, recorder, limiters, now)
    if account.vendor != "acefone":
        listen = rt.settings.daemon.http_listen
        checks.append(judge.push_hint(account.name, account.webhook_secret is not None, listen))
    return AccountReport(account.name, account.vendor, tuple(checks))


async def _first_page(fetch: Awaitable[Page]) -> tuple[Page | None, list[Check]]:
    """The list probe: auth and list checks, and the page when it answered."""
    try:
        page = await fetch
    except AuthError as exc:
        return None, [Check("auth", judge.FAIL, str(exc), "fix the account's credentials")]
    except CdrsyncError as exc:
        return None, [
            Check("auth", judge.UNKNOWN, "the list request failed before auth could be told"),
            judge.judge_request("list", str(exc), ""),
        ]
    return page, [
        Check("auth", judge.OK, "accepted"),
        judge.judge_request("list", None, f"answered: {page.size} call(s) on the first page"),
    ]


def _record_checks(page: Page, account: AccountSettings, now: dt.datetime) -> list[Check]:
    starts = [r.started_at for r in page.records if r.started_at is not None]
    newest = max(starts, default=None)
    return [
        judge.judge_zone(newest, now=now, zone=account.timezone),
        judge.judge_fields(page.records),
    ]


async def _acefone(
    account: AccountSettings, recorder: _Recorder, limiters: Limiters, now: dt.datetime
) -> list[Check]:
    from cdrsync.vendors.acefone import AcefoneSource

    source = AcefoneSource(account, _as_transport(recorder), limiters, f"{account.name}/doctor")
    window = Window(now - PROBE_SPAN, now + PROBE_SPAN)
    size = account.page_size
    first, checks = await _first_page(source.probe_page(window, 1, size))
    if first is None:
        return checks
    count_of_one = (await source.probe_page(window, 1, 1)).total if first.size >= 2 else None
    checks.append(judge.judge_count(first.size, count_of_one))
    per_page = count_of_one == 1
    second = None
    if per_page and first.size < size:
        second = (await source.probe_page(window, 2, size)).size
    total = None if per_page or count_of_one is None else count_of_one
    checks.append(judge.judge_page_cap(size, first.size, total=total, second_page_rows=second))
    return checks + _record_checks(first, account, now)


async def _ozonetel(
    account: AccountSettings, recorder: _Recorder, limiters: Limiters, now: dt.datetime
) -> list[Check]:
    from cdrsync.vendors.ozonetel import OzonetelSource, earliest_available

    source = OzonetelSource(account, _as_transport(recorder), limiters, f"{account.name}/doctor")
    zone = account.zone
    midnight = dt.datetime.combine(now.astimezone(zone).date(), dt.time(), zone)
    # Ozonetel wants both bounds on one local day: the last hour of today, to its end. Its
    # pages run oldest first, so a whole day's first page would show no recent call.
    start = max(midnight.astimezone(dt.UTC), now - RECENT_SPAN)
    window = Window(start, (midnight + PROBE_SPAN).astimezone(dt.UTC))
    mode = account.option("auth")
    first, checks = await _first_page(source.fetch_page(window, 1))
    if first is None:
        if checks[0].verdict == judge.FAIL and mode in OTHER_MODE:
            checks[0] = await _other_mode(account, recorder, limiters, window, checks[0])
        return checks
    # The mode that worked shows in what went out: a bearer token, or the apiKey alone.
    used = "token" if "Authorization" in recorder.last_headers else "apikey"
    configured = "" if used == mode else f' (auth = "{mode}")'
    checks[0] = Check("auth", judge.OK, f"accepted in {used} mode{configured}")
    checks.append(await _leg_ids(account, recorder, limiters, first, now))
    # A day before the oldest the bulk API serves has no calls whatever the account's traffic.
    gone = earliest_available(now, zone, account.option("retention")) - dt.timedelta(hours=12)
    error = None
    try:
        await source.fetch_page(Window(gone, gone + dt.timedelta(minutes=1)), 1)
    except CdrsyncError as exc:
        error = str(exc)
    checks.append(judge.judge_empty_answer(recorder.last_json(), error))
    return checks + _record_checks(first, account, now)


OTHER_MODE = {"apikey": "token", "token": "apikey"}


async def _other_mode(
    account: AccountSettings,
    recorder: _Recorder,
    limiters: Limiters,
    window: Window,
    refused: Check,
) -> Check:
    """Ozonetel refused the configured auth mode: one request in the other mode says whether
    the account's "API Authentication" is that one (BASIC_AUTH is apikey, TOKEN is token)."""
    from cdrsync.vendors.ozonetel import OzonetelSource

    mode = account.option("auth")
    other = OTHER_MODE[mode]
    flipped = dataclasses.replace(account, options={**account.options, "auth": other})
    source = OzonetelSource(flipped, _as_transport(recorder), limiters, f"{account.name}/doctor")
    try:
        await source.fetch_page(window, 1)
    except CdrsyncError:
        return dataclasses.replace(
            refused, observed=f"refused in {mode} mode and in {other} mode: {refused.observed}"
        )
    return Check(
        "auth",
        judge.FAIL,
        f"refused in {mode} mode, accepted in {other} mode",
        f'set auth = "{other}" for this account',
    )


async def _leg_ids(
    account: AccountSettings, recorder: _Recorder, limiters: Limiters, page: Page, now: dt.datetime
) -> Check:
    """One CallBacks lookup, of a transferred call's later leg when the page has one: its
    record shows whether ``monitorUCID`` is the leg's own UCID or the call's shared one."""
    from cdrsync.vendors.ozonetel_lookup import OzonetelLookups
    from cdrsync.vendors.ozonetel_parse import LOOKUP_KIND

    legs: dict[str | None, int] = {}
    for record in page.records:
        legs[record.call_id] = legs.get(record.call_id, 0) + 1
    timed = [r for r in page.records if r.started_at is not None]
    chosen = max(timed, key=lambda r: (legs[r.call_id] > 1, r.started_at), default=None)
    answered: list[dict[str, Any]] = []
    if chosen is not None and chosen.started_at is not None:
        lookups = OzonetelLookups(
            account, _as_transport(recorder), limiters, f"{account.name}/doctor"
        )
        item = LookupItem(
            id=0, vendor="ozonetel", account=account.name, kind=LOOKUP_KIND,
            call_key=chosen.call_key, context={"started_at": chosen.started_at.isoformat()},
            attempts=0, created_at=now, next_attempt_at=now,
        )  # fmt: skip
        with contextlib.suppress(CdrsyncError):
            await lookups.perform(item, now)
        # CallBacks answers its records in "message" (a list, or one object).
        found = recorder.last_json()
        message = found.get("message") if isinstance(found, dict) else None
        message = [message] if isinstance(message, dict) else message
        answered = [m for m in message if isinstance(m, dict)] if isinstance(message, list) else []
    bulk = [orjson.loads(r.raw) for r in page.records]
    return judge.judge_leg_ids(bulk, None if chosen is None else chosen.call_key, answered)


async def _vcclive(
    account: AccountSettings, recorder: _Recorder, limiters: Limiters, now: dt.datetime
) -> list[Check]:
    from cdrsync.vendors.vcclive import VccDaySource, VccLookups

    stream = f"{account.name}/doctor"
    days = VccDaySource(account, _as_transport(recorder), limiters, stream)
    today = now.astimezone(account.zone).date()
    first, checks = await _first_page(days.fetch_day(today, 0, days.page_size))
    if first is None:
        return checks
    lookups = VccLookups(account, _as_transport(recorder), limiters, stream)
    created = now - account.option("lookup_delay")
    item = LookupItem(
        id=0, vendor="vcclive", account=account.name, kind="vcclive.cdr",
        call_key=str(uuid.uuid4()), context={}, attempts=0, created_at=created,
        next_attempt_at=now,
    )  # fmt: skip
    outcome, error = None, None
    try:
        outcome = (await lookups.perform(item, now)).state
    except CdrsyncError as exc:
        error = str(exc)
    status = recorder.last.status if recorder.last is not None else None
    checks.append(judge.judge_not_yet(status, recorder.last_json(), outcome, error))
    starts = [r.started_at for r in first.records if r.started_at is not None]
    checks.append(judge.judge_partition(today, starts, account.zone))
    return checks + _record_checks(first, account, now)


def _as_transport(recorder: _Recorder) -> Transport:
    # The vendor clients call only Transport.request, which the recorder forwards.
    return cast("Transport", recorder)
