"""VCC Live test settings shared by the daemon tests (app) and the outbox tests (engine)."""

from __future__ import annotations

import datetime as dt
import socket
from typing import Any

from cdrsync.config import Settings, parse

ACCOUNT = "acme-eu"
SECRET = "hook-secret-123"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def vcc_settings(base_url: str, dsn: str, port: int, **account: Any) -> Settings:
    """A VCC Live account on the simulator, with fast polling and pushes enabled."""
    acc: dict[str, Any] = {
        "name": ACCOUNT, "vendor": "vcclive", "base_url": base_url, "username": "sim-cc",
        "api_key": "sim-vcc-token", "webhook_secret": SECRET,
        "start": (dt.datetime.now(dt.UTC) - dt.timedelta(days=3)).date().isoformat(),
        "poll_interval": "300ms", "settle": "1s", "page_size": 50,
        "lookup_delay": "0s", "lookup_interval": "1s", "outbox_interval": "300ms",
        "rate_limits": {"list": "100000/min", "lookup": "100000/min", "records": "100000/min"},
        **account,
    }  # fmt: skip
    return parse(
        {
            "database": {"dsn": dsn, "schema": "cdrsync"},
            "daemon": {
                "state_dir": "/tmp",
                "http_listen": f"127.0.0.1:{port}" if port else "",
                "shutdown_grace": "5s",
            },
            "accounts": [acc],
        },
        source="<test>",
        environ={},
    )
