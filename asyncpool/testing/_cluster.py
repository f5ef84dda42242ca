"""Throwaway PostgreSQL servers for tests: local binaries, a given DSN, or a container."""

from __future__ import annotations

import contextlib
import importlib
import os
import pwd
import re
import shlex
import shutil
import subprocess
import tempfile
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

from asyncpool.testing._procs import LiveSet, free_port, port_accepts, query_sync

__all__ = (
    "DEFAULT_SETTINGS",
    "PostgresInstance",
    "PostgresKind",
    "PostgresNotFoundError",
    "PostgresServer",
    "find_pg_bin",
    "find_postgres",
)

PostgresKind = Literal["dsn", "local", "container"]
"""Where a :class:`PostgresInstance` came from."""

DEFAULT_SETTINGS: Mapping[str, str] = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
}
"""Server settings (``-c name=value``) used by :class:`PostgresServer` unless overridden."""

_ENV_PG_BIN = "ASYNCPOOL_PG_BIN"
_ENV_TEST_DSN = "ASYNCPOOL_TEST_DSN"
_ENV_PG_IMAGE = "ASYNCPOOL_TEST_PG_IMAGE"
_DEFAULT_IMAGE = "postgres:16-alpine"
_SYSTEM_PG_GLOB_ROOT = Path("/usr/lib/postgresql")


class PostgresNotFoundError(RuntimeError):
    """No PostgreSQL server could be found or started for the tests."""


# --------------------------------------------------------------------------- binaries


def _bin_dir_ok(path: Path) -> bool:
    return all(os.access(path / name, os.X_OK) for name in ("initdb", "pg_ctl", "postgres"))


def _version_key(path: Path) -> tuple[int, ...]:
    numbers = re.findall(r"\d+", path.parent.name)
    return tuple(int(n) for n in numbers)


def find_pg_bin() -> Path | None:
    """Return the directory holding ``initdb``, ``pg_ctl`` and ``postgres``, or ``None``.

    The search order is: the ``ASYNCPOOL_PG_BIN`` environment variable (a directory), then
    ``initdb`` on ``PATH`` (symlinks resolved), then the newest
    ``/usr/lib/postgresql/<version>/bin``.

    Raises:
        PostgresNotFoundError: if ``ASYNCPOOL_PG_BIN`` is set but does not hold the binaries.
    """
    override = os.environ.get(_ENV_PG_BIN)
    if override:
        path = Path(override).expanduser()
        if not _bin_dir_ok(path):
            raise PostgresNotFoundError(
                f"{_ENV_PG_BIN}={override!r} does not contain initdb, pg_ctl and postgres"
            )
        return path
    found = shutil.which("initdb")
    if found:
        path = Path(found).resolve().parent
        if _bin_dir_ok(path):
            return path
    if _SYSTEM_PG_GLOB_ROOT.is_dir():
        candidates = sorted(
            (p for p in _SYSTEM_PG_GLOB_ROOT.glob("*/bin") if _bin_dir_ok(p)),
            key=_version_key,
            reverse=True,
        )
        if candidates:
            return candidates[0]
    return None


_live_servers: LiveSet[PostgresServer] = LiveSet(lambda server: server.close(mode="immediate"))


# A detached shell that outlives us: once our process is gone (even via os._exit or
# SIGKILL, when atexit does not run) it sends SIGQUIT (immediate shutdown) to the
# postmaster and removes the temporary directory.
_WATCHDOG_SCRIPT = r"""
owner="$1"; data="$2"; base="$3"
while kill -0 "$owner" 2>/dev/null; do sleep 1; done
if [ -f "$data/postmaster.pid" ]; then
    pid=$(head -n 1 "$data/postmaster.pid")
    kill -QUIT "$pid" 2>/dev/null
    i=0
    while kill -0 "$pid" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
fi
rm -rf "$base"
"""


# --------------------------------------------------------------------------- server


class PostgresServer:
    """A throwaway PostgreSQL cluster run from the local server binaries.

    :meth:`start` runs ``initdb`` (trust authentication, user ``postgres``, UTF8, no
    locale) in a fresh temporary directory, picks a free loopback port and starts the
    server there with ``pg_ctl``. :meth:`stop` and :meth:`start` may be called any
    number of times: the data directory and the port are kept, so a DSN taken before a
    stop is valid again after the next start. :meth:`close` stops the server and removes
    the temporary directory.

    When the current process runs as root, ``initdb``, ``pg_ctl`` and ``postgres`` run as
    the ``postgres`` system user (``nobody`` if there is none). A server is never left
    running: :meth:`close` is called at interpreter exit, and a small watchdog process
    shuts the server down if this process dies without running exit hooks.

    Use it as a context manager::

        with PostgresServer() as server:
            conn = await asyncpg.connect(server.dsn)
    """

    def __init__(
        self,
        *,
        settings: Mapping[str, str] | None = None,
        bin_dir: str | os.PathLike[str] | None = None,
        base_dir: str | os.PathLike[str] | None = None,
        user: str = "postgres",
        database: str = "postgres",
        startup_timeout: float = 60.0,
    ) -> None:
        """Configure (but do not start) a server.

        Args:
            settings: extra server settings passed as ``-c name=value``; they are merged
                over :data:`DEFAULT_SETTINGS` (a value of ``None`` is not allowed; pass
                the server default explicitly to undo one).
            bin_dir: directory with ``initdb``/``pg_ctl``/``postgres``; found with
                :func:`find_pg_bin` when omitted.
            base_dir: parent directory for the temporary directory (default: the
                system temporary directory).
            user: database superuser created by ``initdb`` and used in :attr:`dsn`.
            database: database name used in :attr:`dsn`.
            startup_timeout: seconds to wait for the server to accept connections.
        """
        self._settings: dict[str, str] = {**DEFAULT_SETTINGS, **(settings or {})}
        self._bin_dir = Path(bin_dir) if bin_dir is not None else None
        self._base_parent = Path(base_dir) if base_dir is not None else None
        self._user = user
        self._database = database
        self._startup_timeout = startup_timeout
        self._host = "127.0.0.1"
        self._port: int | None = None
        self._base: Path | None = None
        self._running = False
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._run_as: pwd.struct_passwd | None = None
        self._started_once = False

    # ------------------------------------------------------------------ properties

    @property
    def host(self) -> str:
        """The loopback address the server listens on."""
        return self._host

    @property
    def port(self) -> int:
        """The TCP port; fixed at the first :meth:`start` and kept across restarts."""
        if self._port is None:
            raise RuntimeError("the server has not been started yet")
        return self._port

    @property
    def user(self) -> str:
        """The database superuser name."""
        return self._user

    @property
    def database(self) -> str:
        """The database name used in :attr:`dsn`."""
        return self._database

    @property
    def dsn(self) -> str:
        """A ``postgresql://`` DSN for the server (valid across stop/start)."""
        return f"postgresql://{self._user}@{self._host}:{self.port}/{self._database}"

    @property
    def base_dir(self) -> Path:
        """The temporary directory holding the data directory, socket dir and log."""
        if self._base is None:
            raise RuntimeError("the server has not been started yet")
        return self._base

    @property
    def data_dir(self) -> Path:
        """The cluster's data directory."""
        return self.base_dir / "data"

    @property
    def socket_dir(self) -> Path:
        """The directory holding the server's Unix-domain socket."""
        return self.base_dir / "sock"

    @property
    def log_file(self) -> Path:
        """The server log file."""
        return self.base_dir / "postgres.log"

    @property
    def settings(self) -> Mapping[str, str]:
        """The ``-c`` settings the server is started with."""
        return dict(self._settings)

    @property
    def is_running(self) -> bool:
        """Whether the server is running (as far as ``pg_ctl status`` knows)."""
        if not self._running or self._base is None:
            return False
        result = self._pg_ctl("status", check=False)
        if result.returncode != 0:
            self._running = False
        return self._running

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the server, creating the cluster first if needed.

        The first call runs ``initdb`` and picks a free port; later calls (after
        :meth:`stop` or :meth:`kill`) reuse the same data directory and port. Returns
        once the server accepts TCP connections. Does nothing if it is already running.
        """
        if self.is_running:
            return
        if self._base is None:
            self._create_cluster()
        assert self._port is not None
        attempts = 1 if self._started_once else 3
        for attempt in range(attempts):
            try:
                self._pg_ctl_start()
                break
            except PostgresNotFoundError:
                if attempt == attempts - 1 or not port_accepts(self._host, self._port):
                    raise
                # Someone else took the port between picking and binding it: pick anew.
                self._port = free_port(self._host)
        self._started_once = True
        self._running = True
        self._wait_accepting()

    def stop(self, mode: Literal["smart", "fast", "immediate"] = "fast") -> None:
        """Stop the server; the data directory and port are kept for a later :meth:`start`.

        Args:
            mode: ``pg_ctl`` shutdown mode. ``"fast"`` (the default) terminates client
                sessions with an admin-shutdown error; ``"immediate"`` simulates a
                crash (crash recovery runs at the next start); ``"smart"`` waits for
                clients to disconnect.
        """
        if self._base is None or not (self.data_dir / "postmaster.pid").exists():
            self._running = False
            return
        result = self._pg_ctl("stop", "-m", mode, "-t", str(int(self._startup_timeout)))
        if result.returncode != 0 and self._pg_ctl("status", check=False).returncode == 0:
            raise RuntimeError(f"pg_ctl stop failed:\n{self._describe(result)}")
        self._running = False

    def kill(self) -> None:
        """Crash the server: an immediate-mode shutdown (no checkpoint, clients cut)."""
        self.stop(mode="immediate")

    def crash(self) -> None:
        """Alias of :meth:`kill`."""
        self.kill()

    def restart(self, mode: Literal["smart", "fast", "immediate"] = "fast") -> None:
        """Stop (with ``mode``) and start again on the same port and data directory."""
        self.stop(mode=mode)
        self.start()

    def close(self, mode: Literal["smart", "fast", "immediate"] = "fast") -> None:
        """Stop the server if running and remove its temporary directory.

        Safe to call more than once. The server cannot be started again afterwards
        (a later :meth:`start` creates a brand new cluster on a new port).
        """
        try:
            try:
                self.stop(mode=mode)
            except Exception:
                self.stop(mode="immediate")
        finally:
            self._stop_watchdog()
            if self._base is not None:
                shutil.rmtree(self._base, ignore_errors=True)
            self._base = None
            self._port = None
            self._started_once = False
            self._running = False
            _live_servers.discard(self)

    def execute_sync(self, sql: str) -> str:
        """Run ``sql`` on a fresh connection from synchronous code; return the status.

        Runs asyncpg in a private event loop on a helper thread, so it can be called
        from inside a running event loop too (it blocks that loop while it runs).
        """
        return str(query_sync(self.dsn, sql, timeout=self._startup_timeout))

    def __enter__(self) -> PostgresServer:
        try:
            self.start()
        except BaseException:
            self.close(mode="immediate")
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
        state = "running" if self._running else "stopped"
        return f"<PostgresServer 127.0.0.1:{port} {state}>"

    # ------------------------------------------------------------------ internals

    def _resolve_bin(self) -> Path:
        if self._bin_dir is None:
            found = find_pg_bin()
            if found is None:
                raise PostgresNotFoundError(
                    "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found on PATH "
                    f"or in /usr/lib/postgresql/*/bin; set {_ENV_PG_BIN} or install the "
                    "server (Debian: apt-get install postgresql)"
                )
            self._bin_dir = found
        return self._bin_dir

    def _resolve_run_as(self) -> pwd.struct_passwd | None:
        if os.geteuid() != 0:
            return None
        for name in ("postgres", "nobody"):
            try:
                return pwd.getpwnam(name)
            except KeyError:
                continue
        raise PostgresNotFoundError(
            "running as root, but there is no 'postgres' (or 'nobody') system user to "
            "run the PostgreSQL server as"
        )

    def _run(self, args: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        kwargs: dict[str, Any] = {}
        env = dict(os.environ)
        for var in ("PGDATA", "PGPORT", "PGHOST", "PGUSER", "PGDATABASE", "PGOPTIONS"):
            env.pop(var, None)
        env["LC_ALL"] = "C"
        if self._run_as is not None:
            kwargs["user"] = self._run_as.pw_uid
            kwargs["group"] = self._run_as.pw_gid
            kwargs["extra_groups"] = []
            env["HOME"] = str(self.base_dir)
            env["USER"] = env["LOGNAME"] = self._run_as.pw_name
        result = subprocess.run(
            args,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=env,
            cwd=str(self.base_dir),
            timeout=self._startup_timeout + 30,
            check=False,
            **kwargs,
        )
        if check and result.returncode != 0:
            raise PostgresNotFoundError(f"command failed:\n{self._describe(result)}")
        return result

    def _pg_ctl(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        pg_ctl = str(self._resolve_bin() / "pg_ctl")
        return self._run([pg_ctl, "-D", str(self.data_dir), *args], check=check)

    def _create_cluster(self) -> None:
        bin_dir = self._resolve_bin()
        self._run_as = self._resolve_run_as()
        parent = self._base_parent
        if parent is None and self._run_as is not None:
            parent = Path(tempfile.gettempdir())
        base = Path(tempfile.mkdtemp(prefix="asyncpool-pg-", dir=parent))
        self._base = base
        _live_servers.add(self)
        try:
            (base / "sock").mkdir()
            if self._run_as is not None:
                for path in (base, base / "sock"):
                    os.chown(path, self._run_as.pw_uid, self._run_as.pw_gid)
            self._start_watchdog()
            self._run(
                [
                    str(bin_dir / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-A",
                    "trust",
                    "-U",
                    self._user,
                    "-E",
                    "UTF8",
                    "--no-locale",
                    "--no-sync",
                ]
            )
            self._port = free_port(self._host)
        except BaseException:
            self._stop_watchdog()
            shutil.rmtree(base, ignore_errors=True)
            self._base = None
            _live_servers.discard(self)
            raise

    def _server_options(self) -> str:
        # pg_ctl hands this string to the shell: quote every word.
        parts = [
            f"-p {self.port}",
            f"-k {shlex.quote(str(self.socket_dir))}",
            f"-c listen_addresses={self._host}",
        ]
        parts.extend(
            f"-c {shlex.quote(f'{name}={value}')}" for name, value in self._settings.items()
        )
        return " ".join(parts)

    def _pg_ctl_start(self) -> None:
        result = self._pg_ctl(
            "-w",
            "-t",
            str(int(self._startup_timeout)),
            "-l",
            str(self.log_file),
            "-o",
            self._server_options(),
            "start",
        )
        if result.returncode != 0:
            # pg_ctl may have given up while the postmaster is still coming up: stop it.
            self._pg_ctl("stop", "-m", "immediate")
            raise PostgresNotFoundError(
                f"pg_ctl start failed:\n{self._describe(result)}\n{self._log_tail()}"
            )

    def _wait_accepting(self) -> None:
        deadline = time.monotonic() + self._startup_timeout
        while not port_accepts(self._host, self.port):
            if time.monotonic() > deadline:
                raise PostgresNotFoundError(
                    f"server on port {self.port} does not accept connections\n{self._log_tail()}"
                )
            time.sleep(0.05)

    def _log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return "(no server log)"
        return "server log (tail):\n" + "\n".join(text.splitlines()[-lines:])

    @staticmethod
    def _describe(result: subprocess.CompletedProcess[str]) -> str:
        args = result.args if isinstance(result.args, list) else [str(result.args)]
        return (
            f"$ {' '.join(str(a) for a in args)}\nexit code {result.returncode}\n"
            f"{result.stdout}{result.stderr}"
        )

    def _start_watchdog(self) -> None:
        if self._watchdog is not None or self._base is None:
            return
        sh = shutil.which("sh")
        if sh is None:  # pragma: no cover - every POSIX system has sh
            return
        self._watchdog = subprocess.Popen(
            [
                sh,
                "-c",
                _WATCHDOG_SCRIPT,
                "asyncpool-pg-watchdog",
                str(os.getpid()),
                str(self._base / "data"),
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


# --------------------------------------------------------------------------- discovery


def _host_port_from_dsn(dsn: str) -> tuple[str | None, int | None]:
    parts = urlsplit(dsn)
    query = parse_qs(parts.query)
    host: str | None = parts.hostname or next(iter(query.get("host", [])), None)
    port: int | None
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is None and query.get("port"):
        with contextlib.suppress(ValueError):
            port = int(query["port"][0])
    return host, port


@dataclass
class PostgresInstance:
    """A PostgreSQL server for tests, as found by :func:`find_postgres`.

    Attributes:
        kind: ``"dsn"`` (given by ``ASYNCPOOL_TEST_DSN``), ``"local"`` (a
            :class:`PostgresServer` from local binaries) or ``"container"`` (a
            testcontainers PostgreSQL container).
        dsn: a ``postgresql://`` DSN for a superuser.
        server: the :class:`PostgresServer` when ``kind == "local"``, else ``None``.
        container: the testcontainers container object when ``kind == "container"``.
    """

    kind: PostgresKind
    dsn: str
    server: PostgresServer | None = None
    container: Any = None

    @property
    def controllable(self) -> bool:
        """Whether tests can stop, crash and restart the server (only ``kind == "local"``)."""
        return self.server is not None

    @property
    def host(self) -> str | None:
        """Host part of :attr:`dsn` (``None`` if the DSN names none)."""
        return _host_port_from_dsn(self.dsn)[0]

    @property
    def port(self) -> int | None:
        """Port part of :attr:`dsn` (``None`` if the DSN names none)."""
        return _host_port_from_dsn(self.dsn)[1]

    def close(self) -> None:
        """Stop and clean up the server or container if this object started it."""
        if self.server is not None:
            self.server.close()
        if self.container is not None:
            container, self.container = self.container, None
            container.stop()

    def __enter__(self) -> PostgresInstance:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _docker_available(timeout: float = 3.0) -> bool:
    """Quickly check whether a Docker engine answers, without hanging."""
    docker_host = os.environ.get("DOCKER_HOST", "")
    if not docker_host:
        candidates = [Path("/var/run/docker.sock"), Path.home() / ".docker/run/docker.sock"]
        runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
        if runtime_dir:
            candidates.append(Path(runtime_dir) / "docker.sock")
        if not any(p.exists() for p in candidates):
            return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            docker: Any = importlib.import_module("docker")
            client = docker.from_env(timeout=int(max(1.0, timeout)))
            try:
                return bool(client.ping())
            finally:
                client.close()
    except Exception:
        return False


def _start_container(image: str) -> PostgresInstance:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            from testcontainers.community.postgres import PostgresContainer
        except ImportError:
            from testcontainers.postgres import PostgresContainer
    container = PostgresContainer(image, driver=None)
    container.start()
    try:
        dsn = str(container.get_connection_url(driver=None))
    except BaseException:
        container.stop()
        raise
    return PostgresInstance(kind="container", dsn=dsn, container=container)


def find_postgres(
    *,
    settings: Mapping[str, str] | None = None,
    allow_container: bool = True,
) -> PostgresInstance:
    """Find or start a PostgreSQL server for tests.

    Tried in order:

    1. ``ASYNCPOOL_TEST_DSN``: used as is; the server is not controllable.
    2. Local server binaries (see :func:`find_pg_bin`): a fresh :class:`PostgresServer`
       is started; it is controllable (stop, crash, restart).
    3. A Docker engine that answers: a testcontainers PostgreSQL container
       (image from ``ASYNCPOOL_TEST_PG_IMAGE``, default ``postgres:16-alpine``).

    The caller owns the result and must :meth:`~PostgresInstance.close` it (or use it
    as a context manager).

    Args:
        settings: extra server settings for a local :class:`PostgresServer`.
        allow_container: set to ``False`` to never try Docker.

    Raises:
        PostgresNotFoundError: if none of the three options is available.
    """
    dsn = os.environ.get(_ENV_TEST_DSN)
    if dsn:
        return PostgresInstance(kind="dsn", dsn=dsn)
    if find_pg_bin() is not None:
        server = PostgresServer(settings=settings)
        try:
            server.start()
        except BaseException:
            server.close(mode="immediate")
            raise
        return PostgresInstance(kind="local", dsn=server.dsn, server=server)
    if allow_container and _docker_available():
        return _start_container(os.environ.get(_ENV_PG_IMAGE, _DEFAULT_IMAGE))
    raise PostgresNotFoundError(
        "No PostgreSQL server available for the tests. Either:\n"
        f"  1. set {_ENV_TEST_DSN}=postgresql://user@host:port/db to use a running server "
        "(tests that stop or restart the server are then skipped);\n"
        "  2. install the PostgreSQL server binaries (Debian/Ubuntu: "
        "apt-get install postgresql; or point "
        f"{_ENV_PG_BIN} at a directory with initdb/pg_ctl/postgres); or\n"
        "  3. run a Docker engine so that testcontainers can start a postgres container."
    )
