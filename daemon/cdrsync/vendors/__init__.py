"""Vendor adapters: one module per vendor, a pure parser plus a thin fetch, behind Protocols.

A vendor offers some of: a ``WindowSource`` (a list endpoint read by time window: Acefone,
Ozonetel), a ``DaySource`` (a list endpoint read by local day with offsets: VCC Live), a
``LookupSource`` (per-call endpoints fed by the ``lookups`` queue), a push parser (webhooks) and
an outbox sink (VCC Live add record). Adding a vendor is one module plus its lines here.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from cdrsync.config import AccountSettings
    from cdrsync.http.limiter import SlidingWindowLimiter
    from cdrsync.http.transport import Transport
    from cdrsync.model import LookupItem, LookupOutcome, Page, PushResult, Window


class WindowSource(Protocol):
    """A vendor list endpoint that returns the calls of a time window, page by page.

    A source may also set ``prefetch_first_page = True``: the window stream then asks for the
    next window's page 1 while the current window's pages are read (only where the vendor's
    budget leaves room for it: Acefone)."""

    vendor: str
    page_size: int

    async def fetch_page(self, window: Window, page: int) -> Page:
        """Fetch and parse page ``page`` (1-based) of the calls that started inside ``window``."""
        ...

    async def count(self, window: Window) -> int:
        """The vendor's count of calls in ``window``, as cheaply as the API allows."""
        ...


@runtime_checkable
class SkipsStored(Protocol):
    """A window source that can leave out records identical to their stored list copies."""

    vendor: str

    def remember(self, window: Window, hashes: frozenset[bytes]) -> None:
        """Skip ``window``'s records whose bytes hash to one of ``hashes``."""
        ...

    def forget(self, window: Window) -> None:
        """Stop skipping ``window``'s stored records."""
        ...


class LookupSource(Protocol):
    """Per-call endpoints of one account, driven by the ``lookups`` queue."""

    kinds: tuple[str, ...]
    """The lookup kinds it performs (``LookupRequest.kind``), e.g. ("vcclive.cdr", ...)."""

    def limiter_group(self, kind: str) -> str:
        """The rate-limit group ("lookup", "records", ...) one attempt of ``kind`` spends."""
        ...

    async def perform(self, item: LookupItem, now: dt.datetime) -> LookupOutcome:
        """One attempt: apply the vendor's schedule rules to ``now``, then (maybe) request.

        Raises ``TransientError``/``RateLimited`` when the vendor could not answer (the item is
        retried later without counting), ``PermanentError`` when the vendor refuses this item
        for good (given up), ``AuthError``/``EndpointError`` when it refuses the account or the
        endpoint itself (the item stays pending and the whole stream backs off)."""
        ...


PushParser = Callable[..., "PushResult"]
"""``parse_push(doc, *, account: AccountSettings, received_at: datetime) -> PushResult``:
a decoded push body (a JSON object) as calls to store now and lookups to queue. Raises
``ParseError`` for a body that cannot be used (the receiver answers 422 and keeps it in
``rejects``)."""

Factory = Callable[["AccountSettings", "Transport", "Mapping[str, SlidingWindowLimiter]", str], Any]
WindowSourceFactory = Factory


def window_source_factory(vendor: str) -> Factory:
    """The factory of a vendor's window source (imported lazily to keep start-up light)."""
    if vendor == "acefone":
        from cdrsync.vendors.acefone import AcefoneSource

        return AcefoneSource
    if vendor == "ozonetel":
        from cdrsync.vendors.ozonetel import OzonetelSource

        return OzonetelSource
    raise KeyError(vendor)


def lookup_source_factory(vendor: str) -> Factory | None:
    """The factory of a vendor's lookup source, or None when the vendor has no lookups."""
    if vendor == "ozonetel":
        from cdrsync.vendors.ozonetel_lookup import OzonetelLookups

        return OzonetelLookups
    if vendor == "vcclive":
        from cdrsync.vendors.vcclive import VccLookups

        return VccLookups
    return None


def lift_holds(accounts: Iterable[AccountSettings]) -> list[str]:
    """A reload kept ``accounts``: lift the holds a vendor's refusal of an account put on its
    requests (Ozonetel's generateToken refusal), since the operator who reloads may have fixed
    the cause on the vendor's side, where cdrsync cannot see it. The names of the accounts
    whose hold was lifted."""
    lifted = []
    for account in accounts:
        if account.vendor == "ozonetel":
            from cdrsync.vendors.ozonetel_client import lift_token_refusal

            if lift_token_refusal(account):
                lifted.append(account.name)
    return lifted


def push_parser(vendor: str) -> PushParser | None:
    """The vendor's push (webhook) parser, or None when cdrsync takes no pushes from it."""
    if vendor == "ozonetel":
        from cdrsync.vendors.ozonetel import parse_push

        return parse_push
    if vendor == "vcclive":
        from cdrsync.vendors.vcclive import parse_push as parse_vcc_push

        return parse_vcc_push
    return None


REGISTRY: tuple[str, ...] = ("acefone", "ozonetel", "vcclive")
"""Vendors cdrsync can sync. Config validation lists these."""
