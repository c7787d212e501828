"""PostgreSQL refusing database.dsn's role or password is an error a user can act on, not a
server that is down: check-config fails on it, never showing the password. The embedded test
server trusts every local connection, so the test role gets a password rule of its own."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote, urlsplit

import asyncpg
import pytest

from cdrsync.errors import AccessRefused
from cdrsync.store.embedded import EmbeddedPostgres
from cdrsync.store.store import Store
from process_support import account_table, children, write_config

RIGHT, WRONG = "right-pw-4f1d", "wr0ng-pw-9c2e"


async def refused(dsn: str) -> bool:
    """Whether PostgreSQL refuses ``dsn``'s password (it re-reads pg_hba.conf on its own time)."""
    try:
        conn = await asyncpg.connect(dsn, timeout=10)
    except asyncpg.InvalidPasswordError:
        return True
    await conn.close()
    return False


@pytest.fixture
async def wrong_password_dsn(dsn: str, embedded_pg: EmbeddedPostgres | None) -> AsyncIterator[str]:
    """``dsn`` as a role of its own with a wrong password, which the server refuses."""
    if embedded_pg is None or embedded_pg.data_dir is None:
        pytest.skip("edits pg_hba.conf: needs the embedded PostgreSQL")
    role = f"pw_{uuid.uuid4().hex[:12]}"
    hba = embedded_pg.data_dir / "pg_hba.conf"
    rules = hba.read_text()
    admin = await asyncpg.connect(dsn, timeout=30)
    try:
        await admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{RIGHT}'")
        hba.write_text(f"local all {role} scram-sha-256\n{rules}")  # first match wins
        await admin.execute("SELECT pg_reload_conf()")
        parts = urlsplit(dsn)
        wrong = parts._replace(netloc=f"{role}:{quote(WRONG)}@").geturl()
        for _ in range(300):  # the reload is asynchronous: wait until it took effect
            if await refused(wrong):
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail("PostgreSQL never began to ask the test role for its password")
        yield wrong
    finally:
        hba.write_text(rules)
        await admin.execute("SELECT pg_reload_conf()")
        await admin.execute(f"DROP ROLE IF EXISTS {role}")
        await admin.close()


async def test_a_refused_password_is_not_called_unreachable(wrong_password_dsn: str) -> None:
    """Store.connect with a wrong password says PostgreSQL refused the role, never the password."""
    with pytest.raises(AccessRefused) as caught:
        await Store.connect(wrong_password_dsn)
    message = str(caught.value)
    assert "refused" in message and "database.dsn" in message
    assert "unreachable" not in message
    assert WRONG not in message


async def test_check_config_fails_on_a_refused_password(
    wrong_password_dsn: str, tmp_path: Path
) -> None:
    """check-config with a wrong database password exits 78 saying so, never the password."""
    config = write_config(
        tmp_path / "c.toml", wrong_password_dsn, [account_table("http://127.0.0.1:9")]
    )
    async with children(tmp_path) as kids:
        code, out, err = await kids.command("check-config", "--config", str(config), within=60)
    assert code == 78, out + err
    assert "refused" in err and "cannot start" in err, err
    assert "pooler check skipped" not in err, err
    assert WRONG not in out + err
    assert quote(WRONG) not in out + err
