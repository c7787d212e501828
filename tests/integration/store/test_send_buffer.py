"""A store connection over a unix socket gets a wide send buffer, so a batch's COPY data keeps
PostgreSQL busy while the event loop parses pages (``upsert.widen_send_buffer``); a TCP
connection keeps the kernel's own tuning."""

from __future__ import annotations

import socket
from pathlib import Path

import asyncpg

from cdrsync.store.store import Store
from cdrsync.store.upsert import SEND_BUFFER_BYTES


def _send_buffer(conn: object) -> tuple[int, int]:
    sock = conn._transport.get_extra_info("socket")  # type: ignore[attr-defined]
    return sock.family, sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)


async def test_store_connections_over_a_unix_socket_get_a_wide_send_buffer(store: Store, dsn):
    plain = await asyncpg.connect(dsn)
    try:
        family, default = _send_buffer(plain)
    finally:
        await plain.close()
    async with store._pool.acquire() as conn:
        pooled_family, pooled = _send_buffer(conn._con)
    assert pooled_family == family
    if family != socket.AF_UNIX:
        assert pooled == default  # TCP: the kernel keeps tuning it
        return
    limit = int(Path("/proc/sys/net/core/wmem_max").read_text())  # noqa: ASYNC240
    granted = min(SEND_BUFFER_BYTES, limit)
    assert pooled == 2 * granted > default  # Linux doubles what it grants, for its overhead
