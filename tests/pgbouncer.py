"""Throwaway PgBouncers in front of the test's PostgreSQL, for tests/integration/test_pgbouncer.py.

Two versions, both from Debian packages:

- ``pgb118``: 1.18 from Debian bookworm, the host's ``apt-get install pgbouncer``;
- ``pgb124``: 1.24 from Debian trixie, installed into PostgreSQL 17's root
  (``/var/cache/hiw-monitor/roots/trixie``, by scripts/test.sh) and run through ``chroot``
  in a private mount namespace as that root's ``postgres`` user, exactly like the
  PostgreSQL 17 wrappers of ``hiw_monitor/demo/chroot.py`` (the same runner script).

Each listens on 127.0.0.1 on a free port (no Unix socket), runs in the foreground as an
unprivileged user (PgBouncer refuses root) so that its PID is the process started here,
in transaction mode, with an ``auth_file`` of SCRAM and md5 secrets (never a plain
password) and three users: an admin for the tests' own console connection, the agent's
stats-only user, and a ``classroom`` user for the burst. Its databases point at the
PostgreSQL fixture as ``postgres`` (trust on 127.0.0.1, so PgBouncer needs no password
for the server side).

    with Bouncer.start("pgb118", upstream_port=pg.cluster.port) as bouncer:
        bouncer.admin()           # psycopg on the admin console (simple query protocol)
        bouncer.stop(); bouncer.start_again()

Under ``CI=true`` a missing PgBouncer fails the test instead of skipping it.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from hiw_monitor.demo import chroot
from hiw_monitor.demo.cluster import free_port, service_user

IN_CI = os.environ.get("CI", "").lower() == "true"
HOST_BINARY = Path("/usr/sbin/pgbouncer")
VERSIONS = ("pgb118", "pgb124")
ADMIN_USER, ADMIN_PASSWORD = "pgb_admin", "admin-test-pw"
MONITOR_USER, MONITOR_PASSWORD = "hiw_monitor", "pgb-monitor-test-pw"
CLASSROOM_USER, CLASSROOM_PASSWORD = "classroom", "classroom-test-pw"
DEFAULT_POOL_SIZE = 2
MAX_CLIENT_CONN = 100


def scram_secret(password: str, iterations: int = 4096) -> str:
    """A SCRAM-SHA-256 verifier as PostgreSQL stores it (and PgBouncer's auth_file takes)."""
    salt = secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    b64 = base64.b64encode
    return (f"SCRAM-SHA-256${iterations}:{b64(salt).decode()}"
            f"${b64(stored_key).decode()}:{b64(server_key).decode()}")


def md5_secret(user: str, password: str) -> str:
    return "md5" + hashlib.md5((password + user).encode()).hexdigest()


def _trixie_root() -> Path:
    return chroot.root_of(17)


def missing(version: str) -> str | None:
    """Why PgBouncer ``version`` cannot run here (None: it can)."""
    if version == "pgb118":
        if not HOST_BINARY.is_file():
            return "PgBouncer 1.18 missing: apt-get install pgbouncer (or bash scripts/test.sh)"
        return None
    if os.geteuid() != 0:
        return "PgBouncer 1.24 runs from the Debian trixie root through chroot: needs root"
    root = _trixie_root()
    if not (root / "usr/sbin/pgbouncer").is_file():
        return (f"PgBouncer 1.24 missing in {root}: run bash scripts/test.sh as root "
                "(it installs pgbouncer into the trixie root)")
    return chroot.missing(17)


def require(version: str) -> None:
    why = missing(version)
    if why is not None:
        if IN_CI:
            pytest.fail(why)
        pytest.skip(why)


class Bouncer:
    """One PgBouncer process; see the module docstring."""

    def __init__(self, version: str, databases: dict[str, str], pool_mode: str = "transaction",
                 default_pool_size: int = DEFAULT_POOL_SIZE) -> None:
        self.version = version
        self.port = free_port()
        self.base = Path(tempfile.mkdtemp(prefix=f"hiw-{version}-"))
        self.databases = databases
        self.pool_mode = pool_mode
        self.default_pool_size = default_pool_size
        self.process: subprocess.Popen[bytes] | None = None
        self.log = self.base / "pgbouncer.log"
        if version == "pgb124":
            root = _trixie_root()
            uid, gid = chroot._owner(root)
            wrapper = self.base / "pgbouncer"
            wrapper.write_text(chroot._runner_script(root, "/usr/sbin", uid, gid))
            wrapper.chmod(0o755)
            self.argv = [str(wrapper), "pgbouncer"]
            self.run_as: tuple[int, int] | None = None  # the wrapper switches user itself
        else:
            self.argv = [str(HOST_BINARY)]
            user = service_user()
            if user is None:
                self.run_as = None
                uid, gid = os.getuid(), os.getgid()
            else:
                entry = pwd.getpwnam(user)
                uid, gid = entry.pw_uid, entry.pw_gid
                self.run_as = (uid, gid)
        self.owner = (uid, gid)
        self._write_config()

    def _write_config(self) -> None:
        users = {
            ADMIN_USER: scram_secret(ADMIN_PASSWORD),
            MONITOR_USER: scram_secret(MONITOR_PASSWORD),
            CLASSROOM_USER: md5_secret(CLASSROOM_USER, CLASSROOM_PASSWORD),
        }
        (self.base / "userlist.txt").write_text(
            "".join(f'"{user}" "{secret}"\n' for user, secret in users.items()))
        databases = "".join(f"{name} = {spec}\n" for name, spec in self.databases.items())
        (self.base / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"{databases}"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            # md5 checks md5 secrets; a user with a SCRAM secret gets SCRAM instead
            "auth_type = md5\n"
            f"auth_file = {self.base / 'userlist.txt'}\n"
            f"admin_users = {ADMIN_USER}\n"
            f"stats_users = {MONITOR_USER}\n"
            f"pool_mode = {self.pool_mode}\n"
            f"default_pool_size = {self.default_pool_size}\n"
            f"max_client_conn = {MAX_CLIENT_CONN}\n"
            "server_login_retry = 1\n"
            "log_connections = 1\n"
            "log_disconnections = 1\n"
            "stats_period = 1\n")
        for path in [self.base, *self.base.iterdir()]:
            os.chown(path, *self.owner)
        self.base.chmod(0o700)

    # --- life cycle ---------------------------------------------------------------------

    @classmethod
    @contextlib.contextmanager
    def start(cls, version: str, upstream_port: int, dbname: str = "heroes_in_waiting",
              **kwargs: Any) -> Iterator[Bouncer]:
        require(version)
        spec = f"host=127.0.0.1 port={upstream_port} dbname={dbname} user=postgres"
        bouncer = cls(version, {"hiw": spec}, **kwargs)
        try:
            bouncer.start_again()
            yield bouncer
        finally:
            bouncer.destroy()

    def start_again(self, timeout: float = 60) -> None:
        """Start the process (first start or restart on the same port) and wait until its
        admin console answers; ``timeout`` is a hang guard."""
        assert self.process is None or self.process.poll() is not None
        with self.log.open("ab") as out:
            kwargs: dict[str, Any] = {}
            if self.run_as is not None:
                kwargs = {"user": self.run_as[0], "group": self.run_as[1], "extra_groups": []}
            self.process = subprocess.Popen(
                [*self.argv, str(self.base / "pgbouncer.ini")], stdout=out,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.base, **kwargs)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"pgbouncer exited with {self.process.returncode}:\n"
                                   f"{self.log_tail()}")
            try:
                with self.admin(connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def stop(self, timeout: float = 60) -> None:
        """Immediate shutdown (SIGTERM before 1.23, SIGQUIT since: 1.23 made SIGTERM wait
        for every client); SIGKILL if it is still there after ``timeout``."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGQUIT if self.version == "pgb124" else signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(30)

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    # --- connecting ---------------------------------------------------------------------

    def dsn(self, dbname: str = "pgbouncer", user: str = MONITOR_USER) -> str:
        return f"host=127.0.0.1 port={self.port} dbname={dbname} user={user}"

    @property
    def pid(self) -> int:
        """PgBouncer's own PID (the chroot wrapper execs all the way to it)."""
        assert self.process is not None
        return self.process.pid

    def admin(self, **kwargs: Any) -> psycopg.Connection[Any]:
        """The tests' own admin console connection: autocommit, client-side binding (the
        console speaks only the simple query protocol), no startup options (not even a
        PGOPTIONS a test sets for the agent)."""
        return psycopg.connect(self.dsn(user=ADMIN_USER), password=ADMIN_PASSWORD,
                               autocommit=True, prepare_threshold=None, options="",
                               cursor_factory=psycopg.ClientCursor, **kwargs)

    def client(self, dbname: str = "hiw", **kwargs: Any) -> psycopg.Connection[Any]:
        """An application connection through the pool, as the classroom user."""
        return psycopg.connect(self.dsn(dbname, CLASSROOM_USER), password=CLASSROOM_PASSWORD,
                               autocommit=True, options="", prepare_threshold=None, **kwargs)

    def pgbench(self, bindir: Path, *args: str) -> subprocess.Popen[bytes]:
        """pgbench through the pool as the classroom user (``-n``: no pgbench tables);
        started, not waited for. ``args`` must bound it (``-t``), never by time."""
        env = {**os.environ, "PGPASSWORD": CLASSROOM_PASSWORD, "PGOPTIONS": ""}
        out = (self.base / "pgbench.log").open("ab")
        return subprocess.Popen(
            [str(bindir / "pgbench"), "-n", "-h", "127.0.0.1", "-p", str(self.port),
             "-U", CLASSROOM_USER, *args, "hiw"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)

    def show(self, what: str) -> list[dict[str, Any]]:
        with self.admin() as conn, conn.cursor(row_factory=dict_row) as cur:
            cur.execute(f"SHOW {what}")
            return list(cur.fetchall())

    def agent_clients(self) -> int:
        """Console clients of the agent's user, from PgBouncer's own SHOW CLIENTS."""
        return sum(1 for row in self.show("CLIENTS")
                   if row["database"] == "pgbouncer" and row["user"] == MONITOR_USER)
