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
