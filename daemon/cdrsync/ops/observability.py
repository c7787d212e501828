"""Logs, health endpoints and systemd notification.

Logging: structlog to stdout, one JSON object a line off a terminal, a readable console on one;
stdlib loggers (aiohttp, asyncpg) go through the same renderer. A processor scrubs secrets from
every event, tracebacks included, before it is rendered. Under systemd, when stdout is the
journal's stream, each line starts with its syslog priority (``<4>`` for a warning), which
journald strips and stores as the line's priority, so ``journalctl -p warning`` filters.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import sys
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any

import structlog
from structlog.typing import EventDict, Processor

MASK = "***"
_PREFIX = 4
"""Shorter configured secrets are not masked as such (they would mask ordinary words)."""

# Values that must never be logged even when we do not know them as configured secrets:
# `token=` query values (Acefone recording URLs carry one), bearer tokens, api keys and
# passwords in URLs or key=value text.
_PATTERNS = (
    re.compile(r"(?i)((?:token|apikey|api_key|password|secret)=)[^&\s\"',;]+"),
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"),
    re.compile(r"(?i)(\"?(?:apikey|api_key|authorization|password|token)\"?\s*:\s*\"?)[^\"\s,}]+"),
    re.compile(r"(//[^/:@\s]+:)[^@/\s]+(@)"),
)


class SecretScrubber:
    """A structlog processor replacing secrets in every string of an event (nested too)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: list[str] = []
        self._by_prefix: dict[str, list[str]] = {}
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        """Also mask these exact values (configured tokens, passwords, keys)."""
        # Longest first so that a secret containing another is masked whole; very short values
        # would mask ordinary words, so they are left to the patterns.
        known = {s for s in (*self._secrets, *secrets) if len(s) >= _PREFIX}
        ordered = sorted(known, key=len, reverse=True)
        # By their first characters: a thousand accounts bring a thousand tokens, and looking
        # for each in every string of every event cost more than the rest of the logging.
        index: dict[str, list[str]] = {}
        for secret in ordered:  # longest first within each prefix, too
            index.setdefault(secret[:_PREFIX], []).append(secret)
        # Swapped in whole, in one assignment: a line logged meanwhile (a reload adds secrets
        # while the streams log, from other threads too) is scrubbed by the old index or by
        # the new one, never by a half-built one that misses the old secrets.
        self._secrets, self._by_prefix = ordered, index

    def scrub(self, text: str) -> str:
        """``text`` with every known secret and secret-looking value masked."""
        for secret in self._candidates(text):
            if secret in text:
                text = text.replace(secret, MASK)
        for pattern in _PATTERNS:
            if pattern.groups == 2:
                text = pattern.sub(lambda m: f"{m.group(1)}{MASK}{m.group(2)}", text)
            else:
                text = pattern.sub(lambda m: f"{m.group(1)}{MASK}", text)
        return text

    def _candidates(self, text: str) -> list[str]:
        """The known secrets whose first characters occur in ``text``, longest first."""
        if not self._by_prefix or len(text) < _PREFIX:
            return []
        grams = {text[i : i + _PREFIX] for i in range(len(text) - _PREFIX + 1)}
        found = [s for g in grams & self._by_prefix.keys() for s in self._by_prefix[g]]
        return sorted(found, key=len, reverse=True)

    def _value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.scrub(value)
        if isinstance(value, Mapping):
            return {k: self._value(v) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [self._value(v) for v in value]
        if isinstance(value, BaseException):
            return self.scrub(f"{type(value).__name__}: {value}")
        if value is None or isinstance(value, bool | int | float):
            return value
        return self.scrub(str(value))

    def __call__(self, logger: Any, method: str, event: EventDict) -> EventDict:
        for key in list(event):
            event[key] = self._value(event[key])
        return event


SCRUBBER = SecretScrubber()


def _drop_color_message(logger: Any, method: str, event: EventDict) -> EventDict:
    event.pop("color_message", None)
    return event


# sd-daemon(3): a line starting "<N>" on a stream connected to journald is stored with syslog
# priority N (and without the prefix). CRITICAL and above share <2>.
_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))


def syslog_priority(levelno: int) -> int:
    """The syslog priority of a stdlib log level: 3 error, 4 warning, 6 info, 7 debug."""
    for threshold, priority in _PRIORITIES:
        if levelno >= threshold:
            return priority
    return 7


def writes_to_journal(stream: Any, environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``stream`` is the journal stream systemd gave this service: ``$JOURNAL_STREAM``
    names its device and inode (systemd.exec(5)). A redirected stdout (``cdrsync status > f``
    inside a unit) has another inode, and keeps its lines unprefixed."""
    env = os.environ if environ is None else environ
    device, _, inode = env.get("JOURNAL_STREAM", "").partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        stat = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):  # no file descriptor behind it
        return False
    return (stat.st_dev, stat.st_ino) == (int(device), int(inode))


class SyslogPrefix(logging.Formatter):
    """Prefixes every line another formatter renders with ``<priority>`` for journald (each line:
    journald reads a multi-line traceback of the console format as separate entries)."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self._inner = inner

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in self._inner.format(record).split("\n"))


def configure_logging(
    *,
    level: str = "info",
    fmt: str = "auto",
    secrets: Iterable[str] = (),
    stream: Any = None,
    environ: Mapping[str, str] | None = None,
) -> None:
    """Set up structlog and the stdlib root logger once, for the whole process (``environ``:
    where to look for ``JOURNAL_STREAM``, by default the process's environment)."""
    SCRUBBER.add(secrets)
    out = stream or sys.stdout
    as_json = fmt == "json" or (fmt == "auto" and not out.isatty())
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _drop_color_message,
    ]
    renderer: Processor
    if as_json:
        renderer = structlog.processors.JSONRenderer(serializer=_json_dumps)
        tail: list[Processor] = [structlog.processors.dict_tracebacks, SCRUBBER]
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
        tail = [structlog.processors.format_exc_info, SCRUBBER]
    structlog.configure(
        processors=[
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tail, renderer],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(SyslogPrefix(formatter) if writes_to_journal(out, environ) else formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log would print every webhook URL, query (secret) included.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # transport.py logs each retry itself (event http.retry, secrets filtered); stamina's own
    # structlog hook would log every retry a second time.
    import stamina.instrumentation

    stamina.instrumentation.set_on_retry_hooks([])


def _json_dumps(obj: Any, **kwargs: Any) -> str:
    import orjson

    return orjson.dumps(obj, default=str).decode()


# ---------------------------------------------------------------------------- systemd


def sd_notify(*lines: str, environ: MutableMapping[str, str] | None = None) -> bool:
    """Send ``READY=1``-style lines to systemd's ``NOTIFY_SOCKET``; False when not under systemd."""
    env = os.environ if environ is None else environ
    address = env.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace socket
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.connect(address)
            sock.sendall("\n".join(lines).encode())
        except OSError:
            return False
    return True


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings: half of systemd's ``WatchdogSec`` (from
    ``WATCHDOG_USEC``), or None when the watchdog is off or meant for another process."""
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) <= 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6


class StatusBoard:
    """The one-line ``STATUS=`` summary systemd shows: streams, failures, worst lag, rows.

    Updated after every cycle of every stream, so an update costs O(1), not O(streams): with a
    thousand accounts a full recount per cycle cost more CPU than the cycles' own SQL. The worst
    lag is recounted only when the stream holding it reports a smaller one."""

    def __init__(self) -> None:
        self._lags: dict[str, float | None] = {}
        self._failing: set[str] = set()
        self._rows = 0
        self._worst: tuple[float, str] | None = None
        self._stale = False  # the holder of _worst lowered its lag: recount before showing

    def update(self, stream: str, *, ok: bool, lag_s: float | None, rows: int) -> str:
        """Record a finished cycle of ``stream``; the new summary line."""
        self._lags[stream] = lag_s
        if ok:
            self._failing.discard(stream)
        else:
            self._failing.add(stream)
        self._rows += rows
        worst = self._worst
        if lag_s is not None and (worst is None or (lag_s, stream) >= worst):
            # Not below the old worst, so not below any other stream's: the worst now.
            self._worst, self._stale = (lag_s, stream), False
        elif worst is not None and worst[1] == stream:
            self._stale = True
        return self.line()

    def forget(self, streams: Iterable[str]) -> None:
        """Streams that no longer run (their account was removed or disabled by a reload):
        left in, they would be counted, and a failing or lagging one shown, until a restart."""
        for stream in streams:
            self._lags.pop(stream, None)
            self._failing.discard(stream)
            if self._worst is not None and self._worst[1] == stream:
                # Recounted now, not left to line(): an update() first would take its own
                # stream for the worst and hide a laggier one.
                lags = [(lag, name) for name, lag in self._lags.items() if lag is not None]
                self._worst, self._stale = max(lags, default=None), False

    def line(self) -> str:
        """E.g. ``3 streams, 1 failing; max lag 63s (acme-in/list); 1204 rows written``."""
        if self._stale:
            lags = [(lag, name) for name, lag in self._lags.items() if lag is not None]
            self._worst, self._stale = max(lags, default=None), False
        text = f"{len(self._lags)} streams, {len(self._failing)} failing"
        if self._worst is not None:
            lag, name = self._worst
            text += f"; max lag {lag:.0f}s ({name})"
        return f"{text}; {self._rows} rows written"
