"""Value types of the configuration and their parsers: durations, rates, secrets, addresses.

Kept apart from ``config.py`` so the loader reads as a list of keys and rules. Every parser
raises ``ValueError`` with a message an operator can act on; ``config`` prefixes it with the
file and the key path. Only ``resolve_secret`` touches anything outside its arguments: it reads
the environment mapping and the credential file it is pointed at.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import re
import zoneinfo
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

_DURATION = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
# Largest first: "1h30m" reads naturally, "30m1h" or "1m1m" is almost certainly a typo.
_DURATION_UNITS: dict[str, dt.timedelta] = {
    "d": dt.timedelta(days=1),
    "h": dt.timedelta(hours=1),
    "m": dt.timedelta(minutes=1),
    "s": dt.timedelta(seconds=1),
    "ms": dt.timedelta(milliseconds=1),
}
_DURATION_HINT = 'write it like "45s", "30m", "1h30m" or "500ms" (units: d, h, m, s, ms)'

_RATE = re.compile(r"\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)?\s*([A-Za-z]+)\s*")
_RATE_UNITS: dict[str, float] = {
    "s": 1,
    "sec": 1,
    "second": 1,
    "m": 60,
    "min": 60,
    "minute": 60,
    "h": 3600,
    "hr": 3600,
    "hour": 3600,
    "d": 86400,
    "day": 86400,
}
_RATE_NAMES: tuple[tuple[int, str], ...] = ((86400, "day"), (3600, "h"), (60, "min"), (1, "s"))
_RATE_HINT = 'write it like "60/min" (also "5/s", "10/h", "1000/day" or "100/10s")'

T = TypeVar("T")

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def quote(text: str) -> str:
    """Quote a (non-secret) value for a message the way TOML writes a basic string."""
    return json.dumps(text, ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class Secret:
    """A credential read from the environment, a file or the config itself; never shown.

    ``source`` says where it came from (``env:NAME``, ``file:/path``, ``literal``) and is what
    ``repr``/``str`` show, so a settings object can be logged or printed without leaking.
    """

    value: str = field(repr=False)
    source: str

    def reveal(self) -> str:
        """The secret itself, for the one place that sends it to a vendor or a database."""
        return self.value

    def __repr__(self) -> str:
        return f"Secret({'***' if self.source == 'literal' else self.source})"

    def __str__(self) -> str:
        return self.__repr__()


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most ``requests`` requests in any sliding ``period_s`` seconds."""

    requests: int
    period_s: float

    def __str__(self) -> str:
        for seconds, name in _RATE_NAMES:
            if self.period_s == seconds:
                return f"{self.requests}/{name}"
        for seconds, name in _RATE_NAMES:
            if self.period_s % seconds == 0:
                return f"{self.requests}/{int(self.period_s // seconds)}{name}"
        return f"{self.requests}/{self.period_s:g}s"


def parse_duration(text: str) -> dt.timedelta:
    """Parse ``"45s"``, ``"30m"``, ``"1h30m"``, ``"500ms"``, ``"1d"``, ``"0s"`` into a timedelta."""
    if not _DURATION.fullmatch(text):
        raise ValueError(f"{quote(text)} is not a duration; {_DURATION_HINT}")
    order = list(_DURATION_UNITS)
    total = dt.timedelta()
    last = -1
    for number, unit in _DURATION_PART.findall(text):
        rank = order.index(unit)
        if rank <= last:
            raise ValueError(
                f"{quote(text)} is not a duration: units must go from largest to smallest, "
                f"each once; {_DURATION_HINT}"
            )
        last = rank
        try:
            total += _DURATION_UNITS[unit] * float(number)
        except OverflowError:
            raise ValueError(f"{quote(text)} is too long a duration") from None
    return total


def format_duration(value: dt.timedelta) -> str:
    """Write a timedelta the way ``parse_duration`` reads it (``"1h30m"``, ``"0s"``)."""
    micros = value // dt.timedelta(microseconds=1)
    if micros <= 0:
        return "0s"
    parts = []
    for unit in ("d", "h", "m", "s"):
        step = _DURATION_UNITS[unit] // dt.timedelta(microseconds=1)
        count, micros = divmod(micros, step)
        if count:
            parts.append(f"{count}{unit}")
    if micros:
        whole, frac = divmod(micros, 1000)
        parts.append(f"{whole}.{frac:03d}".rstrip("0").rstrip(".") + "ms")
    return "".join(parts)


def parse_rate(text: str) -> RateLimit:
    """Parse ``"60/min"``, ``"10/h"``, ``"5/s"``, ``"100/10s"``, ``"1000/day"`` into a RateLimit."""
    match = _RATE.fullmatch(text)
    unit = _RATE_UNITS.get(match.group(3).lower()) if match else None
    if match is None or unit is None:
        raise ValueError(f"{quote(text)} is not a rate; {_RATE_HINT}")
    requests = int(match.group(1))
    period = float(match.group(2) or 1) * unit
    if requests < 1:
        raise ValueError(f"{quote(text)} allows no requests; a rate needs at least 1 request")
    if period <= 0:
        raise ValueError(f"{quote(text)} has a period of zero; {_RATE_HINT}")
    return RateLimit(requests=requests, period_s=period)


def resolve_secret(text: str, *, environ: Mapping[str, str], base_dir: Path) -> Secret:
    """Resolve ``"env:NAME"``, ``"file:PATH"`` or a literal; messages never contain the value.

    A relative ``file:`` path is looked up in ``$CREDENTIALS_DIRECTORY`` when systemd set it
    (``LoadCredential=``), else relative to ``base_dir`` (the config file's directory).
    """
    if text.startswith("env:"):
        return _from_env(text[4:], environ)
    if text.startswith("file:"):
        return _from_file(text[5:], environ, base_dir)
    if not text:
        raise ValueError('is empty; write "env:NAME", "file:PATH" or the value itself')
    return Secret(value=text, source="literal")


def _from_env(name: str, environ: Mapping[str, str]) -> Secret:
    if not _ENV_NAME.fullmatch(name):
        raise ValueError('"env:" needs a variable name, like "env:ACEFONE_TOKEN"')
    value = environ.get(name)
    if value is None:
        raise ValueError(
            f"environment variable {name} is not set; set it for the service "
            '(Environment= or EnvironmentFile=) or use "file:PATH"'
        )
    if not value:
        raise ValueError(f"environment variable {name} is empty; give it the secret's value")
    return Secret(value=value, source=f"env:{name}")


def _from_file(raw: str, environ: Mapping[str, str], base_dir: Path) -> Secret:
    if not raw:
        raise ValueError('"file:" needs a path, like "file:/etc/cdrsync/acefone-token"')
    path = Path(raw)
    where = ""
    if not path.is_absolute():
        creds = environ.get("CREDENTIALS_DIRECTORY")
        path = (Path(creds) if creds else base_dir) / path
        where = (
            " (relative names are looked up in $CREDENTIALS_DIRECTORY)"
            if creds
            else " (relative paths are read from the config file's directory)"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(
            f"secret file {path} does not exist{where}; create it or fix the path"
        ) from None
    except UnicodeDecodeError:
        raise ValueError(f"secret file {path} is not UTF-8 text") from None
    except OSError as exc:
        raise ValueError(
            f"cannot read secret file {path}: {exc.strerror}; check its permissions"
        ) from None
    # Editors and `echo` add one newline; anything else is taken to be part of the secret.
    text = text.removesuffix("\n").removesuffix("\r") if text.endswith("\n") else text
    if not text:
        raise ValueError(f"secret file {path} is empty; put the secret in it")
    return Secret(value=text, source=f"file:{path}")


def parse_listen(text: str) -> tuple[str, int] | None:
    """Parse ``"host:port"`` or ``"[v6]:port"``; ``""`` disables the listener (None)."""
    if text == "":
        return None
    hint = 'write it like "127.0.0.1:9108" or "[::1]:9108", or "" to disable'
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"{quote(text)} is not host:port; {hint}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{quote(text)}: {quote(host)} is not an IPv6 address") from None
    elif ":" in host:
        raise ValueError(f"{quote(text)}: put an IPv6 address in brackets; {hint}")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"{quote(text)}: port must be 1..65535; {hint}")
    return host, port


def format_listen(value: tuple[str, int] | None) -> str:
    """Write a listen address the way ``parse_listen`` reads it."""
    if value is None:
        return ""
    host, port = value
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_base_url(text: str) -> str:
    """Check a vendor base URL (scheme and host only) and return it without a trailing slash.

    The value is not echoed in messages: a URL may carry credentials or a ``token=`` query.
    """
    example = 'like "https://api.acefone.in"'
    try:
        url = urlsplit(text)
        url.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ValueError(f"is not a URL; write scheme and host {example}") from None
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ValueError(f"must start with https:// and name a host; write it {example}")
    if "@" in url.netloc:
        raise ValueError("must not contain a user name or password; put credentials in token")
    if url.path not in ("", "/") or url.query or url.fragment:
        raise ValueError(
            f"must be scheme and host only (no path, query or fragment); write it {example} — "
            "cdrsync adds the API paths itself"
        )
    if url.scheme == "http" and not _is_loopback(url.hostname):
        raise ValueError(
            "plain http:// is only allowed for a loopback host (127.0.0.1, localhost, ::1): "
            "cdrsync always sends credentials and would send them in clear; use https://"
        )
    return f"{url.scheme}://{url.netloc}"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --- converters: one raw TOML value -> a typed value, or ValueError saying what to write ---


def kind_of(value: Any) -> str:
    """How TOML names the type of ``value``: "an integer", "a table"."""
    kinds: tuple[tuple[type, str], ...] = (
        (bool, "a boolean"), (int, "an integer"), (float, "a float"), (str, "a string"),
        (dt.datetime, "a date-time"), (dt.date, "a date"), (dt.time, "a time"),
        (list, "an array"), (dict, "a table"),
    )  # fmt: skip
    return next((name for cls, name in kinds if isinstance(value, cls)), type(value).__name__)


def expect(value: Any, cls: type[T], example: str) -> T:
    """``value`` if it has TOML type ``cls``; else a ValueError showing ``example``."""
    # bool is an int in Python, never in TOML.
    if isinstance(value, cls) and not (cls is int and isinstance(value, bool)):
        return value
    what = {str: "a string", int: "an integer", bool: "true or false"}.get(cls, cls.__name__)
    raise ValueError(f"must be {what} like {example}, not {kind_of(value)}")


def to_int(lo: int, hi: int | None = None) -> Callable[[Any], int]:
    """A converter accepting integers from ``lo`` to ``hi`` (no upper bound when None)."""

    def convert(value: Any) -> int:
        number = expect(value, int, str(lo))
        if number < lo or (hi is not None and number > hi):
            bound = f"from {lo} to {hi}" if hi is not None else f"at least {lo}"
            raise ValueError(f"{number} is out of range; it must be {bound}")
        return number

    return convert


def to_duration(*, positive: bool = False) -> Callable[[Any], dt.timedelta]:
    """A converter for duration strings; ``positive`` also refuses ``"0s"``."""

    def convert(value: Any) -> dt.timedelta:
        result = parse_duration(expect(value, str, '"60s"'))
        if positive and not result:
            raise ValueError(f"{quote(value)} must be longer than zero")
        return result

    return convert


def to_choice(options: tuple[str, ...]) -> Callable[[Any], str]:
    """A converter accepting one of ``options`` (case-insensitive, returned lower-case)."""

    def convert(value: Any) -> str:
        text = expect(value, str, quote(options[0])).lower()
        if text not in options:
            raise ValueError(f"{quote(text)} is not one of {', '.join(options)}")
        return text

    return convert


def to_pattern(regex: re.Pattern[str], rule: str, example: str) -> Callable[[Any], str]:
    """A converter accepting strings that fully match ``regex``; ``rule`` says which."""

    def convert(value: Any) -> str:
        text = expect(value, str, example)
        if not regex.fullmatch(text):
            raise ValueError(f"{quote(text)} is not allowed; {rule}")
        return text

    return convert


def to_str(value: Any) -> str:
    """Any string."""
    return expect(value, str, '"…"')


def to_bool(value: Any) -> bool:
    """true or false."""
    return expect(value, bool, "true")


def to_date(value: Any) -> dt.date:
    """A TOML local date or a "YYYY-MM-DD" string (a date-time is refused)."""
    if isinstance(value, dt.datetime) or not isinstance(value, dt.date | str):
        # Converters report every problem as ValueError; config collects them all.
        raise ValueError(f"must be a date like 2026-11-01, not {kind_of(value)}")  # noqa: TRY004
    if isinstance(value, str):
        try:
            # fromisoformat also takes "20261101"; the documented form is YYYY-MM-DD only.
            if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
                return dt.date.fromisoformat(value)
        except ValueError:
            pass
        raise ValueError(f"{quote(value)} is not a date; write it like 2026-11-01")
    return value


def to_timezone(value: Any) -> str:
    """An IANA timezone name that zoneinfo knows."""
    name = expect(value, str, '"Asia/Kolkata"')
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f'{quote(name)} is not an IANA timezone; write e.g. "Asia/Kolkata"'
        ) from None
    return name


def to_rate(value: Any) -> RateLimit:
    """A rate string such as "60/min"."""
    return parse_rate(expect(value, str, '"60/min"'))


def to_base_url(value: Any) -> str:
    """A vendor base URL (see ``parse_base_url``)."""
    return parse_base_url(expect(value, str, '"https://api.acefone.in"'))


def to_endpoint(value: Any) -> str:
    """An API path starting with "/" and without a query."""
    path = expect(value, str, '"/v1/call/records"')
    if not path.startswith("/") or "?" in path:
        raise ValueError(f"{quote(path)} must be a path starting with / and without a query")
    return path
