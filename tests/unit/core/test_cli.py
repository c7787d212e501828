"""What the `cdrsync` command prints when something goes wrong (its exit codes, no secret)."""

from __future__ import annotations

import argparse

import pytest

from cdrsync import cli
from cdrsync.errors import CdrsyncError, ConfigError


def crashing(exc: BaseException):
    def command(args: argparse.Namespace) -> int:
        raise exc

    return command


@pytest.mark.parametrize(
    ("exc", "code", "said"),
    [
        # A bug: exit 1 (systemd restarts the service), its traceback shown, secrets masked.
        (RuntimeError("GET https://x/api?token=s3cr3t-tok3n failed"), 1, "Traceback"),
        (CdrsyncError("vendor said: password=hunter2-pw"), 1, "vendor said"),
    ],
)
def test_errors_are_reported_without_their_secrets(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], exc, code, said
):
    monkeypatch.setitem(cli.COMMANDS, "check-config", crashing(exc))
    assert cli.main(["check-config", "--config", "/nonexistent.toml"]) == code
    err = capsys.readouterr().err
    assert said in err
    assert "s3cr3t-tok3n" not in err and "hunter2-pw" not in err


def help_of(
    command: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> str:
    """What `cdrsync COMMAND --help` prints (exit 0), on one line per option."""
    with pytest.raises(SystemExit) as exited:
        cli.main([command, "--help"])
    assert exited.value.code == 0
    return " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize(
    ("command", "shown"),
    [
        ("simulate", "--port PORT port to listen on (default: 8085)"),
        ("simulate", "--vendor {acefone,ozonetel,vcclive} whose API (default: acefone)"),
        ("simulate", "(default: 30.0)"),
        ("demo", "(default: 60.0)"),
        ("demo", "(default: 5000)"),
        ("backfill", "--since YYYY-MM-DD first day, in the account's time zone, e.g. 2026-10-01"),
        ("backfill", "--until YYYY-MM-DD the day after the last one"),
        ("run", "--log-level {debug,info,warning,error}"),
    ],
)
def test_help_shows_defaults_and_formats(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], command, shown
):
    """`--help` shows each option's default and the form of --since/--until."""
    monkeypatch.delenv("CDRSYNC_CONFIG", raising=False)
    text = help_of(command, monkeypatch, capsys)
    assert shown in text
    assert "(default: None)" not in text and "(default: False)" not in text


def test_config_is_required_unless_the_environment_names_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    """Without $CDRSYNC_CONFIG, --config shows as required and missing it is a usage error (2);
    with it, --config is optional and its default is the variable's value."""
    monkeypatch.delenv("CDRSYNC_CONFIG", raising=False)
    text = help_of("status", monkeypatch, capsys)
    assert "usage: cdrsync status [-h] --config PATH" in text
    assert "required unless $CDRSYNC_CONFIG names it" in text
    with pytest.raises(SystemExit) as exited:
        cli.main(["status"])
    assert exited.value.code == cli.EX_USAGE
    assert "the following arguments are required: --config" in capsys.readouterr().err

    monkeypatch.setenv("CDRSYNC_CONFIG", "/etc/cdrsync/cdrsync.toml")
    text = help_of("status", monkeypatch, capsys)
    assert "usage: cdrsync status [-h] [--config PATH]" in text
    assert "(default: $CDRSYNC_CONFIG, now /etc/cdrsync/cdrsync.toml)" in text
    assert cli.parser().parse_args(["status"]).config == "/etc/cdrsync/cdrsync.toml"
    named = cli.parser(environ={"CDRSYNC_CONFIG": "/srv/c.toml"}).parse_args(["status"])
    assert named.config == "/srv/c.toml"


def test_a_bad_date_names_the_expected_form(capsys: pytest.CaptureFixture[str]):
    """A --since that is not a date says which form it wants (exit 2)."""
    args = ["backfill", "--config", "x.toml", "--account", "a", "--since", "1/10/2026"]
    with pytest.raises(SystemExit) as exited:
        cli.main(args)
    assert exited.value.code == cli.EX_USAGE
    assert "not a date in the form YYYY-MM-DD" in capsys.readouterr().err


def test_doctor_names_the_accounts_when_asked_for_an_unknown_one(
    tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`doctor --account` with a name not in the file exits 78 listing the names it has."""
    config = tmp_path / "cdrsync.toml"
    config.write_text(
        '[daemon]\nstate_dir = "/tmp"\nhttp_listen = ""\n\n[[accounts]]\nname = "acme-in"\n'
        'vendor = "acefone"\nbase_url = "http://127.0.0.1:9"\ntoken = "t0ken"\n'
        'start = "2026-11-01"\n',
        encoding="utf-8",
    )
    assert cli.main(["doctor", "--config", str(config), "--account", "nope"]) == cli.EX_CONFIG
    err = capsys.readouterr().err
    assert "no account named 'nope'" in err
    assert "it has: acme-in" in err


@pytest.mark.parametrize(
    ("vendor", "readings", "options"),
    [
        ("acefone", [], {}),
        ("acefone", ["count_mode=page", "limit_cap=20"], {"count_mode": "page", "limit_cap": 20}),
        ("ozonetel", ["empty_shape=no_data", "auth=token"],
         {"empty_shape": "no_data", "auth": "token"}),
        ("vcclive", ["not_yet=error200", "webhook_start_time=false"],
         {"not_yet": "error200", "webhook_start_time": False}),
    ],
)  # fmt: skip
def test_simulate_reading_flags_become_simulator_switches(vendor, readings, options):
    """`simulate --reading NAME=VALUE` sets the simulator's switch of that name."""
    assert cli.reading_options(vendor, readings) == options


@pytest.mark.parametrize(
    ("vendor", "reading", "problem"),
    [
        ("acefone", "count_mode", "NAME=VALUE with NAME one of count_mode, limit_cap"),
        ("acefone", "not_yet=empty", "NAME one of count_mode, limit_cap"),
        ("acefone", "limit_cap=many", "'many' is not a valid limit_cap"),
    ],
)
def test_simulate_reading_flags_name_a_bad_one(vendor, reading, problem):
    """A misspelt or mistyped --reading is refused, naming what it takes."""
    with pytest.raises(ConfigError, match=problem):
        cli.reading_options(vendor, [reading])


def test_simulate_refuses_a_reading_value_the_simulator_does_not_know(capsys):
    """An unknown value of a known switch exits with a usage error, not a traceback."""
    assert cli.main(["simulate", "--vendor", "acefone", "--reading", "count_mode=pages"]) == 2
    assert "count_mode must be 'total' or 'page'" in capsys.readouterr().err
