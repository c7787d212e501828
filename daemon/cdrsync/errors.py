"""The one error hierarchy of cdrsync.

Driver errors (aiohttp, asyncpg, OSError) are translated into these at the module that
talks to the driver, so the rest of the code decides by category, never by driver type.
The docstring of each class is its default message. Only ``TransientError`` (and its
subclass ``RateLimited``) is ever retried.
"""

from __future__ import annotations


class CdrsyncError(Exception):
    """cdrsync failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class TransientError(CdrsyncError):
    """A temporary failure (network, 5xx, timeout, truncated body): retrying may succeed."""


class RateLimited(TransientError):
    """The vendor refused the request for exceeding its rate limit."""

    def __init__(self, message: str | None = None, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class BadPageError(TransientError):
    """A page could not be read as a whole (malformed or truncated JSON); it is fetched again."""


class UnexpectedAnswer(BadPageError):
    """Well-formed JSON of a shape the vendor does not document (no count, no rows list): asked
    again at the stream's next cycle, not at once, since an immediate retry most likely gets
    the same answer and, with a scarce budget (Ozonetel: 2 a minute), wastes a request."""


class PermanentError(CdrsyncError):
    """The vendor refused the request in a way that retrying will not fix."""


class AuthError(PermanentError):
    """The vendor rejected the credentials; check the account's token or password."""


class EndpointError(PermanentError):
    """The vendor refused the endpoint itself, whatever was asked; check the account's
    endpoint settings (every request to it fails until they are fixed)."""


class PermissionRefused(PermanentError):
    """The vendor refused the API token a kind of request altogether (a permission it lacks):
    every request of that kind for the account would be refused alike until it is granted.
    ``hold_s``: how long the account's requests of the kind wait before one is tried again."""

    def __init__(self, message: str | None = None, *, hold_s: float) -> None:
        super().__init__(message)
        self.hold_s = hold_s


class ParseError(CdrsyncError):
    """A single record could not be normalized; it goes to the rejects table."""


RECORD_ERRORS: tuple[type[Exception], ...] = (ParseError, OverflowError, RecursionError)
"""What normalizing one record may raise; the record becomes a reject. OverflowError is a date
arithmetic on an absurd vendor value (``9999-12-31 23:59:59`` plus a duration), RecursionError
a record nested deeper than Python's stack: uncaught, either would end the stream on the same
page after every restart."""


class ConfigError(CdrsyncError):
    """The configuration is invalid."""

    def __init__(self, message: str | None = None, *, problems: list[str] | None = None) -> None:
        self.problems = list(problems or [])
        if message is None and self.problems:
            message = "invalid configuration:\n  " + "\n  ".join(self.problems)
        super().__init__(message)


class StoreError(CdrsyncError):
    """PostgreSQL is unreachable or refused a statement; the stream pauses and retries."""


class AccessRefused(StoreError):
    """PostgreSQL refused database.dsn's role, password or database: cdrsync cannot start until
    that is fixed in database.dsn or on the server. Retried like any StoreError, since an
    operator may fix the role on the server while the daemon waits."""
