"""A throwaway PostgreSQL cluster for the tests, and the fixtures that share one.

Theory of operation. `PostgresCluster` lives in one fresh temporary directory owned by
the ``postgres`` system user (the tests run as root; PostgreSQL refuses to)::

    naas-pg-XXXX/            mode 0700, owner postgres
      data/                  initdb: superuser "postgres", role "naas" with a password
      sockets/.s.PGSQL.PORT  the unix socket: reachable from every network namespace
      server.log

``start`` runs ``initdb`` (once) and ``pg_ctl start`` as postgres, optionally inside a
lab namespace (``ip netns exec NS runuser -u postgres -- pg_ctl ...``: the postmaster
keeps the namespace of the pg_ctl that forked it, so `restart` runs there too). The
server listens on ``host:port`` over TCP with password authentication (what the PoPs
use) and on the unix socket with trust (what the tests' own connections use: a unix
socket path is not bound to a network namespace, so the test process reaches a server
inside a lab from the machine's namespace). It runs with ``fsync = off``: a test
cluster is never crash-safe, and it is fast. `close` always ends it: ``pg_ctl stop -m
immediate``, then SIGKILL to the postmaster's PID if it is still the same process (and
its System V segment removed), then the directory is removed (also at interpreter exit,
should a fixture never finish).

Fixtures: ``postgres_cluster`` (session scope: one cluster on 127.0.0.1 for the whole
run; skipped with the reason when not root or PostgreSQL is not installed) and
``postgres_url`` (a fresh database per test, ``CREATE DATABASE test_N``, dropped after).
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import itertools
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from naas.lab.netns import Namespace, process_start_time, same_process

SUPERUSER = "postgres"  # the system user that owns the cluster, and its superuser role
ROLE = "naas"  # the role the PoPs log in as (password authentication over TCP)
DATABASE = "naas"  # created at start, owned by ROLE
DRIVER = "postgresql+psycopg"  # SQLAlchemy dialect + psycopg 3
COMMAND_TIMEOUT = 60.0  # initdb, pg_ctl start/stop/restart
STOP_TIMEOUT = 10  # s pg_ctl waits for an immediate stop before we SIGKILL
SERVER_SETTINGS = {
    "fsync": "off",  # throwaway data: no flush to disk
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "32MB",
    "max_connections": "200",  # two PoPs' pools, the tests' stores, admin connections
    "log_min_messages": "warning",
}


def postgres_bindir() -> Path | None:
    """Where initdb, pg_ctl and postgres are: ``pg_config --bindir``, else the newest
    /usr/lib/postgresql/*/bin, else the directory of ``initdb`` on PATH."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            done = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10)
            if done.returncode == 0:
                candidates.append(Path(done.stdout.strip()))
    versions = [Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin")]
    candidates += sorted(versions, key=lambda p: _version_key(p.parent.name), reverse=True)
    initdb = shutil.which("initdb")
    if initdb is not None:
        candidates.append(Path(initdb).parent)
    for bindir in candidates:
        if all((bindir / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return bindir
    return None


def _version_key(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".") if part.isdigit())


def unavailable_reason() -> str | None:
    """Why no cluster can be made here, or None."""
    if os.geteuid() != 0:
        return "PostgreSQL tests need root (initdb runs as the postgres user)"
    try:
        pwd.getpwnam(SUPERUSER)
    except KeyError:
        return f"PostgreSQL tests need the {SUPERUSER!r} system user (apt-get install postgresql)"
    if shutil.which("runuser") is None:
        return "PostgreSQL tests need runuser (util-linux)"
    if postgres_bindir() is None:
        return "PostgreSQL is not installed (no initdb/pg_ctl/postgres; apt-get install postgresql)"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "the PostgreSQL driver psycopg is not installed (pip install 'psycopg[binary]')"
    return None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on now, in the calling thread's namespace."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


class PostgresCluster:
    """One throwaway cluster (see the module docstring); ``with`` starts and closes it.

    ``namespace``: run the server inside this lab namespace (``host`` must be one of its
    addresses); None: the calling process's namespace.
    """

    def __init__(
        self, *, host: str = "127.0.0.1", port: int | None = None, namespace: Namespace | None = None
    ) -> None:
        bindir = postgres_bindir()
        if bindir is None:
            raise RuntimeError("PostgreSQL is not installed")
        self.bindir = bindir
        self.host = host
        self.port = port if port is not None else (5432 if namespace is not None else free_port(host))
        self.namespace = namespace
        self.password = secrets.token_hex(12)
        self.directory = Path(tempfile.mkdtemp(prefix="naas-pg-"))
        self.data = self.directory / "data"
        self.sockets = self.directory / "sockets"
        self.log = self.directory / "server.log"
        self._postmaster: tuple[int, int | None] | None = None  # (pid, kernel start time)
        self._databases = itertools.count(1)
        self._closed = False
        atexit.register(self.close)
        postgres = pwd.getpwnam(SUPERUSER)
        self.sockets.mkdir()
        for path in (self.directory, self.sockets):
            os.chown(path, postgres.pw_uid, postgres.pw_gid)

    # -- URLs -------------------------------------------------------------------------------

    def url(self, database: str = DATABASE) -> str:
        """The SQLAlchemy URL over TCP, as role naas with its password (what a PoP uses)."""
        return f"{DRIVER}://{ROLE}:{self.password}@{self.host}:{self.port}/{database}"

    def socket_url(self, database: str = DATABASE) -> str:
        """The same database through the unix socket: usable from any network namespace."""
        return f"{DRIVER}://{ROLE}:{self.password}@/{database}?host={self.sockets}&port={self.port}"

    # -- life cycle -------------------------------------------------------------------------

    def start(self) -> PostgresCluster:
        """initdb (the first time), then start the server and wait until it accepts."""
        if self._closed:
            raise RuntimeError("this cluster was closed")
        try:
            if not (self.data / "PG_VERSION").exists():
                self._initdb()
            self._pg_ctl("start", "-l", str(self.log))
            self._postmaster = self._read_postmaster()
            if not self._has_role():
                self._create_role_and_database()
        except BaseException:
            self.close()
            raise
        return self

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m MODE`` (smart, fast or immediate)."""
        self._pg_ctl("stop", "-m", mode)
        self._postmaster = None

    def restart(self) -> None:
        """``pg_ctl restart -m fast``: every connection is cut, the data stays."""
        self._pg_ctl("restart", "-m", "fast", "-l", str(self.log))
        self._postmaster = self._read_postmaster()

    def close(self) -> None:
        """Stop the server whatever its state, and remove its directory. Idempotent."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        try:
            if (self.data / "postmaster.pid").exists():
                with contextlib.suppress(subprocess.SubprocessError, OSError):
                    self._pg_ctl("stop", "-m", "immediate", check=False)
            recorded = self._read_postmaster() or self._postmaster
            if recorded is not None and _same_process(*recorded):
                shmid = self._shared_memory_id()
                with contextlib.suppress(ProcessLookupError):
                    os.kill(recorded[0], signal.SIGKILL)
                deadline = time.monotonic() + STOP_TIMEOUT
                while _same_process(*recorded) and time.monotonic() < deadline:
                    time.sleep(0.05)
                if shmid is not None:  # a killed postmaster leaves its System V segment
                    with contextlib.suppress(OSError, subprocess.SubprocessError):
                        subprocess.run(["ipcrm", "-m", shmid], capture_output=True, timeout=10)
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> PostgresCluster:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- databases --------------------------------------------------------------------------

    def create_database(self, name: str) -> str:
        """A new empty database owned by naas; returns its TCP URL."""
        self._admin(f'CREATE DATABASE "{name}" OWNER {ROLE}')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop ``name``, cutting whatever connections still use it."""
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    @contextlib.contextmanager
    def fresh_database(self) -> Iterator[str]:
        """``test_N``, new for the block and dropped after; yields its URL."""
        name = f"test_{next(self._databases)}"
        url = self.create_database(name)
        try:
            yield url
        finally:
            self.drop_database(name)

    # -- helpers ----------------------------------------------------------------------------

    def _as_postgres(self, command: list[str]) -> list[str]:
        argv = ["runuser", "-u", SUPERUSER, "--", *command]
        return self.namespace.argv(argv) if self.namespace is not None else argv

    def _run(self, command: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            self._as_postgres(command),
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            cwd=self.directory,  # postgres may not be allowed into the caller's directory
            stdin=subprocess.DEVNULL,
        )
        if check and done.returncode != 0:
            tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(
                f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()}\n{tail}"
            )
        return done

    def _pg_ctl(self, action: str, *options: str, check: bool = True) -> None:
        timeout = str(STOP_TIMEOUT if action == "stop" else int(COMMAND_TIMEOUT))
        pg_ctl = str(self.bindir / "pg_ctl")
        self._run([pg_ctl, action, "-D", str(self.data), "-w", "-t", timeout, *options], check=check)

    def _initdb(self) -> None:
        self._run(
            [
                str(self.bindir / "initdb"),
                "-D",
                str(self.data),
                "-U",
                SUPERUSER,
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
            ]
        )
        settings = {
            **SERVER_SETTINGS,
            "listen_addresses": f"'{self.host}'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.sockets}'",
        }
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write("\n# tests/pg.py\n" + "".join(f"{key} = {value}\n" for key, value in settings.items()))
        (self.data / "pg_hba.conf").write_text(
            "# tests/pg.py: trust on the unix socket, passwords over TCP\n"
            "local all all trust\n"
            "host all all 0.0.0.0/0 scram-sha-256\n"
            "host all all ::/0 scram-sha-256\n"
        )

    def _admin(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """Run one statement as the superuser over the unix socket (autocommit)."""
        import psycopg

        with psycopg.connect(
            host=str(self.sockets), port=self.port, user=SUPERUSER, dbname="postgres", autocommit=True
        ) as conn:
            cursor = conn.execute(sql, params or None)
            return cursor.fetchall() if cursor.description is not None else []

    def _has_role(self) -> bool:
        return bool(self._admin("SELECT 1 FROM pg_roles WHERE rolname = %s", ROLE))

    def _create_role_and_database(self) -> None:
        self._admin(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{self.password}'")
        self._admin(f"CREATE DATABASE {DATABASE} OWNER {ROLE}")

    def _shared_memory_id(self) -> str | None:
        """The System V segment id of postmaster.pid (line 7: key, id), if any."""
        try:
            lines = (self.data / "postmaster.pid").read_text().splitlines()
        except OSError:
            return None
        words = lines[6].split() if len(lines) > 6 else []
        return words[1] if len(words) == 2 and words[1].isdigit() else None

    def _read_postmaster(self) -> tuple[int, int | None] | None:
        """(pid, start time) of the postmaster from postmaster.pid, if the file is there."""
        try:
            pid = int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None
        return pid, process_start_time(pid)


def _same_process(pid: int, start: int | None) -> bool:
    """``pid`` is still the process that started at ``start``, and not a zombie."""
    if not same_process(pid, start):
        return False
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] not in ("Z", "X")
    return False


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """One cluster on 127.0.0.1 for the whole run (skipped, with the reason, if impossible)."""
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    with PostgresCluster() as cluster:
        yield cluster


@pytest.fixture
def postgres_url(postgres_cluster: PostgresCluster) -> Iterator[str]:
    """A fresh, empty database of the session's cluster, dropped after the test."""
    with postgres_cluster.fresh_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A PoP store's URL, once per backend: a SQLite file, or a fresh database of the
    session's PostgreSQL cluster (the store tests run on both)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state' / 'pop.db'}"
    postgres_url: str = request.getfixturevalue("postgres_url")
    return postgres_url
