"""A network fault in front of PostgreSQL: a proxy on 127.0.0.1 that can go silent.

``freeze()`` models a silently dropped network (a cut cable, a firewall dropping packets): every
socket stays open, nothing is forwarded and nothing is refused, so a client waits for an answer
until TCP gives up. ``thaw()`` lets the held bytes through again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit


def _upstream(dsn: str) -> tuple[str | None, str, int]:
    """(unix socket path, host, port) of a libpq URI (the embedded server's: a socket dir)."""
    parts = urlsplit(dsn)
    query = dict(parse_qsl(parts.query))
    host = query.get("host") or parts.hostname or "127.0.0.1"
    port = int(query.get("port") or parts.port or 5432)
    if host.startswith("/"):
        return f"{host}/.s.PGSQL.{port}", host, port
    return None, host, port


class FreezableProxy:
    """Forwards 127.0.0.1:``port`` to the server of ``dsn``; ``dsn`` here goes through it."""

    def __init__(self, upstream_dsn: str) -> None:
        self._socket, self._host, self._port = _upstream(upstream_dsn)
        self._upstream_dsn = upstream_dsn
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None
        self.dsn = ""

    def freeze(self) -> None:
        """Forward nothing more (connections stay open, new ones are accepted and stall)."""
        self._flowing.clear()

    def thaw(self) -> None:
        """Forward again."""
        self._flowing.set()

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._socket is not None:
            return await asyncio.open_unix_connection(self._socket)
        return await asyncio.open_connection(self._host, self._port)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        await self._flowing.wait()
        up_reader, up_writer = await self._open()
        self._writers.append(up_writer)
        for pipe in (self._pipe(reader, up_writer), self._pipe(up_reader, writer)):
            task = asyncio.create_task(pipe)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        parts = urlsplit(self._upstream_dsn)
        query = [(k, v) for k, v in parse_qsl(parts.query) if k not in ("host", "port")]
        credentials = parts.netloc.rpartition("@")[0]
        netloc = f"{credentials}@127.0.0.1:{port}" if credentials else f"127.0.0.1:{port}"
        self.dsn = urlunsplit(parts._replace(netloc=netloc, query=urlencode(query)))

    async def close(self) -> None:
        """Stop listening and cut every connection (the server ends their sessions)."""
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()


@contextlib.asynccontextmanager
async def freezable_proxy(dsn: str) -> AsyncIterator[FreezableProxy]:
    """A started ``FreezableProxy`` in front of ``dsn``'s server; closed on the way out."""
    proxy = FreezableProxy(dsn)
    await proxy.start()
    try:
        yield proxy
    finally:
        proxy.thaw()
        await proxy.close()
