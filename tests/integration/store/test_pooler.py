"""A pooler that hands out PostgreSQL sessions per transaction (PgBouncer's transaction mode) is
refused at start-up, with what to do; one in session mode is not. The pooler here is a small
one of the test's own on 127.0.0.1, between the client and the test's real PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from cdrsync.errors import ConfigError
from cdrsync.store.pooler import check_session_pooling, shares_sessions
from process_support import account_table, children, write_config

PROTOCOL_3 = 196608
SSL_REQUEST = 80877103


async def read_message(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One protocol message after start-up: (type byte, the whole message)."""
    head = await reader.readexactly(5)
    (length,) = struct.unpack("!i", head[1:])
    return head[:1], head + await reader.readexactly(length - 4)


def message(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!i", len(body) + 4) + body


class Pooler:
    """Clients in, PostgreSQL sessions out: per transaction (``transaction``: a server session
    goes back to the pool at each ReadyForQuery "idle", and the next statement takes the one
    most recently given back, as PgBouncer does) or per client (``session``)."""

    def __init__(self, target: str, mode: str) -> None:
        parts = urlsplit(target)
        query = parse_qs(parts.query)
        self.socket_dir = query["host"][0]
        self.port = int(query.get("port", ["5432"])[0])
        self.user = parts.username or query["user"][0]
        self.database = parts.path.lstrip("/")
        self.mode = mode
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.greeting: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        path = str(Path(self.socket_dir) / f".s.PGSQL.{self.port}")
        reader, writer = await asyncio.open_unix_connection(path)
        params = f"user\0{self.user}\0database\0{self.database}\0\0".encode()
        writer.write(struct.pack("!ii", len(params) + 8, PROTOCOL_3) + params)
        greeting = []
        while True:
            kind, data = await read_message(reader)
            if kind == b"S":
                greeting.append(data)
            if kind == b"Z":
                break
        self.greeting = self.greeting or greeting
        return reader, writer

    async def _take(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return self.idle.pop() if self.idle else await self._connect()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._serve(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:  # start-up: refuse SSL, accept anyone (the server behind trusts us)
            (length,) = struct.unpack("!i", await reader.readexactly(4))
            body = await reader.readexactly(length - 4)
            if struct.unpack("!i", body[:4])[0] == SSL_REQUEST:
                writer.write(b"N")
                continue
            break
        if not self.greeting:
            self.idle.append(await self._connect())
        writer.write(message(b"R", struct.pack("!i", 0)) + b"".join(self.greeting))
        writer.write(message(b"K", struct.pack("!ii", 1, 1)) + message(b"Z", b"I"))
        held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        pumps: set[asyncio.Task[None]] = set()

        async def pump(server: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
            while True:
                answer, out = await read_message(server[0])
                if answer == b"Z" and out[-1:] == b"I" and self.mode == "transaction":
                    held.clear()  # back to the pool before the client hears it may go on
                    self.idle.append(server)
                    writer.write(out)
                    return
                writer.write(out)

        try:
            while True:
                kind, data = await read_message(reader)
                if kind == b"X":
                    break
                if not held:
                    held.append(await self._take())
                    task = asyncio.create_task(pump(held[0]))
                    pumps.add(task)
                    task.add_done_callback(pumps.discard)
                held[0][1].write(data)
        finally:
            for task in pumps:
                task.cancel()
            if held:
                held[0][1].close()  # in the middle of something: not reusable

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"postgresql://{self.user}@127.0.0.1:{port}/{self.database}?sslmode=disable"

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        for _, server in self.idle:
            server.close()


@contextlib.asynccontextmanager
async def pooler(dsn: str, mode: str) -> AsyncIterator[str]:
    pool = Pooler(dsn, mode)
    try:
        yield await pool.start()
    finally:
        await pool.close()


@pytest.mark.parametrize(
    ("first", "second", "per_transaction"),
    [
        ([10, 10, 10, 10], [11, 11, 11, 11], False),  # direct, or a session-mode pool
        ([10, 10, 10, 10], [10, 10, 10, 10], True),  # both got the idle session back
        ([10, 12, 10, 12], [11, 11, 11, 11], True),  # one client's backend changed
        ([10, 10], [11, 10], True),
    ],
)
def test_per_transaction_pooling_is_told_by_the_backends_seen(
    first: list[int], second: list[int], per_transaction: bool
) -> None:
    """Two clients side by side: a shared or a changing backend means per-transaction pooling."""
    assert shares_sessions(first, second) is per_transaction


async def test_a_direct_dsn_and_a_session_pool_pass_a_transaction_pool_is_refused(
    dsn: str,
) -> None:
    """The check passes PostgreSQL itself and a session-mode pool, and refuses a pool in
    transaction mode with the fix in its message."""
    if "host=" not in dsn:
        pytest.skip("the test's pooler reaches PostgreSQL over the embedded server's socket")
    await check_session_pooling(dsn, "cdrsync")
    async with pooler(dsn, "session") as through:
        await check_session_pooling(through, "cdrsync")
    async with pooler(dsn, "transaction") as through:
        with pytest.raises(ConfigError, match="pool_mode = session"):
            await check_session_pooling(through, "cdrsync")


async def test_the_daemon_refuses_to_start_behind_a_transaction_pool(
    dsn: str, tmp_path: Path
) -> None:
    """`cdrsync run` behind PgBouncer-style transaction pooling exits 78 (bad configuration)
    saying to use a direct DSN or a session-mode pool, and syncs nothing."""
    if "host=" not in dsn:
        pytest.skip("the test's pooler reaches PostgreSQL over the embedded server's socket")
    async with pooler(dsn, "transaction") as through, children(tmp_path) as kids:
        config = write_config(tmp_path / "c.toml", through, [account_table("http://127.0.0.1:9")])
        daemon = await kids.daemon(config)
        code = await daemon.wait(60)
        assert code == 78, daemon.tail()
        assert "pool_mode = session" in daemon.output()
        assert "directly" in daemon.output()


async def test_doctor_says_the_same_behind_a_transaction_pool(dsn: str, tmp_path: Path) -> None:
    """`cdrsync doctor` checks the DSN as the daemon would: exit 78 with the same advice."""
    if "host=" not in dsn:
        pytest.skip("the test's pooler reaches PostgreSQL over the embedded server's socket")
    async with pooler(dsn, "transaction") as through, children(tmp_path) as kids:
        config = write_config(tmp_path / "c.toml", through, [account_table("http://127.0.0.1:9")])
        code, out, err = await kids.command("doctor", "--config", str(config))
    assert code == 78, out + err
    assert "pool_mode = session" in err, out + err


async def test_check_config_says_the_same_behind_a_transaction_pool(
    dsn: str, tmp_path: Path
) -> None:
    """check-config refuses a transaction pool (78), passes direct, skips an unreachable DSN."""
    if "host=" not in dsn:
        pytest.skip("the test's pooler reaches PostgreSQL over the embedded server's socket")
    sim = [account_table("http://127.0.0.1:9")]
    async with pooler(dsn, "transaction") as through, children(tmp_path) as kids:
        pooled = write_config(tmp_path / "pooled.toml", through, sim)
        direct = write_config(tmp_path / "direct.toml", dsn, sim)
        down = write_config(tmp_path / "down.toml", "postgresql://cdrsync@127.0.0.1:1/x", sim)
        results = [
            await kids.command("check-config", "--config", str(config), within=60)
            for config in (pooled, direct, down)
        ]
    (pooled_code, _, pooled_err), (direct_code, _, direct_err), (down_code, _, down_err) = results
    assert pooled_code == 78, pooled_err
    assert "pool_mode = session" in pooled_err, pooled_err
    assert direct_code == 0, direct_err
    assert "no per-transaction pooler" in direct_err, direct_err
    assert down_code == 0, down_err
    assert "pooler check skipped" in down_err, down_err
