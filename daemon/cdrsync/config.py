"""The configuration file: TOML plus environment and credential files -> frozen, validated settings.

The file (see ``config/cdrsync.example.toml``) has a ``[database]`` table, a ``[daemon]`` table
and one ``[[accounts]]`` table per vendor account. ``load`` reads it once at start-up; nothing
reads the environment later. Every problem is collected and reported together in one
``ConfigError``, each line naming the file, the key path and the fix, e.g.::

    /etc/cdrsync/cdrsync.toml: accounts[2].rate_limits.list: "60 per minute" is not a rate; ...

Key paths count accounts from 0 in file order: ``accounts[0]`` is the first ``[[accounts]]``.
What each vendor allows and needs is the ``VENDOR_SPECS`` table; adding a vendor adds an entry.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import re
import tomllib
import zoneinfo
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar
from urllib.parse import urlsplit

from cdrsync.errors import ConfigError
from cdrsync.settings_types import (
    RateLimit,
    Secret,
    expect,
    format_duration,
    format_listen,
    kind_of,
    parse_duration,
    parse_listen,
    parse_rate,
    quote,
    resolve_secret,
    to_base_url,
    to_bool,
    to_choice,
    to_date,
    to_duration,
    to_endpoint,
    to_int,
    to_pattern,
    to_rate,
    to_str,
    to_timezone,
)

__all__ = [
    "VENDOR_SPECS",
    "AccountSettings",
    "DaemonSettings",
    "DatabaseSettings",
    "RateLimit",
    "Secret",
    "Settings",
    "VendorSpec",
    "load",
    "parse",
    "parse_duration",
    "parse_rate",
    "render",
]

T = TypeVar("T")
_EMPTY: Mapping[str, str] = MappingProxyType({})


def _empty() -> Mapping[str, str]:
    return _EMPTY


@dataclass(frozen=True, slots=True)
class VendorSpec:
    """What an account table of one vendor may and must contain, and its defaults."""

    keys: frozenset[str]  # allowed beyond COMMON_ACCOUNT_KEYS
    required: frozenset[str]  # always required, beyond name/vendor/base_url/start
    credentials: tuple[tuple[str, ...], ...]  # exactly one of these groups, complete
    rate_limits: Mapping[str, str]  # every limit the vendor has -> default rate
    defaults: Mapping[str, Any]  # overrides of ACCOUNT_DEFAULTS (raw TOML values)
    max_page_size: int
    endpoints: Mapping[str, str] = field(
        default_factory=_empty
    )  # endpoint name -> default path, where configurable
    example_url: str = "https://api.example.com"
    options: Mapping[str, tuple[Callable[[Any], Any], Any]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    """Vendor-only settings: key -> (converter, default as written in TOML). Where a vendor
    fact is unknown the option is the setting, with the safe default (README: vendor tables)."""


_DUR = to_duration()
_POSITIVE = to_duration(positive=True)

VENDOR_SPECS: Mapping[str, VendorSpec] = MappingProxyType(
    {
        "acefone": VendorSpec(
            keys=frozenset({"token", "email", "password"}),
            required=frozenset(),
            # A dashboard API token, or a login that cdrsync refreshes before the hour ends.
            credentials=(("token",), ("email", "password")),
            # Acefone's numeric limit is undocumented (vendor-notes.md), so it is a setting.
            rate_limits=MappingProxyType({"list": "60/min", "auth": "10/min"}),
            defaults=MappingProxyType({"timezone": "Asia/Kolkata", "page_size": 100}),
            # The only documented maximum of `limit` is 100 (UK /v1/call_report).
            max_page_size=100,
            example_url="https://api.acefone.in",
        ),
        "ozonetel": VendorSpec(
            keys=frozenset({"username", "api_key", "webhook_secret", "endpoints"}),
            required=frozenset({"username"}),
            credentials=(("api_key",),),
            # Documented: bulk reports 2/min (fetchCdrByPagination and fetchCDRDetails share
            # it), CDR in CallBacks 50/min; generateToken 10/hour (third-party code).
            rate_limits=MappingProxyType({"bulk": "2/min", "lookup": "50/min", "token": "10/h"}),
            defaults=MappingProxyType(
                {
                    "timezone": "Asia/Kolkata",
                    # The largest page seen working (max pageSize is undocumented): with two
                    # requests a minute every request should carry as many calls as it can.
                    "page_size": 500,
                    "window": "1h",
                    "lookback": "30m",
                    # A one-record count costs a whole bulk request: audit rarely.
                    "audit_horizon": "1d",
                    "audit_interval": "6h",
                }
            ),
            max_page_size=5000,
            endpoints=MappingProxyType(
                {
                    "bulk": "/ca_reports/fetchCdrByPagination",
                    # The callbacks path comes from the doc slug; its casing is unverified.
                    "lookup": "/CAServices/CDR/callbacks.php",
                    "token": "/ca_apis/CAToken/generateToken",
                }
            ),
            example_url="https://in1-ccaas-api.ozonetel.com",
            options=MappingProxyType(
                {
                    # "token": also send a generateToken JWT as Bearer (accounts whose admin
                    # setting "API Authentication" is TOKEN); "apikey": the apiKey header only;
                    # "auto" (default, the account's setting being unknown): start with the
                    # apiKey header, on a refusal try the token once and keep what works.
                    "auth": (to_choice(("apikey", "token", "auto")), "auto"),
                    # generateToken refused the credentials: not asked again for this long
                    # (it allows 10 tokens an hour; any reload asks again at the next cycle).
                    "token_refusal_hold": (_POSITIVE, "1h"),
                    # The bulk API serves the last 15 days only (older dates come back empty).
                    "retention": (_POSITIVE, "15d"),
                    # The backlog stream reads whole IST days: the fewest requests at 2/min.
                    "history_window": (_POSITIVE, "1d"),
                    # First confirming CallBacks lookup after a push, and the wait after
                    # "No Data Found".
                    "lookup_delay": (_DUR, "2m"),
                    "lookup_retry": (_POSITIVE, "10m"),
                }
            ),
        ),
        "vcclive": VendorSpec(
            keys=frozenset({"username", "api_key", "webhook_secret"}),
            required=frozenset({"username"}),
            # HTTP Basic: the username is the call-centre subdomain, the password the API token.
            credentials=(("api_key",),),
            # VCC Live documents no API rate limit: these are settings with cautious defaults.
            rate_limits=MappingProxyType(
                {"list": "60/min", "lookup": "60/min", "records": "60/min"}
            ),
            defaults=MappingProxyType(
                {
                    # Inferred for a Hungarian tenant; the day partition's zone is undocumented.
                    "timezone": "Europe/Budapest",
                    # One client found pages capped near 500 (undocumented).
                    "page_size": 500,
                    "window": "1d",
                    # Days re-read each cycle: today and yesterday (CDRs register late).
                    "lookback": "1d",
                    "audit_horizon": "0s",
                }
            ),
            max_page_size=5000,
            example_url="https://mycc.asp.virtual-call-center.eu",
            options=MappingProxyType(
                {
                    # The vendor's advice for Get CDR by uuid: 5 minutes after the webhook,
                    # then every 5 minutes, 20 times in all.
                    "lookup_delay": (_DUR, "5m"),
                    "lookup_interval": (_POSITIVE, "5m"),
                    "lookup_attempts": (to_int(1, 1000), 20),
                    # A CDR lookup refused for a permission (403): not asked again for this long
                    # (undocumented whether it is the token's or one project's: the lookups of
                    # the account wait, uncounted but the refused one, and the list goes on).
                    "permission_hold": (_POSITIVE, "15m"),
                    # Rows before a day's resume offset re-fetched to check the order held.
                    "verify_rows": (to_int(1, 100), 3),
                    # Fetch each disposed record's events (GET .../records/{numberid}).
                    "record_details": (to_bool, True),
                    "outbox_batch": (to_int(1, 1000), 50),
                    "outbox_retry": (_POSITIVE, "1m"),
                    "outbox_interval": (_POSITIVE, "5s"),
                    # After a lost answer, look for the rows in VCC Live before resending
                    # (numberids increase: an inference from the vendor's examples).
                    "outbox_probe": (to_bool, True),
                    # A row in doubt is ruled absent only by a scan begun this long after its
                    # answer was lost: VCC may still be adding a timed-out batch (an
                    # assumption: how long it may take is undocumented).
                    "outbox_probe_delay": (_DUR, "10m"),
                }
            ),
        ),
    }
)

COMMON_ACCOUNT_KEYS = frozenset(
    {
        "name", "vendor", "base_url", "start", "timezone", "poll_interval", "lookback", "settle",
        "page_size", "window", "max_page_depth", "request_timeout", "retry_attempts", "enabled",
        "rate_limits", "audit_horizon", "audit_interval",
    }
)  # fmt: skip
VENDOR_KEYS = frozenset({"token", "email", "password", "username", "api_key", "webhook_secret"})
SECRET_KEYS = frozenset({"token", "password", "api_key", "webhook_secret"})
ACCOUNT_DEFAULTS: Mapping[str, Any] = MappingProxyType(
    {
        "timezone": "UTC",
        "poll_interval": "60s",
        "lookback": "30m",
        "settle": "2m",
        "page_size": 100,
        "window": "1h",
        "max_page_depth": 50,
        "request_timeout": "30s",
        "retry_attempts": 6,
        "enabled": True,
        "audit_horizon": "2d",
        "audit_interval": "15m",
    }
)
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("auto", "json", "console")
_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
_SCHEMA = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True, slots=True)
class DatabaseSettings:
    """Where the rows go: ``dsn`` None means an embedded PostgreSQL under the state directory."""

    dsn: Secret | None = None
    schema: str = "cdrsync"
    pool_size: int = 10


@dataclass(frozen=True, slots=True)
class DaemonSettings:
    """Process-wide settings: state directory, HTTP listener, logging, shutdown."""

    state_dir: Path = Path("/var/lib/cdrsync")
    http_listen: tuple[str, int] | None = ("127.0.0.1", 9108)
    log_level: str = "info"
    log_format: str = "auto"
    shutdown_grace: dt.timedelta = dt.timedelta(seconds=8)
    instance_timeout: dt.timedelta = dt.timedelta(seconds=20)
    """A daemon whose heartbeat is this old is dead or hung: the others take its streams. It
    beats every quarter of this."""


@dataclass(frozen=True, slots=True)
class AccountSettings:
    """One vendor account: where, how often and how politely to fetch its calls."""

    name: str
    vendor: str
    base_url: str
    timezone: str
    start: dt.date
    poll_interval: dt.timedelta
    lookback: dt.timedelta
    settle: dt.timedelta
    page_size: int
    window: dt.timedelta
    max_page_depth: int
    request_timeout: dt.timedelta
    retry_attempts: int
    enabled: bool
    rate_limits: Mapping[str, RateLimit]
    audit_horizon: dt.timedelta = dt.timedelta(days=2)
    """How far behind the watermark closed windows are re-counted (0s: never)."""
    audit_interval: dt.timedelta = dt.timedelta(minutes=15)
    """How often each closed window inside the horizon has its vendor count re-checked."""
    token: Secret | None = None
    email: str | None = None
    password: Secret | None = None
    username: str | None = None
    api_key: Secret | None = None
    webhook_secret: Secret | None = None
    endpoints: Mapping[str, str] = field(default_factory=_empty)
    options: Mapping[str, Any] = field(default_factory=_empty)
    """Vendor-only settings (``VendorSpec.options``), every one filled in."""

    def option(self, key: str) -> Any:
        """A vendor-only setting; a KeyError names the known ones."""
        try:
            return self.options[key]
        except KeyError:
            known = ", ".join(sorted(self.options)) or "none"
            raise KeyError(f"{self.vendor} has no option {key!r} (known: {known})") from None

    @property
    def zone(self) -> zoneinfo.ZoneInfo:
        """The account's timezone (vendors report local times; ``start`` is a local day)."""
        return zoneinfo.ZoneInfo(self.timezone)


@dataclass(frozen=True, slots=True)
class Settings:
    """The whole validated configuration."""

    path: Path | None
    database: DatabaseSettings
    daemon: DaemonSettings
    accounts: tuple[AccountSettings, ...]

    def account(self, name: str) -> AccountSettings:
        """The account called ``name``; a ConfigError naming the known accounts otherwise."""
        for account in self.accounts:
            if account.name == name:
                return account
        known = ", ".join(a.name for a in self.accounts) or "none"
        raise ConfigError(f"no account named {quote(name)}; known accounts: {known}")

    def secret_values(self) -> frozenset[str]:
        """Every revealed secret (and the password inside the DSN), for the log scrubber."""
        secrets = [self.database.dsn] + [
            getattr(account, key) for account in self.accounts for key in sorted(SECRET_KEYS)
        ]
        values = {s.reveal() for s in secrets if isinstance(s, Secret)}
        if self.database.dsn is not None:
            password = urlsplit(self.database.dsn.reveal()).password
            if password:
                values.add(password)
        return frozenset(values)


# --- reading -------------------------------------------------------------------------------


class _Context:
    """Collects problems for one file, and knows how to resolve its secrets."""

    def __init__(self, source: str, environ: Mapping[str, str], base_dir: Path) -> None:
        self.source = source
        self.environ = environ
        self.base_dir = base_dir
        self.problems: list[str] = []

    def add(self, path: str, message: str) -> None:
        self.problems.append(f"{self.source}: {path}: {message}")

    def secret(self, value: Any) -> Secret:
        text = expect(value, str, '"env:NAME", "file:PATH" or the value itself')
        return resolve_secret(text, environ=self.environ, base_dir=self.base_dir)


class _Table:
    """One TOML table: typed reads that record problems instead of raising."""

    def __init__(self, ctx: _Context, data: Mapping[str, Any], path: str) -> None:
        self.ctx = ctx
        self.data = data
        self.path = path

    def at(self, key: str) -> str:
        shown = key if _BARE_KEY.fullmatch(key) else quote(key)
        return f"{self.path}.{shown}" if self.path else shown

    def get(self, key: str, convert: Callable[[Any], T], default: T) -> T:
        if key not in self.data:
            return default
        try:
            return convert(self.data[key])
        except ValueError as exc:
            self.ctx.add(self.at(key), str(exc))
            return default

    def need(self, key: str, convert: Callable[[Any], T], placeholder: T, hint: str) -> T:
        if key not in self.data:
            self.ctx.add(self.at(key), f"missing; {hint}")
            return placeholder
        return self.get(key, convert, placeholder)

    def table(self, key: str) -> _Table:
        value = self.data.get(key, {})
        if not isinstance(value, dict):
            self.ctx.add(self.at(key), f"must be a table, not {kind_of(value)}")
            value = {}
        return _Table(self.ctx, value, self.at(key))

    def reject_unknown(self, known: Iterable[str], *, vendor: str | None = None) -> None:
        """Report keys not in ``known``; vendor keys of other vendors get a clearer message."""
        names = sorted(known)
        for key in self.data:
            if key in names:
                continue
            if vendor and key in VENDOR_KEYS | {"endpoints"}:
                self.ctx.add(self.at(key), f"is not used by vendor {quote(vendor)}; remove it")
            else:
                self.ctx.add(self.at(key), f"unknown key; known keys are {', '.join(names)}")


# --- sections ------------------------------------------------------------------------------


def _database(t: _Table) -> DatabaseSettings:
    def dsn(value: Any) -> Secret:
        secret = t.ctx.secret(value)
        # asyncpg takes URLs only; the value itself may hold a password, so it is not shown.
        if not secret.reveal().startswith(("postgresql://", "postgres://")):
            raise ValueError(
                "is not a PostgreSQL URL (value not shown); write it like "
                '"postgresql://cdrsync@db.example.com:5432/cdrsync"'
            )
        return secret

    schema_rule = "use lower-case letters, digits and _, starting with a letter or _"
    result = DatabaseSettings(
        dsn=t.get("dsn", dsn, None),
        schema=t.get("schema", to_pattern(_SCHEMA, schema_rule, '"cdrsync"'), "cdrsync"),
        pool_size=t.get("pool_size", to_int(1, 1000), 10),
    )
    t.reject_unknown(f.name for f in dataclasses.fields(DatabaseSettings))
    return result


def _daemon(t: _Table) -> DaemonSettings:
    def state_dir(value: Any) -> Path:
        text = expect(value, str, '"/var/lib/cdrsync"')
        if not text:
            raise ValueError('is empty; write a directory like "/var/lib/cdrsync"')
        # Relative to the config file, like file: secrets, so a demo directory is self-contained.
        return t.ctx.base_dir / text

    def listen(value: Any) -> tuple[str, int] | None:
        return parse_listen(expect(value, str, '"127.0.0.1:9108"'))

    default = DaemonSettings()
    result = DaemonSettings(
        state_dir=t.get("state_dir", state_dir, default.state_dir),
        http_listen=t.get("http_listen", listen, default.http_listen),
        log_level=t.get("log_level", to_choice(LOG_LEVELS), default.log_level),
        log_format=t.get("log_format", to_choice(LOG_FORMATS), default.log_format),
        shutdown_grace=t.get("shutdown_grace", to_duration(), default.shutdown_grace),
        instance_timeout=t.get(
            "instance_timeout",
            to_duration(positive=True),
            default.instance_timeout,
        ),
    )
    t.reject_unknown(f.name for f in dataclasses.fields(DaemonSettings))
    return result


def _accounts(root: _Table) -> tuple[AccountSettings, ...]:
    raw = root.data.get("accounts")
    if raw is None or raw == []:
        root.ctx.add("accounts", "no account; add at least one [[accounts]] table")
        return ()
    if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
        root.ctx.add("accounts", "must be an array of tables; write each account as [[accounts]]")
        return ()
    accounts = tuple(
        _account(_Table(root.ctx, item, f"accounts[{index}]")) for index, item in enumerate(raw)
    )
    first: dict[str, int] = {}
    for index, account in enumerate(accounts):
        if account.name in first:
            root.ctx.add(
                f"accounts[{index}].name",
                f"{quote(account.name)} is already used by accounts[{first[account.name]}]; "
                "account names must be unique (they identify the account's rows)",
            )
        elif account.name:
            first[account.name] = index
    return accounts


def _account(t: _Table) -> AccountSettings:
    known = ", ".join(sorted(VENDOR_SPECS))
    vendor = t.need("vendor", to_str, "", f'add vendor = "acefone" (known vendors: {known})')
    spec = VENDOR_SPECS.get(vendor)
    if spec is None and vendor:
        t.ctx.add(t.at("vendor"), f"unknown vendor {quote(vendor)}; known vendors: {known}")
    defaults = {**ACCOUNT_DEFAULTS, **(spec.defaults if spec else {})}

    def opt(key: str, convert: Callable[[Any], T]) -> T:
        return t.get(key, convert, convert(defaults[key]))

    name_rule = 'use lower-case letters, digits, "_", "." and "-", at most 63 characters'
    example = quote(spec.example_url if spec else "https://api.example.com")
    values: dict[str, Any] = {
        "name": t.need(
            "name", to_pattern(_NAME, name_rule, '"acme-in"'), "", f"add a name; {name_rule}"
        ),
        "vendor": vendor,
        "base_url": t.need("base_url", to_base_url, "", f"add base_url = {example}"),
        "start": t.need(
            "start", to_date, dt.date.min, "add start = 2026-11-01 (the oldest day to sync)"
        ),
        "timezone": opt("timezone", to_timezone),
        "poll_interval": opt("poll_interval", to_duration(positive=True)),
        "lookback": opt("lookback", to_duration()),
        "settle": opt("settle", to_duration()),
        "page_size": opt("page_size", to_int(1, spec.max_page_size if spec else None)),
        "window": opt("window", to_duration(positive=True)),
        "max_page_depth": opt("max_page_depth", to_int(1)),
        "request_timeout": opt("request_timeout", to_duration(positive=True)),
        "retry_attempts": opt("retry_attempts", to_int(1)),
        "enabled": opt("enabled", to_bool),
        "audit_horizon": opt("audit_horizon", to_duration()),
        "audit_interval": opt("audit_interval", to_duration(positive=True)),
        "rate_limits": _rate_limits(t.table("rate_limits"), spec),
    }
    if spec is not None:
        values |= _vendor_fields(t, vendor, spec)
        values["options"] = MappingProxyType(
            {key: t.get(key, convert, convert(raw)) for key, (convert, raw) in spec.options.items()}
        )
        _check_vendor_rules(t, vendor, values)
        t.reject_unknown(COMMON_ACCOUNT_KEYS | spec.keys | set(spec.options), vendor=vendor)
    else:
        t.reject_unknown(COMMON_ACCOUNT_KEYS | VENDOR_KEYS | {"endpoints"})
    return AccountSettings(**values)


def _check_vendor_rules(t: _Table, vendor: str, values: Mapping[str, Any]) -> None:
    """Rules one vendor's API imposes on otherwise common settings."""
    day = dt.timedelta(days=1)
    if vendor == "ozonetel":
        # fromDate and toDate must fall on the same IST day: windows must tile a day.
        for key in ("window", "history_window"):
            span = values["window"] if key == "window" else values["options"][key]
            if span > day or day % span:
                t.ctx.add(
                    t.at(key),
                    f"{quote(format_duration(span))} does not divide a day; Ozonetel takes "
                    'windows inside one IST day: use e.g. "1h", "2h", "6h" or "1d"',
                )
    if vendor == "vcclive" and values["window"] != day:
        t.ctx.add(t.at("window"), 'VCC Live lists calls by day: window must be "1d"')


def _rate_limits(t: _Table, spec: VendorSpec | None) -> Mapping[str, RateLimit]:
    if spec is None:
        return MappingProxyType({})
    limits = {
        name: t.get(name, to_rate, parse_rate(rate)) for name, rate in spec.rate_limits.items()
    }
    t.reject_unknown(spec.rate_limits)
    return MappingProxyType(limits)


def _vendor_fields(t: _Table, vendor: str, spec: VendorSpec) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key in sorted(spec.keys & VENDOR_KEYS):
        convert: Callable[[Any], Any] = t.ctx.secret if key in SECRET_KEYS else to_str
        if key in spec.required:
            values[key] = t.need(key, convert, None, f"vendor {quote(vendor)} needs {key}")
        else:
            values[key] = t.get(key, convert, None)
    _check_credentials(t, vendor, spec.credentials)
    if "endpoints" in spec.keys:
        endpoints = t.table("endpoints")
        given = {
            name: endpoints.get(name, to_endpoint, path) for name, path in spec.endpoints.items()
        }
        endpoints.reject_unknown(spec.endpoints)
        values["endpoints"] = MappingProxyType(given)
    return values


def _check_credentials(t: _Table, vendor: str, groups: tuple[tuple[str, ...], ...]) -> None:
    """Exactly one credential group, complete: e.g. token, or email + password."""
    if not groups:
        return
    options = ", or ".join(" + ".join(group) for group in groups)
    touched = [group for group in groups if any(key in t.data for key in group)]
    if not touched:
        t.ctx.add(t.path, f"no credentials; vendor {quote(vendor)} needs {options}")
    elif len(touched) > 1:
        found = " and ".join(" + ".join(k for k in g if k in t.data) for g in touched)
        t.ctx.add(t.path, f"found {found}; give exactly one of {options}")
    else:
        for key in touched[0]:
            if key not in t.data:
                t.ctx.add(t.at(key), f"missing; {' + '.join(touched[0])} go together")


# --- entry points --------------------------------------------------------------------------


def parse(data: Mapping[str, Any], *, source: str, environ: Mapping[str, str]) -> Settings:
    """Validate already-decoded TOML; ``source`` names the file in messages.

    Relative ``file:`` secrets and ``state_dir`` resolve against ``source``'s directory.
    Raises ConfigError listing every problem found.
    """
    return _parse(data, _Context(source, environ, Path(source).parent), path=None)


def _parse(data: Mapping[str, Any], ctx: _Context, *, path: Path | None) -> Settings:
    root = _Table(ctx, data, "")
    database = _database(root.table("database"))
    daemon = _daemon(root.table("daemon"))
    accounts = _accounts(root)
    root.reject_unknown(("database", "daemon", "accounts"))
    if ctx.problems:
        raise ConfigError(problems=ctx.problems)
    return Settings(path=path, database=database, daemon=daemon, accounts=accounts)


def load(path: str | os.PathLike[str], *, environ: Mapping[str, str] | None = None) -> Settings:
    """Read and validate the TOML file at ``path``; secrets come from ``environ`` (os.environ).

    Raises ConfigError (exit code 78 in the CLI) listing every problem found.
    """
    file = Path(path)
    try:
        with file.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(
            problems=[
                f"{file}: no such file; copy config/cdrsync.example.toml there or pass --config"
            ]
        ) from None
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message ends with "(at line N, column M)" and never quotes the content.
        raise ConfigError(problems=[f"{file}: TOML syntax error: {exc}"]) from None
    except UnicodeDecodeError:
        raise ConfigError(problems=[f"{file}: is not UTF-8 text"]) from None
    except OSError as exc:
        raise ConfigError(
            problems=[f"{file}: cannot read it: {exc.strerror}; check the path and permissions"]
        ) from None
    ctx = _Context(str(file), os.environ if environ is None else environ, file.absolute().parent)
    return _parse(data, ctx, path=file)


# --- rendering -----------------------------------------------------------------------------


def render(settings: Settings) -> str:
    """The resolved configuration as TOML, defaults filled in, secrets shown by source only."""
    lines = [f"# cdrsync configuration resolved from {settings.path or '(no file)'}"]
    lines += ["", "[database]", *_render_fields(settings.database)]
    lines += ["", "[daemon]", *_render_fields(settings.daemon)]
    for account in settings.accounts:
        spec = VENDOR_SPECS.get(account.vendor)
        unused = VENDOR_KEYS - (spec.keys if spec else frozenset())
        lines += ["", "[[accounts]]", *_render_fields(account, skip=unused)]
        lines += [f"{key} = {_render_value(value)}" for key, value in account.options.items()]
        lines += ["[accounts.rate_limits]"]
        lines += [f"{name} = {quote(str(rate))}" for name, rate in account.rate_limits.items()]
        if account.endpoints:
            lines += ["[accounts.endpoints]"]
            lines += [f"{name} = {quote(path)}" for name, path in account.endpoints.items()]
    return "\n".join(lines) + "\n"


def _render_fields(section: Any, skip: frozenset[str] = frozenset()) -> list[str]:
    lines = []
    for item in dataclasses.fields(section):
        value = getattr(section, item.name)
        if isinstance(value, Mapping) or item.name in skip:
            continue
        if value is None and item.name == "http_listen":
            lines.append('http_listen = ""  # disabled')
        elif value is None:
            lines.append(f"# {item.name} is not set")
        elif isinstance(value, Secret) and value.source == "literal":
            lines.append(f'{item.name} = "***"  # written literally in the file; hidden')
        else:
            lines.append(f"{item.name} = {_render_value(value)}")
    return lines


def _render_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | dt.date):
        return str(value)
    if isinstance(value, dt.timedelta):
        return quote(format_duration(value))
    if isinstance(value, Secret):
        return quote(value.source)
    if isinstance(value, tuple):
        return quote(format_listen(value))
    return quote(str(value))
