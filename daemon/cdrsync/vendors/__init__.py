"""Vendor adapters: one module per vendor, a pure parser plus a thin fetch, behind one Protocol.

Adding a vendor is one module plus one line in ``REGISTRY``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from cdrsync.config import AccountSettings
    from cdrsync.limiter import SlidingWindowLimiter
    from cdrsync.model import Page, Window
    from cdrsync.transport import Transport


class WindowSource(Protocol):
    """A vendor list endpoint that returns the calls of a time window, page by page."""

    vendor: str
    page_size: int

    async def fetch_page(self, window: Window, page: int) -> Page:
        """Fetch and parse page ``page`` (1-based) of the calls that started inside ``window``."""
        ...

    async def count(self, window: Window) -> int:
        """The vendor's count of calls in ``window``, as cheaply as the API allows."""
        ...


WindowSourceFactory = Callable[
    ["AccountSettings", "Transport", "dict[str, SlidingWindowLimiter]", str], WindowSource
]


def window_source_factory(vendor: str) -> WindowSourceFactory:
    """The factory for a vendor's window source (imported lazily to keep start-up light)."""
    if vendor == "acefone":
        from cdrsync.vendors.acefone import AcefoneSource

        return AcefoneSource
    raise KeyError(vendor)


REGISTRY: tuple[str, ...] = ("acefone",)
"""Vendors cdrsync can sync. Config validation lists these."""
