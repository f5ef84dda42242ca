"""A throwaway PgBouncer in front of a PostgreSQL server, for tests and benchmarks.

:class:`PgBouncer` writes a minimal configuration into a temporary directory,
starts ``pgbouncer`` in the foreground on a free loopback port (as the
``postgres`` system user when the current process is root, since PgBouncer
refuses to run as root), waits until it accepts connections, and stops it
again. Every database name is forwarded to the given server (``* = host=...``),
authentication is ``trust`` for the users listed, and the admin console
(database ``pgbouncer``) is open to the first user.

Like :class:`~asyncpool.testing.PostgresServer`, it is never left running: it is
stopped at interpreter exit, and a small watchdog process stops it if this
process dies without running exit hooks.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Literal

from asyncpool.testing._procs import LiveSet, free_port, port_accepts

__all__ = (
    "PgBouncer",
    "PgBouncerMode",
    "PgBouncerNotFoundError",
    "find_pgbouncer",
    "pgbouncer_version",
)

PgBouncerMode = Literal["session", "transaction", "statement"]
"""PgBouncer's ``pool_mode``: when a server connection goes back to its pool."""

_POOL_MODES: tuple[str, ...] = ("session", "transaction", "statement")
_ENV_PGBOUNCER = "ASYNCPOOL_PGBOUNCER"


class PgBouncerNotFoundError(RuntimeError):
    """No ``pgbouncer`` binary was found, or it could not be started."""


def find_pgbouncer() -> str | None:
    """Return the path of the ``pgbouncer`` binary, or ``None``.

    Looks at ``ASYNCPOOL_PGBOUNCER`` (a path), then ``PATH``, then ``/usr/sbin`` and
    ``/usr/local/sbin`` (where Debian puts it, often not on a user's ``PATH``).
    """
    override = os.environ.get(_ENV_PGBOUNCER)
    if override:
        return override if os.access(override, os.X_OK) else None
    found = shutil.which("pgbouncer")
    if found:
        return found
    for candidate in ("/usr/sbin/pgbouncer", "/usr/local/sbin/pgbouncer", "/usr/bin/pgbouncer"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def pgbouncer_version(binary: str | None = None) -> tuple[int, ...] | None:
    """Return the version of ``pgbouncer`` as a tuple, e.g. ``(1, 18, 0)``, or ``None``."""
    binary = binary or find_pgbouncer()
    if binary is None:
        return None
    try:
        result = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10, check=False
        )
    except OSError:
        return None
    match = re.search(r"PgBouncer\s+(\d+(?:\.\d+)*)", result.stdout + result.stderr)
    if match is None:
        return None
    return tuple(int(part) for part in match.group(1).split("."))


_live: LiveSet[PgBouncer] = LiveSet(lambda bouncer: bouncer.close())


# Outlives us: once the owner is gone (even via SIGKILL) it kills pgbouncer and
# removes the temporary directory.
_WATCHDOG_SCRIPT = r"""
owner="$1"; child="$2"; base="$3"
while kill -0 "$owner" 2>/dev/null; do sleep 1; done
kill -KILL "$child" 2>/dev/null
rm -rf "$base"
"""


class PgBouncer:
    """A PgBouncer process in front of one PostgreSQL server, on a free loopback port.

    Example::

        with PgBouncer(server.host, server.port, pool_mode="transaction") as bouncer:
            pool = await asyncpool.create_pool(bouncer.dsn, pooler="pgbouncer-transaction")

    :meth:`start` and :meth:`stop` may be called repeatedly; the port and the
    configuration are kept, so a DSN taken before a stop is valid after the next
    start. :meth:`close` stops it and removes the temporary directory.
    """

    def __init__(
        self,
        server_host: str,
        server_port: int,
        *,
        pool_mode: PgBouncerMode = "transaction",
        default_pool_size: int = 5,
        max_client_conn: int = 200,
        users: Sequence[str] = ("postgres",),
        database: str = "postgres",
        settings: Mapping[str, str | int] | None = None,
        binary: str | None = None,
        startup_timeout: float = 15.0,
    ) -> None:
        """Configure (but do not start) a PgBouncer.

        Args:
            server_host: address of the PostgreSQL server (a loopback address).
            server_port: its port.
            pool_mode: ``"session"``, ``"transaction"`` or ``"statement"``.
            default_pool_size: server connections per (database, user) pair.
            max_client_conn: client connections PgBouncer accepts in total.
            users: user names accepted (``trust`` authentication); the first one is
                also an admin of the console database ``pgbouncer``.
            database: the database name used in :attr:`dsn`.
            settings: extra ``[pgbouncer]`` settings, written as ``name = value``
                (they override the defaults this class writes).
            binary: path of ``pgbouncer``; found with :func:`find_pgbouncer` if omitted.
            startup_timeout: seconds to wait for PgBouncer to accept connections.
        """
        if pool_mode not in _POOL_MODES:
            raise ValueError(
                f"pool_mode must be one of {', '.join(_POOL_MODES)}, got {pool_mode!r}"
            )
        if not users:
            raise ValueError("users must name at least one user")
        self._server_host = server_host
        self._server_port = server_port
        self._pool_mode: PgBouncerMode = pool_mode
        self._default_pool_size = default_pool_size
        self._max_client_conn = max_client_conn
        self._users = tuple(users)
        self._database = database
        self._settings = dict(settings or {})
        self._binary = binary
        self._startup_timeout = startup_timeout
        self._host = "127.0.0.1"
        self._port: int | None = None
        self._base: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._run_as: pwd.struct_passwd | None = None
        self._version: tuple[int, ...] | None = None

    # ------------------------------------------------------------------ facts

    @property
    def host(self) -> str:
        """The loopback address PgBouncer listens on."""
        return self._host

    @property
    def port(self) -> int:
        """The port PgBouncer listens on (fixed at the first :meth:`start`)."""
        if self._port is None:
            raise RuntimeError("PgBouncer has not been started yet")
        return self._port

    @property
    def pool_mode(self) -> PgBouncerMode:
        """The configured ``pool_mode``."""
        return self._pool_mode

    @property
    def pooler(self) -> str:
        """The matching ``pooler=`` value for :func:`asyncpool.create_pool`."""
        return f"pgbouncer-{self._pool_mode}"

    @property
    def default_pool_size(self) -> int:
        """Server connections PgBouncer opens per (database, user) pair, at most."""
        return self._default_pool_size

    @property
    def dsn(self) -> str:
        """A ``postgresql://`` DSN that connects through PgBouncer (first user)."""
        return f"postgresql://{self._users[0]}@{self._host}:{self.port}/{self._database}"

    @property
    def admin_dsn(self) -> str:
        """A DSN for PgBouncer's admin console (database ``pgbouncer``; simple queries only)."""
        return f"postgresql://{self._users[0]}@{self._host}:{self.port}/pgbouncer"

    @property
    def version(self) -> tuple[int, ...] | None:
        """PgBouncer's version, e.g. ``(1, 18, 0)`` (``None`` if it cannot be told)."""
        if self._version is None:
            self._version = pgbouncer_version(self._resolve_binary())
        return self._version

    @property
    def supports_prepared_statements(self) -> bool:
        """True when this PgBouncer (>= 1.21) can track protocol-level prepared statements
        in transaction mode (``max_prepared_statements``, which this class then sets).
        """
        version = self.version
        return version is not None and version >= (1, 21)

    @property
    def base_dir(self) -> Path:
        """The temporary directory with the configuration and the log."""
        if self._base is None:
            raise RuntimeError("PgBouncer has not been started yet")
        return self._base

    @property
    def log_file(self) -> Path:
        """PgBouncer's log file."""
        return self.base_dir / "pgbouncer.log"

    @property
    def is_running(self) -> bool:
        """True while the PgBouncer process runs."""
        return self._proc is not None and self._proc.poll() is None

    def config_text(self) -> str:
        """The ``pgbouncer.ini`` text this instance runs with."""
        base = self.base_dir
        settings: dict[str, str | int] = {
            "listen_addr": self._host,
            "listen_port": self.port,
            "unix_socket_dir": "",
            "auth_type": "trust",
            "auth_file": str(base / "userlist.txt"),
            "admin_users": self._users[0],
            "stats_users": self._users[0],
            "pool_mode": self._pool_mode,
            "default_pool_size": self._default_pool_size,
            "max_client_conn": self._max_client_conn,
            "logfile": str(base / "pgbouncer.log"),
            "pidfile": str(base / "pgbouncer.pid"),
            "ignore_startup_parameters": "extra_float_digits,options",
            "server_login_retry": 1,
            "query_wait_timeout": 30,
        }
        if self.supports_prepared_statements:
            settings["max_prepared_statements"] = 100
        settings.update(self._settings)
        lines = [
            "[databases]",
            f"* = host={self._server_host} port={self._server_port}",
            "",
            "[pgbouncer]",
            *(f"{name} = {value}" for name, value in settings.items()),
            "",
        ]
        return "\n".join(lines)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start PgBouncer (creating its directory and picking a port the first time).

        Returns once it accepts TCP connections; does nothing if it is running.

        Raises:
            PgBouncerNotFoundError: no binary, or it exited or did not listen in time.
        """
        if self.is_running:
            return
        binary = self._resolve_binary()
        if self._base is None:
            self._create_dir()
        first = self._port is None
        for attempt in range(3 if first else 1):
            if first:
                self._port = free_port(self._host)
            self._write_config()
            try:
                self._spawn(binary)
                return
            except PgBouncerNotFoundError:
                # Another process may have taken the port between picking and binding it.
                if attempt == 2 or not first:
                    raise

    def stop(self, mode: Literal["fast", "safe"] = "fast", timeout: float = 5.0) -> None:
        """Stop PgBouncer; SIGKILL if it has not exited after ``timeout`` seconds.

        ``"fast"`` is PgBouncer's immediate shutdown (SIGTERM before 1.23, SIGQUIT
        since): client connections are closed at once. ``"safe"`` (SIGINT) first waits
        for server connections to be released (in session mode: for clients to leave).
        """
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            if mode == "safe":
                sig = signal.SIGINT
            else:
                version = self.version
                sig = (
                    signal.SIGQUIT
                    if version is not None and version >= (1, 23)
                    else (signal.SIGTERM)
                )
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._stop_watchdog()

    def kill(self) -> None:
        """Kill PgBouncer at once (SIGKILL): every client connection breaks."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        self._stop_watchdog()

    def close(self) -> None:
        """Stop PgBouncer and remove its temporary directory; safe to call twice."""
        try:
            self.stop()
        finally:
            self._stop_watchdog()
            if self._base is not None:
                shutil.rmtree(self._base, ignore_errors=True)
            self._base = None
            self._port = None
            _live.discard(self)

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of PgBouncer's log (for failure messages)."""
        try:
            text = self.log_file.read_text(errors="replace")
        except (OSError, RuntimeError):
            return "(no pgbouncer log)"
        return "pgbouncer log (tail):\n" + "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> PgBouncer:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        port = self._port if self._port is not None else "-"
        state = "running" if self.is_running else "stopped"
        return (
            f"<PgBouncer {self._host}:{port} -> {self._server_host}:{self._server_port} "
            f"{self._pool_mode} pool_size={self._default_pool_size} {state}>"
        )

    # ------------------------------------------------------------------ internals

    def _resolve_binary(self) -> str:
        if self._binary is None:
            found = find_pgbouncer()
            if found is None:
                raise PgBouncerNotFoundError(
                    "pgbouncer binary not found (looked at $ASYNCPOOL_PGBOUNCER, PATH, "
                    "/usr/sbin); install it (Debian: apt-get install pgbouncer)"
                )
            self._binary = found
        return self._binary

    def _create_dir(self) -> None:
        if os.geteuid() == 0:
            for name in ("postgres", "nobody"):
                try:
                    self._run_as = pwd.getpwnam(name)
                    break
                except KeyError:
                    continue
            else:
                raise PgBouncerNotFoundError(
                    "running as root, but there is no 'postgres' (or 'nobody') user to run "
                    "pgbouncer as (it refuses to run as root)"
                )
        base = Path(tempfile.mkdtemp(prefix="asyncpool-pgbouncer-"))
        if self._run_as is not None:
            os.chown(base, self._run_as.pw_uid, self._run_as.pw_gid)
        self._base = base
        _live.add(self)
        users = "".join(f'"{user}" ""\n' for user in self._users)
        (base / "userlist.txt").write_text(users)

    def _write_config(self) -> None:
        path = self.base_dir / "pgbouncer.ini"
        path.write_text(self.config_text())
        for name in ("pgbouncer.ini", "userlist.txt"):
            (self.base_dir / name).chmod(0o644)

    def _spawn(self, binary: str) -> None:
        env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
        env["LC_ALL"] = "C"
        kwargs: dict[str, object] = {}
        if self._run_as is not None:
            kwargs = {"user": self._run_as.pw_uid, "group": self._run_as.pw_gid, "extra_groups": []}
            env["HOME"] = str(self.base_dir)
        proc = subprocess.Popen(
            [binary, str(self.base_dir / "pgbouncer.ini")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=str(self.base_dir),
            env=env,
            start_new_session=True,
            **kwargs,  # type: ignore[call-overload]
        )
        self._proc = proc
        self._start_watchdog(proc.pid)
        deadline = time.monotonic() + self._startup_timeout
        while not port_accepts(self._host, self.port):
            if proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise PgBouncerNotFoundError(
                    f"pgbouncer did not start listening on {self._host}:{self.port} "
                    f"(exit code {proc.returncode})\n{self.log_tail()}"
                )
            time.sleep(0.02)

    def _start_watchdog(self, child: int) -> None:
        sh = shutil.which("sh")
        if sh is None or self._base is None:  # pragma: no cover - POSIX has sh
            return
        self._stop_watchdog()
        self._watchdog = subprocess.Popen(
            [
                sh,
                "-c",
                _WATCHDOG_SCRIPT,
                "asyncpool-pgbouncer-watchdog",
                str(os.getpid()),
                str(child),
                str(self._base),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def _stop_watchdog(self) -> None:
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is None:
            return
        with contextlib.suppress(ProcessLookupError):
            watchdog.kill()
        watchdog.wait()
