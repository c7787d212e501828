"""What the `cdrsync` command prints when something goes wrong (its exit codes, no secret)."""

from __future__ import annotations

import argparse

import pytest

from cdrsync import cli
from cdrsync.errors import CdrsyncError


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
    with pytest.raises(cli.ConfigError, match=problem):
        cli.reading_options(vendor, [reading])


def test_simulate_refuses_a_reading_value_the_simulator_does_not_know(capsys):
    """An unknown value of a known switch exits with a usage error, not a traceback."""
    assert cli.main(["simulate", "--vendor", "acefone", "--reading", "count_mode=pages"]) == 2
    assert "count_mode must be 'total' or 'page'" in capsys.readouterr().err
