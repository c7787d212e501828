"""The configuration loader: formats, every validation rule with its key path, and secrecy."""

from __future__ import annotations

import dataclasses
import datetime as dt
import tomllib
from pathlib import Path
from typing import Any

import pytest

from cdrsync import config
from cdrsync.config import RateLimit, Secret, parse_duration, parse_rate
from cdrsync.errors import ConfigError
from cdrsync.settings_types import format_duration, quote

REPO = Path(__file__).resolve().parents[3]
EXAMPLE = REPO / "config" / "cdrsync.example.toml"
SOURCE = "/etc/cdrsync/cdrsync.toml"
TOKEN = "tok-Zq7-DO-NOT-LEAK-4411"  # distinctive, so its absence can be asserted
ENV = {"ACEFONE_TOKEN": TOKEN, "CDRSYNC_DSN": "postgresql://cdrsync:pw-Xy9-LEAK@db/cdrsync"}
DELETE = object()


def minimal() -> dict[str, Any]:
    """A smallest valid configuration (as decoded TOML)."""
    return {
        "accounts": [
            {
                "name": "acme-in",
                "vendor": "acefone",
                "base_url": "https://api.acefone.in",
                "token": "env:ACEFONE_TOKEN",
                "start": dt.date(2026, 11, 1),
            }
        ]
    }


def patched(changes: dict[str, Any]) -> dict[str, Any]:
    """``minimal()`` with dotted keys ("accounts.0.name", "daemon.http_listen") set or deleted."""
    data = minimal()
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        node: Any = data
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
        if value is DELETE:
            del node[last]
        elif isinstance(node, list):
            node.append(value)
        else:
            node[last] = value
    return data


def problems_of(data: dict[str, Any], environ: dict[str, str] | None = None) -> list[str]:
    """The problems parse() reports for ``data`` (fails the test if it accepts it)."""
    with pytest.raises(ConfigError) as info:
        config.parse(data, source=SOURCE, environ=ENV if environ is None else environ)
    return info.value.problems


# --- durations and rates ---------------------------------------------------------------------

DURATIONS = [
    ("45s", dt.timedelta(seconds=45)),
    ("30m", dt.timedelta(minutes=30)),
    ("2m", dt.timedelta(minutes=2)),
    ("1h", dt.timedelta(hours=1)),
    ("1d", dt.timedelta(days=1)),
    ("1h30m", dt.timedelta(minutes=90)),
    ("500ms", dt.timedelta(milliseconds=500)),
    ("1s500ms", dt.timedelta(seconds=1.5)),
    ("1.5s", dt.timedelta(seconds=1.5)),
    ("0s", dt.timedelta(0)),
    ("1d2h3m4s5ms", dt.timedelta(days=1, hours=2, minutes=3, seconds=4, milliseconds=5)),
]


@pytest.mark.parametrize(("text", "expected"), DURATIONS)
def test_parse_duration_valid(text: str, expected: dt.timedelta) -> None:
    """Duration strings in every supported unit and combination parse to the right length."""
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    "text", ["", "60", "s", "-5m", "5 m", "1h 30m", "30m1h", "1m1m", "5min", "1w", "1.5", "PT5M"]
)
def test_parse_duration_invalid(text: str) -> None:
    """Malformed durations raise ValueError that shows the text and how to write one."""
    with pytest.raises(ValueError, match='write it like "45s"') as info:
        parse_duration(text)
    assert f'"{text}"' in str(info.value)


@pytest.mark.parametrize("text", [t for t, _ in DURATIONS] + ["90s", "25h", "1.25ms"])
def test_format_duration_round_trips(text: str) -> None:
    """format_duration writes what parse_duration reads back to the same length."""
    value = parse_duration(text)
    assert parse_duration(format_duration(value)) == value


RATES = [
    ("60/min", 60, 60.0, "60/min"),
    ("2/min", 2, 60.0, "2/min"),
    ("10/h", 10, 3600.0, "10/h"),
    ("5/s", 5, 1.0, "5/s"),
    ("100/10s", 100, 10.0, "100/10s"),
    ("1000/day", 1000, 86400.0, "1000/day"),
    ("50/minute", 50, 60.0, "50/min"),
    ("3/5min", 3, 300.0, "3/5min"),
    (" 7 / hour ", 7, 3600.0, "7/h"),
]


@pytest.mark.parametrize(("text", "requests", "period", "shown"), RATES)
def test_parse_rate_valid(text: str, requests: int, period: float, shown: str) -> None:
    """Rate strings parse to requests per period and print back in canonical form."""
    rate = parse_rate(text)
    assert rate == RateLimit(requests=requests, period_s=period)
    assert str(rate) == shown


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("60 per minute", 'is not a rate; write it like "60/min"'),
        ("60", "is not a rate"),
        ("/min", "is not a rate"),
        ("60/fortnight", "is not a rate"),
        ("-1/min", "is not a rate"),
        ("1.5/min", "is not a rate"),
        ("0/min", "at least 1 request"),
        ("5/0s", "period of zero"),
    ],
)
def test_parse_rate_invalid(text: str, message: str) -> None:
    """Malformed or empty rates raise ValueError saying how to write one."""
    with pytest.raises(ValueError, match=message):
        parse_rate(text)


# --- the example file ------------------------------------------------------------------------


def test_example_file_loads() -> None:
    """The shipped example loads with its env vars set and yields the documented values."""
    settings = config.load(EXAMPLE, environ=ENV)
    assert settings.path == EXAMPLE
    assert settings.database.dsn == Secret(ENV["CDRSYNC_DSN"], "env:CDRSYNC_DSN")
    assert settings.database.schema == "cdrsync"
    assert settings.daemon.http_listen == ("127.0.0.1", 9108)
    assert settings.daemon.state_dir == Path("/var/lib/cdrsync")
    assert settings.daemon.shutdown_grace == dt.timedelta(seconds=8)
    (account,) = settings.accounts
    assert account.token is not None
    assert account.token.reveal() == TOKEN
    assert (account.name, account.vendor, account.start) == (
        "acme-in",
        "acefone",
        dt.date(2026, 11, 1),
    )
    assert account.zone.key == "Asia/Kolkata"
    assert (account.poll_interval, account.lookback, account.settle) == (
        dt.timedelta(seconds=60),
        dt.timedelta(minutes=30),
        dt.timedelta(minutes=2),
    )
    assert dict(account.rate_limits) == {"list": parse_rate("60/min"), "auth": parse_rate("10/min")}
    assert settings.account("acme-in") is account


def test_example_file_documents_every_key() -> None:
    """Every key a section or acefone account accepts is mentioned in the example file."""
    text = EXAMPLE.read_text()
    keys = {f.name for f in dataclasses.fields(config.DatabaseSettings)}
    keys |= {f.name for f in dataclasses.fields(config.DaemonSettings)}
    keys |= config.COMMON_ACCOUNT_KEYS | config.VENDOR_SPECS["acefone"].keys
    keys |= set(config.VENDOR_SPECS["acefone"].rate_limits)
    for vendor in ("ozonetel", "vcclive"):  # their accounts are commented out in the example
        spec = config.VENDOR_SPECS[vendor]
        keys |= spec.keys | set(spec.options) | set(spec.rate_limits) | set(spec.endpoints)
    keys -= {"rate_limits", "endpoints"}  # tables: [accounts.rate_limits], [accounts.endpoints]
    assert "[accounts.rate_limits]" in text
    assert not [key for key in sorted(keys) if f"{key} =" not in text]


@pytest.mark.parametrize("listen", ["127.0.0.1:9108", "", "[::1]:1"])
def test_render_round_trips(tmp_path: Path, listen: str) -> None:
    """render() output is TOML that parses back to the same settings, defaults made explicit."""
    path = tmp_path / "cdrsync.toml"
    path.write_text(EXAMPLE.read_text().replace('"127.0.0.1:9108"', quote(listen)))
    settings = config.load(path, environ=ENV)
    text = config.render(settings)
    again = config.parse(tomllib.loads(text), source="rendered", environ=ENV)
    assert dataclasses.replace(again, path=settings.path) == settings
    assert 'window = "1h"' in text
    assert 'auth = "10/min"' in text


def test_defaults_fill_in() -> None:
    """A minimal account gets the vendor's defaults and every rate limit the vendor defines."""
    settings = config.parse(minimal(), source=SOURCE, environ=ENV)
    (account,) = settings.accounts
    assert account.timezone == "Asia/Kolkata"
    assert (account.page_size, account.max_page_depth, account.retry_attempts) == (100, 50, 6)
    assert account.window == dt.timedelta(hours=1)
    assert account.enabled is True
    assert dict(account.rate_limits) == {"list": parse_rate("60/min"), "auth": parse_rate("10/min")}
    assert settings.database == config.DatabaseSettings(dsn=None, schema="cdrsync", pool_size=10)
    assert settings.daemon == config.DaemonSettings()
    assert account.endpoints == {}


def test_settings_cannot_be_changed() -> None:
    """Settings are frozen and their mappings read-only, so no module can alter them later."""
    settings = config.parse(minimal(), source=SOURCE, environ=ENV)
    account = settings.accounts[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        account.page_size = 5  # type: ignore[misc]
    with pytest.raises(TypeError):
        account.rate_limits["list"] = parse_rate("1/s")  # type: ignore[index]


def test_account_lookup_names_known_accounts() -> None:
    """Asking for an unknown account raises ConfigError listing the accounts that exist."""
    settings = config.parse(minimal(), source=SOURCE, environ=ENV)
    with pytest.raises(ConfigError, match='no account named "acme-uk"; known accounts: acme-in'):
        settings.account("acme-uk")


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"accounts.0.start": "2026-11-01"}, ("start", dt.date(2026, 11, 1))),
        (
            {"accounts.0.base_url": "https://api.acefone.in/"},
            ("base_url", "https://api.acefone.in"),
        ),
        ({"accounts.0.base_url": "http://127.0.0.1:8080"}, ("base_url", "http://127.0.0.1:8080")),
        ({"accounts.0.base_url": "http://localhost:81"}, ("base_url", "http://localhost:81")),
        ({"accounts.0.base_url": "http://[::1]:81"}, ("base_url", "http://[::1]:81")),
        ({"accounts.0.lookback": "0s"}, ("lookback", dt.timedelta(0))),
        (
            {"accounts.0.lookback": "1m", "accounts.0.settle": "5m"},
            ("settle", dt.timedelta(minutes=5)),
        ),
        ({"accounts.0.timezone": "Europe/London"}, ("timezone", "Europe/London")),
        ({"accounts.0.page_size": 1}, ("page_size", 1)),
        ({"accounts.0.enabled": False}, ("enabled", False)),
    ],
)
def test_valid_account_values(changes: dict[str, Any], expected: tuple[str, Any]) -> None:
    """Values at the edges of each account rule are accepted (and normalized)."""
    settings = config.parse(patched(changes), source=SOURCE, environ=ENV)
    key, value = expected
    assert getattr(settings.accounts[0], key) == value


@pytest.mark.parametrize(
    ("changes", "key", "expected"),
    [
        ({"daemon.http_listen": ""}, "http_listen", None),
        ({"daemon.http_listen": "[::1]:9108"}, "http_listen", ("::1", 9108)),
        ({"daemon.http_listen": "0.0.0.0:1"}, "http_listen", ("0.0.0.0", 1)),  # noqa: S104
        ({"daemon.log_level": "DEBUG"}, "log_level", "debug"),
        ({"daemon.log_format": "json"}, "log_format", "json"),
        ({"daemon.shutdown_grace": "0s"}, "shutdown_grace", dt.timedelta(0)),
    ],
)
def test_valid_daemon_values(changes: dict[str, Any], key: str, expected: Any) -> None:
    """Daemon settings accept every documented form, "" disabling the HTTP listener."""
    settings = config.parse(patched(changes), source=SOURCE, environ=ENV)
    assert getattr(settings.daemon, key) == expected


# --- every rule names its key path -----------------------------------------------------------

SECOND_ACCOUNT = {
    "name": "acme-in",
    "vendor": "acefone",
    "base_url": "https://api.acefone.in",
    "token": "x",
    "start": dt.date(2026, 1, 1),
}

RULES: list[tuple[dict[str, Any], str, str]] = [
    # accounts[]
    ({"accounts.0.name": DELETE}, "accounts[0].name", "missing; add a name"),
    (
        {"accounts.0.name": "Acme In"},
        "accounts[0].name",
        '"Acme In" is not allowed; use lower-case',
    ),
    ({"accounts.0.name": "a" * 64}, "accounts[0].name", "is not allowed"),
    ({"accounts.0.name": 7}, "accounts[0].name", "must be a string"),
    (
        {"accounts.1": SECOND_ACCOUNT},
        "accounts[1].name",
        '"acme-in" is already used by accounts[0]',
    ),
    ({"accounts.0.vendor": DELETE}, "accounts[0].vendor", 'missing; add vendor = "acefone"'),
    ({"accounts.0.vendor": "twilio"}, "accounts[0].vendor", "known vendors: acefone"),
    ({"accounts.0.start": DELETE}, "accounts[0].start", "missing; add start = 2026-11-01"),
    ({"accounts.0.start": "2026-13-01"}, "accounts[0].start", "is not a date"),
    ({"accounts.0.start": "20261101"}, "accounts[0].start", "write it like 2026-11-01"),
    ({"accounts.0.start": dt.datetime(2026, 11, 1, 5)}, "accounts[0].start", "not a date-time"),
    ({"accounts.0.start": 20261101}, "accounts[0].start", "not an integer"),
    ({"accounts.0.base_url": DELETE}, "accounts[0].base_url", "missing; add base_url"),
    ({"accounts.0.base_url": "https://api.acefone.in/v1"}, "accounts[0].base_url", "no path"),
    (
        {"accounts.0.base_url": "https://api.acefone.in?x=1"},
        "accounts[0].base_url",
        "no path, query",
    ),
    ({"accounts.0.base_url": "http://api.acefone.in"}, "accounts[0].base_url", "in clear"),
    ({"accounts.0.base_url": "http://10.0.0.1"}, "accounts[0].base_url", "loopback"),
    ({"accounts.0.base_url": "ftp://api.acefone.in"}, "accounts[0].base_url", "https://"),
    ({"accounts.0.base_url": "api.acefone.in"}, "accounts[0].base_url", "https://"),
    ({"accounts.0.base_url": "https://u:p@api.acefone.in"}, "accounts[0].base_url", "password"),
    ({"accounts.0.base_url": "https://api.acefone.in:99999"}, "accounts[0].base_url", "not a URL"),
    ({"accounts.0.timezone": "Mars/Olympus"}, "accounts[0].timezone", "not an IANA timezone"),
    ({"accounts.0.timezone": "../../etc/passwd"}, "accounts[0].timezone", "not an IANA"),
    ({"accounts.0.poll_interval": "0s"}, "accounts[0].poll_interval", "longer than zero"),
    ({"accounts.0.poll_interval": 60}, "accounts[0].poll_interval", 'string like "60s"'),
    ({"accounts.0.lookback": "-30m"}, "accounts[0].lookback", "is not a duration"),
    ({"accounts.0.settle": "2 minutes"}, "accounts[0].settle", "is not a duration"),
    ({"accounts.0.window": "0s"}, "accounts[0].window", "longer than zero"),
    ({"accounts.0.request_timeout": "0ms"}, "accounts[0].request_timeout", "longer than zero"),
    (
        {"accounts.0.page_size": 101},
        "accounts[0].page_size",
        "101 is out of range; it must be from 1 to 100",
    ),
    ({"accounts.0.page_size": 0}, "accounts[0].page_size", "from 1 to 100"),
    ({"accounts.0.page_size": "100"}, "accounts[0].page_size", "must be an integer"),
    ({"accounts.0.page_size": True}, "accounts[0].page_size", "not a boolean"),
    ({"accounts.0.max_page_depth": 0}, "accounts[0].max_page_depth", "at least 1"),
    ({"accounts.0.retry_attempts": 0}, "accounts[0].retry_attempts", "at least 1"),
    ({"accounts.0.enabled": "yes"}, "accounts[0].enabled", "true or false"),
    (
        {"accounts.0.rate_limits.list": "60 per minute"},
        "accounts[0].rate_limits.list",
        '"60 per minute" is not a rate; write it like "60/min"',
    ),
    (
        {"accounts.0.rate_limits.list": "0/min"},
        "accounts[0].rate_limits.list",
        "at least 1 request",
    ),
    ({"accounts.0.rate_limits.auth": "5/0s"}, "accounts[0].rate_limits.auth", "period of zero"),
    ({"accounts.0.rate_limits.list": 60}, "accounts[0].rate_limits.list", "must be a string"),
    (
        {"accounts.0.rate_limits.bulk": "1/s"},
        "accounts[0].rate_limits.bulk",
        "unknown key; known keys are auth, list",
    ),
    ({"accounts.0.rate_limits": "60/min"}, "accounts[0].rate_limits", "must be a table"),
    # credentials
    (
        {"accounts.0.token": DELETE},
        "accounts[0]",
        'no credentials; vendor "acefone" needs token, or email + password',
    ),
    (
        {"accounts.0.email": "a@b.example", "accounts.0.password": "pw"},
        "accounts[0]",
        "found token and email + password; give exactly one of token, or email + password",
    ),
    (
        {"accounts.0.token": DELETE, "accounts.0.email": "a@b.example"},
        "accounts[0].password",
        "missing; email + password go together",
    ),
    ({"accounts.0.token": DELETE, "accounts.0.password": "pw"}, "accounts[0].email", "missing"),
    ({"accounts.0.token": "env:NOPE"}, "accounts[0].token", "environment variable NOPE is not set"),
    ({"accounts.0.token": "env:"}, "accounts[0].token", "needs a variable name"),
    ({"accounts.0.token": ""}, "accounts[0].token", "is empty"),
    ({"accounts.0.token": 1234}, "accounts[0].token", "must be a string"),
    ({"accounts.0.username": "acme"}, "accounts[0].username", 'is not used by vendor "acefone"'),
    ({"accounts.0.api_key": "k"}, "accounts[0].api_key", 'is not used by vendor "acefone"'),
    ({"accounts.0.webhook_secret": "s"}, "accounts[0].webhook_secret", "is not used by vendor"),
    ({"accounts.0.endpoints": {"list": "/x"}}, "accounts[0].endpoints", "is not used by vendor"),
    # database
    ({"database.schema": "Cdr-Sync"}, "database.schema", '"Cdr-Sync" is not allowed'),
    ({"database.schema": "1calls"}, "database.schema", "is not allowed"),
    ({"database.schema": "s" * 64}, "database.schema", "is not allowed"),
    ({"database.pool_size": 0}, "database.pool_size", "from 1 to 1000"),
    ({"database.dsn": "mysql://db/x"}, "database.dsn", "is not a PostgreSQL URL"),
    ({"database.dsn": "env:NO_DSN"}, "database.dsn", "environment variable NO_DSN is not set"),
    ({"database.dsn": 5}, "database.dsn", "must be a string"),
    # daemon
    ({"daemon.http_listen": "localhost"}, "daemon.http_listen", "is not host:port"),
    ({"daemon.http_listen": ":9108"}, "daemon.http_listen", "is not host:port"),
    ({"daemon.http_listen": "127.0.0.1:0"}, "daemon.http_listen", "port must be 1..65535"),
    ({"daemon.http_listen": "127.0.0.1:70000"}, "daemon.http_listen", "port must be 1..65535"),
    ({"daemon.http_listen": "::1:9108"}, "daemon.http_listen", "IPv6 address in brackets"),
    ({"daemon.http_listen": "[nope]:9108"}, "daemon.http_listen", "is not an IPv6 address"),
    ({"daemon.http_listen": 9108}, "daemon.http_listen", "must be a string"),
    ({"daemon.log_level": "verbose"}, "daemon.log_level", "debug, info, warning, error"),
    ({"daemon.log_format": "xml"}, "daemon.log_format", "auto, json, console"),
    ({"daemon.shutdown_grace": "forever"}, "daemon.shutdown_grace", "is not a duration"),
    ({"daemon.state_dir": ""}, "daemon.state_dir", "is empty"),
    # unknown keys and shapes at every level
    ({"databse": {}}, "databse", "unknown key; known keys are accounts, daemon, database"),
    (
        {"database.host": "db"},
        "database.host",
        "unknown key; known keys are dsn, pool_size, schema",
    ),
    ({"daemon.pidfile": "/run/x"}, "daemon.pidfile", "unknown key; known keys are http_listen"),
    ({"accounts.0.tokn": "x"}, "accounts[0].tokn", "unknown key; known keys are audit_horizon"),
    ({"accounts.0.odd key": 1}, 'accounts[0]."odd key"', "unknown key"),
    ({"database": "postgres"}, "database", "must be a table, not a string"),
    ({"accounts": DELETE}, "accounts", "no account; add at least one [[accounts]] table"),
    ({"accounts": []}, "accounts", "no account"),
    ({"accounts": {"name": "x"}}, "accounts", "must be an array of tables; write each account as"),
]


@pytest.mark.parametrize(
    ("changes", "path", "message"), RULES, ids=[r[1] + ":" + r[2][:30] for r in RULES]
)
def test_rule_reports_key_path(changes: dict[str, Any], path: str, message: str) -> None:
    """Each broken rule yields one problem: file, exact key path, what is wrong, the fix."""
    problems = problems_of(patched(changes))
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{SOURCE}: {path}: "), problems[0]
    assert message in problems[0]


def test_unknown_vendor_still_checks_common_keys() -> None:
    """An unknown vendor is reported along with typos in the account's other keys."""
    problems = problems_of(
        patched({"accounts.0.vendor": "twilio", "accounts.0.pol_interval": "1m"})
    )
    assert [p.split(": ")[1] for p in problems] == [
        "accounts[0].vendor",
        "accounts[0].pol_interval",
    ]


def test_all_problems_reported_at_once(tmp_path: Path) -> None:
    """A file with three mistakes yields one ConfigError listing all three problems."""
    path = tmp_path / "cdrsync.toml"
    path.write_text(
        '[database]\nschema = "Bad-Schema"\n\n'
        '[daemon]\nhttp_listen = "nowhere"\n\n'
        '[[accounts]]\nname = "acme-in"\nvendor = "acefone"\nbase_url = "https://api.acefone.in"\n'
        'token = "t"\nstart = 2026-11-01\n'
        '[[accounts]]\nname = "acme-uk"\nvendor = "acefone"\nbase_url = "https://api.acefone.in"\n'
        'token = "t"\nstart = 2026-11-01\n'
        '[accounts.rate_limits]\nlist = "60 per minute"\n'
    )
    with pytest.raises(ConfigError) as info:
        config.load(path, environ={})
    problems = info.value.problems
    assert [p.split(": ")[1] for p in problems] == [
        "database.schema",
        "daemon.http_listen",
        "accounts[1].rate_limits.list",
    ]
    assert all(p.startswith(f"{path}: ") for p in problems)
    assert str(info.value).count("\n") == 3  # the message lists them all, one a line


# --- files -----------------------------------------------------------------------------------


def test_missing_file_is_named(tmp_path: Path) -> None:
    """A missing config file is a ConfigError naming the path and what to do."""
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        config.load(path, environ={})
    assert info.value.problems == [
        f"{path}: no such file; copy config/cdrsync.example.toml there or pass --config"
    ]


def test_unreadable_file_is_named(tmp_path: Path) -> None:
    """A path that cannot be read (here a directory) is a ConfigError naming it."""
    with pytest.raises(ConfigError, match=f"{tmp_path}: cannot read it"):
        config.load(tmp_path, environ={})


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    """A TOML syntax error names the file and the line, and does not echo the content."""
    path = tmp_path / "cdrsync.toml"
    path.write_text(f'[database]\nschema = "cdrsync"\ndsn = postgresql://{TOKEN}\n')
    with pytest.raises(ConfigError) as info:
        config.load(path, environ={})
    (problem,) = info.value.problems
    assert problem.startswith(f"{path}: TOML syntax error")
    assert "line 3" in problem
    assert TOKEN not in problem


def test_relative_state_dir_follows_config_file(tmp_path: Path) -> None:
    """A relative state_dir is taken relative to the config file, not the working directory."""
    path = tmp_path / "demo.toml"
    path.write_text(EXAMPLE.read_text().replace('"/var/lib/cdrsync"', '"state"'))
    settings = config.load(path, environ=ENV)
    assert settings.daemon.state_dir == tmp_path / "state"


# --- secrets ---------------------------------------------------------------------------------


def token_of(token: str, environ: dict[str, str], source: str = SOURCE) -> Secret:
    """Parse minimal() with ``token`` and return the resolved secret."""
    data = patched({"accounts.0.token": token})
    secret = config.parse(data, source=source, environ=environ).accounts[0].token
    assert secret is not None
    return secret


def test_secret_from_env() -> None:
    """An "env:NAME" secret reads the variable and records where it came from."""
    assert token_of("env:ACEFONE_TOKEN", ENV) == Secret(TOKEN, "env:ACEFONE_TOKEN")


def test_secret_from_empty_env_is_an_error() -> None:
    """An empty variable is an error naming the variable."""
    (problem,) = problems_of(patched({}), environ={"ACEFONE_TOKEN": ""})
    assert problem.endswith(
        "accounts[0].token: environment variable ACEFONE_TOKEN is empty; give it the secret's value"
    )


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (f"{TOKEN}\n", TOKEN),
        (f"{TOKEN}\r\n", TOKEN),
        (f"{TOKEN}\n\n", f"{TOKEN}\n"),
        (TOKEN, TOKEN),
    ],
)
def test_secret_from_absolute_file(tmp_path: Path, content: str, expected: str) -> None:
    """A "file:/abs" secret reads the file and strips exactly one trailing newline."""
    path = tmp_path / "token"
    path.write_text(content, newline="")
    assert token_of(f"file:{path}", {}) == Secret(expected, f"file:{path}")


def test_secret_file_relative_to_config_dir(tmp_path: Path) -> None:
    """Without CREDENTIALS_DIRECTORY a relative path is read from the config file's directory."""
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "acefone").write_text(TOKEN + "\n")
    secret = token_of("file:secrets/acefone", {}, source=str(tmp_path / "cdrsync.toml"))
    assert secret.reveal() == TOKEN


def test_secret_file_from_credentials_directory(tmp_path: Path) -> None:
    """With systemd's CREDENTIALS_DIRECTORY a bare name is read from there (LoadCredential=)."""
    (tmp_path / "acefone-token").write_text(TOKEN)
    secret = token_of("file:acefone-token", {"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert secret == Secret(TOKEN, f"file:{tmp_path / 'acefone-token'}")


def test_missing_secret_file_names_path(tmp_path: Path) -> None:
    """A missing secret file is an error naming the full path it looked for."""
    environ = {"CREDENTIALS_DIRECTORY": str(tmp_path)}
    (problem,) = problems_of(patched({"accounts.0.token": "file:acefone-token"}), environ)
    assert f"accounts[0].token: secret file {tmp_path / 'acefone-token'} does not exist" in problem
    assert "CREDENTIALS_DIRECTORY" in problem


def test_empty_secret_file_is_an_error(tmp_path: Path) -> None:
    """A secret file holding only a newline is an error, not an empty password."""
    (tmp_path / "token").write_text("\n")
    (problem,) = problems_of(patched({"accounts.0.token": f"file:{tmp_path / 'token'}"}))
    assert "is empty" in problem


def test_secret_literal() -> None:
    """Any other string is the secret itself, marked as a literal and shown as ***."""
    secret = token_of(TOKEN, {})
    assert secret == Secret(TOKEN, "literal")
    assert repr(secret) == str(secret) == "Secret(***)"
    assert repr(token_of("env:ACEFONE_TOKEN", ENV)) == "Secret(env:ACEFONE_TOKEN)"


def login_account(password: str) -> dict[str, Any]:
    """A second acefone account that logs in with email + ``password``."""
    account = {key: value for key, value in SECOND_ACCOUNT.items() if key != "token"}
    return account | {"name": "b", "email": "ops@acme.example", "password": password}


def test_secret_values_for_scrubber() -> None:
    """secret_values() holds every revealed secret, including the password inside the DSN."""
    data = patched({"database.dsn": "env:CDRSYNC_DSN", "accounts.1": login_account("pw-lit-77")})
    settings = config.parse(data, source=SOURCE, environ=ENV)
    assert settings.secret_values() == {TOKEN, ENV["CDRSYNC_DSN"], "pw-Xy9-LEAK", "pw-lit-77"}


LEAKY = "sekrit-Qm2-NEVER-SHOW"


def leaky_settings() -> config.Settings:
    """Settings whose every secret (literal DSN and token, password from env) holds LEAKY."""
    data = patched(
        {
            "database.dsn": f"postgresql://u:{LEAKY}@db/x",
            "accounts.0.token": LEAKY,
            "accounts.1": login_account("env:PW"),
        }
    )
    return config.parse(data, source=SOURCE, environ={"PW": LEAKY})


def test_secret_absent_from_repr_str_and_render() -> None:
    """No secret value appears in repr(), str() or render() of the settings."""
    settings = leaky_settings()
    for text in (repr(settings), str(settings), config.render(settings)):
        assert LEAKY not in text
    assert config.render(settings).count('"***"') == 2  # dsn and the literal token
    assert LEAKY in settings.secret_values()


@pytest.mark.parametrize(
    "changes",
    [
        {"database.dsn": f"mysql://u:{LEAKY}@db/x"},
        {"database.dsn": LEAKY},
        {"database.dsn": "env:DSN"},
        {"accounts.0.base_url": f"https://api.acefone.in/?token={LEAKY}"},
        {"accounts.0.base_url": f"https://u:{LEAKY}@api.acefone.in"},
        {"accounts.0.base_url": f"http://api.acefone.in/{LEAKY}"},
        {"accounts.0.password": LEAKY, "accounts.0.email": "ops@acme.example"},
        {"accounts.0.token": [LEAKY]},
        {"accounts.0.api_key": LEAKY},
        {"accounts.0.tokne": LEAKY},
    ],
)
def test_secret_absent_from_errors(changes: dict[str, Any]) -> None:
    """Errors about secret-bearing keys never quote the secret value."""
    problems = problems_of(patched(changes), environ={**ENV, "DSN": f"mysql://{LEAKY}"})
    assert problems
    assert not [p for p in problems if LEAKY in p]


# --- the vendor table ------------------------------------------------------------------------


@pytest.mark.parametrize("vendor", sorted(config.VENDOR_SPECS))
def test_vendor_spec_is_consistent(vendor: str) -> None:
    """Each vendor's keys exist on AccountSettings, and its defaults and rates are valid."""
    spec = config.VENDOR_SPECS[vendor]
    fields = {f.name for f in dataclasses.fields(config.AccountSettings)}
    assert spec.keys <= fields
    assert spec.required <= spec.keys
    assert {key for group in spec.credentials for key in group} <= spec.keys
    assert set(spec.defaults) <= set(config.ACCOUNT_DEFAULTS)
    assert all(parse_rate(rate).requests >= 1 for rate in spec.rate_limits.values())


def vendor_account(vendor: str, **extra: Any) -> dict[str, Any]:
    """An Ozonetel or VCC Live account table with its required keys."""
    return {"accounts": [{"name": "acc", "vendor": vendor, "base_url": "https://x.example.com",
                          "username": "acme", "api_key": "k3y-value", "start": "2026-11-10",
                          **extra}]}  # fmt: skip


@pytest.mark.parametrize(
    ("vendor", "extra", "problem"),
    [
        ("ozonetel", {"window": "7h"}, 'accounts[0].window: "7h" does not divide a day'),
        ("ozonetel", {"history_window": "2d"}, "accounts[0].history_window"),
        ("ozonetel", {"auth": "oauth"}, 'accounts[0].auth: "oauth" is not one of apikey, token'),
        ("ozonetel", {"lookup_retry": "0s"}, "accounts[0].lookup_retry"),
        ("ozonetel", {"api_key": None}, "no credentials"),
        ("vcclive", {"window": "1h"}, 'VCC Live lists calls by day: window must be "1d"'),
        ("vcclive", {"lookup_attempts": 0}, "accounts[0].lookup_attempts"),
        ("vcclive", {"auth": "token"}, "accounts[0].auth: unknown key"),
        ("vcclive", {"rate_limits": {"bulk": "2/min"}}, "accounts[0].rate_limits.bulk"),
        ("acefone", {"token": "t0k3n", "lookup_delay": "1m"}, "accounts[0].lookup_delay"),
    ],
)
def test_vendor_rules_and_options(vendor: str, extra: dict[str, Any], problem: str) -> None:
    """Each vendor's own options and API rules are checked, each problem named by key."""
    doc = vendor_account(vendor, **extra)
    doc["accounts"][0] = {k: v for k, v in doc["accounts"][0].items() if v is not None}
    with pytest.raises(ConfigError) as caught:
        config.parse(doc, source="<t>", environ={})
    assert problem in str(caught.value)


def test_vendor_options_have_safe_defaults() -> None:
    """Unset vendor options take the documented defaults (the vendor's own advice where known)."""
    oz = config.parse(vendor_account("ozonetel"), source="<t>", environ={}).accounts[0]
    assert (oz.option("auth"), oz.option("retention"), oz.page_size) == (
        "auto", dt.timedelta(days=15), 500,
    )  # fmt: skip
    assert str(oz.rate_limits["bulk"]) == "2/min"
    assert oz.endpoints["lookup"] == "/CAServices/CDR/callbacks.php"
    vcc = config.parse(vendor_account("vcclive"), source="<t>", environ={}).accounts[0]
    assert (vcc.option("lookup_delay"), vcc.option("lookup_attempts")) == (
        dt.timedelta(minutes=5), 20,
    )  # fmt: skip
    assert vcc.window == dt.timedelta(days=1)


@pytest.mark.parametrize(
    ("running", "wanted", "expected"),
    [
        ({"a": 1}, {"a": 1}, ((), (), ())),
        ({"a": 1}, {"a": 1, "b": 1}, (("b",), (), ())),
        ({"a": 1, "b": 1}, {"b": 1}, ((), ("a",), ())),
        ({"a": 1, "b": 1}, {"a": 2, "c": 1}, (("c",), ("b",), ("a",))),
        ({}, {}, ((), (), ())),
    ],
)
def test_reload_plan(
    running: dict[str, int], wanted: dict[str, int], expected: tuple[object, ...]
) -> None:
    """A reload starts added accounts, stops removed ones and restarts changed ones."""
    from cdrsync.app.supervisor import plan_changes

    changes = plan_changes(running, wanted)  # type: ignore[arg-type]
    assert (changes.added, changes.removed, changes.restarted) == expected


def test_check_config_shows_the_ozonetel_auth_mode() -> None:
    """check-config's rendering says which auth an Ozonetel account uses ("auto" unless set)."""
    auto = config.parse(vendor_account("ozonetel"), source="<t>", environ={})
    fixed = config.parse(vendor_account("ozonetel", auth="TOKEN"), source="<t>", environ={})
    assert 'auth = "auto"' in config.render(auto)
    assert 'auth = "token"' in config.render(fixed)
