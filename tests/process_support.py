"""Helpers for tests that run cdrsync as a child process: config files, the process itself with
its JSON log lines collected as they come, one-shot CLI commands and database reads.

The child is ``sys.executable -m cdrsync`` under asyncio's subprocess support, so a simulator
served by the test's own loop keeps answering while the child runs. Its stdout and stderr are
read continuously (a full pipe would stall the daemon) and kept for assertions.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import asyncpg

from cdrsync.simulator.acefone import AcefoneSimConfig

ACCOUNT = "acme-in"
SIM_TOKEN = AcefoneSimConfig().token  # what the simulator accepts unless told otherwise
STREAM = f"{ACCOUNT}/list"
# Child output lines can hold a whole traceback as one JSON string.
_LINE_LIMIT = 1 << 24


# ---------------------------------------------------------------------------- config files


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string of printable text is a TOML basic string
    raise TypeError(f"no TOML form for {value!r} here")


def to_toml(doc: Mapping[str, Any]) -> str:
    """A TOML text of ``doc``: scalars, tables, and arrays of tables (one level of nesting)."""
    lines: list[str] = []

    def table(header: str, data: Mapping[str, Any]) -> None:
        subs = {k: v for k, v in data.items() if isinstance(v, Mapping)}
        lines.append(header)
        lines.extend(
            f"{k} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, Mapping)
        )
        for key, sub in subs.items():
            inner = header.strip("[]")
            lines.append("")
            table(f"[{inner}.{key}]", sub)
        lines.append("")

    for key, value in doc.items():
        if isinstance(value, list):
            for item in value:
                table(f"[[{key}]]", item)
        else:
            table(f"[{key}]", value)
    return "\n".join(lines)


def account_table(
    base_url: str,
    *,
    token: str = SIM_TOKEN,
    start: dt.date | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """The test account: fast polling, short settle, a list limit that never bites."""
    table: dict[str, Any] = {
        "name": ACCOUNT,
        "vendor": "acefone",
        "base_url": base_url,
        "token": token,
        "start": (start or (dt.datetime.now(dt.UTC) - dt.timedelta(days=2)).date()).isoformat(),
        "poll_interval": "300ms",
        "lookback": "1h",
        "settle": "1s",
        "rate_limits": {"list": "100000/min"},
    }
    table.update(overrides)
    return table


def write_config(
    path: Path,
    dsn: str,
    accounts: list[dict[str, Any]],
    *,
    http_listen: str = "",
    **daemon: Any,
) -> Path:
    """Write a daemon configuration for ``accounts`` on the test database to ``path``."""
    doc = {
        "database": {"dsn": dsn, "schema": "cdrsync"},
        "daemon": {
            "state_dir": str(path.parent),
            "http_listen": http_listen,
            "log_format": "json",
            "shutdown_grace": "5s",
            **daemon,
        },
        "accounts": accounts,
    }
    path.write_text(to_toml(doc), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------- child processes


def child_env() -> dict[str, str]:
    """The child's environment: this one, without anything that would change its behaviour."""
    env = {k: v for k, v in os.environ.items() if k not in {"CDRSYNC_CONFIG", "NOTIFY_SOCKET"}}
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Child:
    """One cdrsync process, with its output collected line by line while it runs."""

    def __init__(self, proc: asyncio.subprocess.Process, label: str) -> None:
        self.proc = proc
        self.label = label
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        assert proc.stdout is not None
        assert proc.stderr is not None
        self._readers = [
            asyncio.create_task(self._pump(proc.stdout, self.stdout)),
            asyncio.create_task(self._pump(proc.stderr, self.stderr)),
        ]

    @staticmethod
    async def _pump(stream: asyncio.StreamReader, into: list[str]) -> None:
        while line := await stream.readline():
            into.append(line.decode("utf-8", "replace").rstrip("\n"))

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self.proc.pid

    @property
    def running(self) -> bool:
        """Whether the child has not exited yet."""
        return self.proc.returncode is None

    def output(self) -> str:
        """Everything the child wrote so far, stdout then stderr."""
        return "\n".join([*self.stdout, *self.stderr])

    def events(self) -> list[dict[str, Any]]:
        """The JSON log events on stdout so far (lines that are not JSON are skipped)."""
        found = []
        for line in list(self.stdout):
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict):
                    found.append(event)
        return found

    def named(self, name: str, **fields: Any) -> list[dict[str, Any]]:
        """The events called ``name`` whose ``fields`` match."""
        return [
            e
            for e in self.events()
            if e.get("event") == name and all(e.get(k) == v for k, v in fields.items())
        ]

    async def wait_event(self, name: str, *, within: float, **fields: Any) -> dict[str, Any] | None:
        """The first event ``name`` (matching ``fields``), waiting up to ``within`` seconds;
        None if it did not come, or the child exited without it."""
        deadline = time.monotonic() + within
        while True:
            found = self.named(name, **fields)
            if found:
                return found[0]
            if not self.running or time.monotonic() > deadline:
                await asyncio.sleep(0.1)  # let the readers drain what is left
                found = self.named(name, **fields)
                return found[0] if found else None
            await asyncio.sleep(0.05)

    async def wait(self, within: float) -> int | None:
        """The exit code once the child exits (output fully read), None after ``within`` s."""
        try:
            code = await asyncio.wait_for(self.proc.wait(), within)
        except TimeoutError:
            return None
        await asyncio.wait_for(asyncio.gather(*self._readers), 10)
        return code

    async def kill(self) -> int | None:
        """SIGKILL: the process dies at whatever instruction it is on."""
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGKILL)
        return await self.wait(30)

    async def terminate(self, within: float) -> int | None:
        """SIGTERM, then the exit code within ``within`` seconds (None if it did not exit)."""
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
        return await self.wait(within)

    def tail(self, lines: int = 30) -> str:
        """The last lines of output, for assertion messages."""
        return f"--- {self.label} (pid {self.pid}) ---\n" + "\n".join(
            [*self.stdout[-lines:], *self.stderr[-lines:]]
        )


class Children:
    """Every child a test started; ``close()`` SIGKILLs whichever is still running."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.started: list[Child] = []

    async def spawn(
        self, *args: str, label: str = "cdrsync", env: dict[str, str] | None = None
    ) -> Child:
        """Start ``python -m cdrsync ARGS`` (``env`` adds to the child's environment)."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "cdrsync",
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=self.cwd,
            env={**child_env(), **(env or {})},
            limit=_LINE_LIMIT,
        )
        child = Child(proc, label)
        self.started.append(child)
        return child

    async def daemon(
        self, config: Path, label: str = "daemon", env: dict[str, str] | None = None
    ) -> Child:
        """Start ``cdrsync run --config CONFIG``."""
        return await self.spawn("run", "--config", str(config), label=label, env=env)

    async def command(self, *args: str, within: float = 60) -> tuple[int | None, str, str]:
        """Run a one-shot command to its end: (exit code, stdout, stderr); killed after
        ``within`` seconds (exit code None)."""
        child = await self.spawn(*args, label=" ".join(args[:1]))
        code = await child.wait(within)
        if code is None:
            await child.kill()
        return code, "\n".join(child.stdout), "\n".join(child.stderr)

    async def close(self) -> None:
        """Kill every child still running and collect its output."""
        for child in self.started:
            await child.kill()

    def tails(self) -> str:
        """The tail of every child's output, for assertion messages."""
        return "\n".join(child.tail() for child in self.started)


@contextlib.asynccontextmanager
async def children(cwd: Path) -> AsyncIterator[Children]:
    """Children of one test; whatever still runs at the end is killed (even on failure)."""
    group = Children(cwd)
    try:
        yield group
    finally:
        await group.close()


# ---------------------------------------------------------------------------- database reads


async def fetch(dsn: str, query: str, *args: Any) -> list[asyncpg.Record]:
    """Rows of one query on the test database (schema cdrsync first on the search path)."""
    conn = await asyncpg.connect(dsn, server_settings={"search_path": "cdrsync"}, timeout=30)
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


async def call_count(dsn: str) -> int:
    """How many rows ``calls`` holds."""
    rows = await fetch(dsn, "SELECT count(*) AS n FROM calls")
    return int(rows[0]["n"])


async def watermark(dsn: str, stream: str = STREAM) -> dt.datetime | None:
    """The stream's committed watermark (None before its first window)."""
    rows = await fetch(dsn, "SELECT watermark FROM sync_state WHERE stream = $1", stream)
    return rows[0]["watermark"] if rows else None


async def duplicate_keys(dsn: str) -> int:
    """How many rows repeat a (vendor, account, call_key) already present."""
    rows = await fetch(
        dsn, "SELECT count(*) - count(DISTINCT (vendor, account, call_key)) AS n FROM calls"
    )
    return int(rows[0]["n"])


async def ownership(child: Child, stream: str, *, within: float) -> str | None:
    """Whether ``child`` logged that it owns ``stream`` ("owned") or that another instance does
    ("elsewhere"); None if it said neither within ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if child.named("stream.owned", stream=stream):
            return "owned"
        if child.named("stream.owned_elsewhere", stream=stream):
            return "elsewhere"
        await asyncio.sleep(0.05)
    return None
