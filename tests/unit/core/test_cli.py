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
