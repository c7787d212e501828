"""cdrsync: keeps PostgreSQL in step with telephony vendors' call detail records."""

__version__ = "0.1.0"
