"""The vendor-facing HTTP client: the only aiohttp client user (transport) and its rate limiter.

May import: cdrsync.errors, cdrsync.model, cdrsync.config (never store, vendors or anything above).
"""
