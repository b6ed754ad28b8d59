"""A watched database: one dedicated connection and all of its policy.

Every safety setting lives here: autocommit, ``application_name=hiw_monitor``,
``connect_timeout``, ``statement_timeout``, ``lock_timeout`` and read-only transactions,
TCP keepalives, a client-side deadline on every round trip to the server, reconnect
with exponential backoff and full jitter, and a lock so that the collectors of one
target take turns on its connection.

A ``pgbouncer`` target is PgBouncer's admin console, which accepts none of that policy:
it refuses startup parameters it does not know (``options``, so no statement_timeout),
has no transactions, no SET and no SELECT, and speaks only the simple query protocol. Its
connection (autocommit, no ``options``, a client-side binding cursor that never prepares,
:class:`_ConsoleCursor`) keeps the rest: ``application_name``, ``connect_timeout``, TCP
keepalives, the client-side deadline on every round trip (the only bound on a console
command), reconnect with backoff, one connection per target.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Self

import psycopg
import structlog
from psycopg import errors as pgerrors
from psycopg import sql
from psycopg.abc import Params, PQGen, Query
from psycopg.rows import dict_row

from hiw_monitor.collectors.base import ServerInfo, SQLText
from hiw_monitor.config import PGBOUNCER, ConnectionSettings, TargetConfig, redact
from hiw_monitor.errors import Reason, TargetUnavailable, classify

APPLICATION_NAME = "hiw_monitor"
# statement_timeout is enforced by the server; if the network stalls (packets dropped,
# a proxy that stops forwarding without closing), no answer ever comes and TCP keepalives
# see nothing wrong. So every round trip to the server (each statement, BEGIN, COMMIT,
# savepoint) also has a client-side deadline: the statement timeout plus this grace,
# after which the socket is shut down and the target marked down. The deadline is per
# statement, not per collection: a collection may run many statements (bloat's exact
# mode measures table after table within its own budget).
CLIENT_GRACE = 5.0
log = structlog.get_logger("hiw_monitor.target")

_SERVER_INFO_SQL = """
SELECT current_setting('server_version_num')::int AS version_num,
       current_setting('server_version') AS version,
       pg_catalog.pg_is_in_recovery() AS in_recovery,
       pg_catalog.current_database() AS database,
       coalesce((SELECT pg_catalog.json_object_agg(extname, extversion)
                 FROM pg_catalog.pg_extension), '{}') AS extensions
"""


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


# The statement collect.py opens every collection with (the database's clock, for the
# transform's Context.now). PgBouncer's console has no SELECT and no clock to read: a
# console cursor answers it from the agent's clock.
_CLOCK_SQL = ("SELECT extract(epoch FROM pg_catalog.now())::float8 AS now, "
              "pg_catalog.pg_is_in_recovery() AS in_recovery")
# What PgBouncer answers in server_version (ParameterStatus): "1.18.0/bouncer".
_BOUNCER_SUFFIX = "/bouncer"


def _words(query: Query, cur: psycopg.Cursor[Any]) -> str:
    if isinstance(query, bytes):
        text = query.decode()
    elif isinstance(query, sql.Composable):
        text = query.as_string(cur)
    else:
        text = str(query)
    return " ".join(text.split())


class _ConsoleCursor(psycopg.ClientCursor[dict[str, Any]]):
    """A cursor on PgBouncer's admin console: SHOW commands only, sent with the simple
    query protocol (a client-side binding cursor never prepares, and the console answers
    the extended protocol with "extended query protocol not supported by admin console";
    a plain psycopg cursor switches to it on the 5th run of the same statement).

    Anything that is not a SHOW (SELECT, SET, parameters) is refused here, with the
    reason, before it reaches the console."""

    def execute(self, query: Query, params: Params | None = None, *,
                prepare: bool | None = None, binary: bool | None = None) -> Self:
        words = _words(query, self)
        if params is not None:
            raise psycopg.ProgrammingError("PgBouncer's admin console takes no query parameters")
        if words.split(" ", 1)[0].upper() != "SHOW":
            raise psycopg.ProgrammingError(
                f"PgBouncer's admin console runs only SHOW commands, not {words[:40]!r}")
        return super().execute(query, prepare=False, binary=False)


def _bouncer_version(text: str) -> tuple[str, int]:
    """("1.18.0", 11800) from SHOW VERSION's "PgBouncer 1.18.0" (or "1.24.1/bouncer").

    >>> _bouncer_version("PgBouncer 1.24.1"), _bouncer_version("1.18.0/bouncer")
    (('1.24.1', 12401), ('1.18.0', 11800))
    >>> _bouncer_version("PgBouncer 1.9")
    ('1.9', 10900)
    """
    word = text.split()[-1].removesuffix(_BOUNCER_SUFFIX) if text.split() else ""
    parts = [int(p) if p.isdigit() else 0 for p in word.split(".")[:3]] + [0, 0, 0]
    return word, parts[0] * 10000 + parts[1] * 100 + parts[2]


# Connection failures of a pgbouncer target, told apart by PgBouncer's FATAL text (it
# sends no SQLSTATE while connecting), with the fix on PgBouncer's side.
_CONSOLE_HINTS: tuple[tuple[str, str, str], ...] = (
    ("authentication failed", "auth_failed",
     "check the password (password_env / password_file) and the user's secret in "
     "PgBouncer's auth_file (or its auth_query)"),
    ("not allowed", "permission_denied",
     "list the user in stats_users (read-only SHOW commands) in pgbouncer.ini and reload "
     "PgBouncer"),
    ("no such database", "unknown_database",
     "the admin console is the database pgbouncer: is this PgBouncer?"),
    ("unsupported startup parameter", "connection",
     "PgBouncer refuses startup parameters it does not know: unset PGOPTIONS and the like "
     "in the agent's environment, or add them to ignore_startup_parameters"),
)
# A PostgreSQL target whose connection fails like this is probably pointed at PgBouncer.
_THROUGH_PGBOUNCER = (
    "unsupported startup parameter",
    "the agent sets statement_timeout through the startup options, which PgBouncer "
    "refuses: watch PostgreSQL directly, and PgBouncer itself as a target with "
    "type: pgbouncer")


class _Deadlines:
    """The client-side deadlines of every target, served by one daemon thread for the
    whole agent (a fleet of 200 targets does not need 200 threads): a deadline that
    passes while armed runs its ``expire`` in that thread. Started on first use."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        # watchdog -> (deadline, connection, seconds) while armed
        self._armed: dict[_Watchdog, tuple[float, psycopg.Connection[Any], float]] = {}
        self._thread: threading.Thread | None = None

    def arm(self, owner: _Watchdog, conn: psycopg.Connection[Any], seconds: float) -> None:
        with self._cond:
            self._armed[owner] = (time.monotonic() + seconds, conn, seconds)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="hiw-watchdog",
                                                daemon=True)
                self._thread.start()
            self._cond.notify()

    def disarm(self, owner: _Watchdog) -> None:
        with self._cond:
            self._armed.pop(owner, None)

    def _run(self) -> None:
        while True:
            with self._cond:
                now = time.monotonic()
                due = [(owner, conn, seconds) for owner, (at, conn, seconds)
                       in self._armed.items() if at <= now]
                for owner, _, _ in due:
                    del self._armed[owner]
                if not due:
                    soonest = min((at for at, _, _ in self._armed.values()), default=None)
                    self._cond.wait(None if soonest is None else soonest - now)
                    continue
            for owner, conn, seconds in due:  # outside the lock: others keep arming
                try:
                    owner.expire(conn, seconds)
                except Exception:  # a bug here must not end every target's deadlines
                    log.exception("watchdog_bug", target=owner.name)


_DEADLINES = _Deadlines()


class _Watchdog:
    """A target's re-armable client-side deadline (served by :data:`_DEADLINES`).

    ``arm(conn, seconds)`` before a round trip, ``disarm()`` after it; when a deadline
    passes while armed, ``expire(conn, seconds)`` runs in the watchdog thread.
    """

    def __init__(self, name: str, expire: Callable[[psycopg.Connection[Any], float], None]
                 ) -> None:
        self.name = name
        self.expire = expire

    def arm(self, conn: psycopg.Connection[Any], seconds: float) -> None:
        _DEADLINES.arm(self, conn, seconds)

    def disarm(self) -> None:
        _DEADLINES.disarm(self)

    def close(self) -> None:
        _DEADLINES.disarm(self)


class _WatchedConnection(psycopg.Connection[dict[str, Any]]):
    """A connection whose every round trip to the server is bounded by a client-side
    deadline: psycopg runs each statement, BEGIN, COMMIT and savepoint of a connection
    through ``Connection.wait()``, so this is where a deadline is armed per statement
    (tests/integration/test_faults_more.py checks that it is)."""

    watchdog: _Watchdog | None = None
    deadline: float | None = None  # seconds per round trip; None: no client deadline

    def wait(self, gen: PQGen[Any], *args: Any, **kwargs: Any) -> Any:
        watchdog, deadline = self.watchdog, self.deadline
        if watchdog is None or deadline is None:
            return super().wait(gen, *args, **kwargs)
        watchdog.arm(self, deadline)
        try:
            return super().wait(gen, *args, **kwargs)
        finally:
            watchdog.disarm()


class Target:
    """One database, one connection, one lock. Thread-safe."""

    def __init__(self, config: TargetConfig, settings: ConnectionSettings) -> None:
        self.config = config
        self.settings = settings
        self.name = config.name
        self.kind = config.kind  # postgresql, or pgbouncer: PgBouncer's admin console
        self.redacted = redact(config.conninfo)
        self.server: ServerInfo | None = None
        self.up = False
        self.last_error: Reason | None = None
        self.lock = threading.Lock()
        self._conn: psycopg.Connection[dict[str, Any]] | None = None
        self._failures = 0
        self._next_attempt = 0.0
        self._state_lock = threading.Lock()  # guards _conn for cancel() from other threads
        self._aborted: psycopg.Connection[Any] | None = None  # the last watchdog victim
        self._aborted_after = 0.0  # ... and the deadline it missed, in seconds
        self._watchdog = _Watchdog(self.name, self._abort)
        # Bumped at every successful connect: plans made on an older connection are redone.
        self.generation = 0
        # collector name -> its plan for this connection (collect.py fills and reads it)
        self.plans: dict[str, Any] = {}
        # datname -> the target of another database of this instance, for per-database
        # collectors (hiw_monitor/databases.py): the same policy, its own connection,
        # opened only while that database is collected
        self.databases: dict[str, Target] = {}

    def database(self, datname: str) -> Target:
        """The target of database ``datname`` of this instance (same name, settings,
        password, connection policy; its own connection and backoff), made once."""
        known = self.databases.get(datname)
        if known is None:
            known = Target(self.config.for_database(datname), self.settings)
            self.databases[datname] = known
        return known

    def connections_open(self) -> int:
        """How many connections to this instance the agent holds now: its own and those
        of its databases' targets (for tests and the benchmark)."""
        conn = self._conn
        own = 1 if conn is not None and not conn.closed else 0
        return own + sum(other.connections_open() for other in list(self.databases.values()))

    def forget_databases(self, keep: Iterable[str]) -> None:
        """Close and drop the targets of databases not in ``keep`` (dropped, excluded)."""
        wanted = set(keep)
        for datname in [d for d in self.databases if d not in wanted]:
            self.databases.pop(datname).close()

    # --- connecting ---------------------------------------------------------------------

    def _connect(self) -> _WatchedConnection:
        if self.kind == PGBOUNCER:
            return self._connect_console()
        s = self.settings
        options = (
            f"-c statement_timeout={_ms(s.statement_timeout)} "
            f"-c lock_timeout={_ms(s.lock_timeout)} "
            "-c default_transaction_read_only=on "
            "-c idle_in_transaction_session_timeout=60000"
        )
        kwargs: dict[str, Any] = {
            "autocommit": True,
            "application_name": APPLICATION_NAME,
            "connect_timeout": max(1, round(s.connect_timeout)),
            "options": options,
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
            "row_factory": dict_row,
        }
        password = self.config.resolve_password()
        if password is not None:
            kwargs["password"] = password
        conn = _WatchedConnection.connect(self.config.conninfo, **kwargs)
        conn.watchdog = self._watchdog
        conn.deadline = s.statement_timeout + CLIENT_GRACE  # the session's default
        return conn

    def _connect_console(self) -> _WatchedConnection:
        """PgBouncer's admin console: only the startup parameters PgBouncer accepts (user,
        database, application_name; ``options=''`` so that a PGOPTIONS in the agent's
        environment is not sent either), autocommit (a BEGIN is an "invalid command"), no
        prepared statements, and the console cursor."""
        s = self.settings
        kwargs: dict[str, Any] = {
            "autocommit": True,
            "application_name": APPLICATION_NAME,
            "options": "",
            "connect_timeout": max(1, round(s.connect_timeout)),
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
            "row_factory": dict_row,
            "cursor_factory": _ConsoleCursor,
            "prepare_threshold": None,
        }
        password = self.config.resolve_password()
        if password is not None:
            kwargs["password"] = password
        conn = _WatchedConnection.connect(self.config.conninfo, **kwargs)
        conn.watchdog = self._watchdog
        conn.deadline = s.statement_timeout + CLIENT_GRACE
        return conn

    def _server_info(self, conn: psycopg.Connection[dict[str, Any]]) -> ServerInfo:
        """What the server is: PostgreSQL's version, role and extensions, or PgBouncer's
        version (``version_num`` 11800 for 1.18.0) for a pgbouncer target."""
        reported = conn.info.parameter_status("server_version") or ""
        if self.kind == PGBOUNCER:
            if not reported.endswith(_BOUNCER_SUFFIX):
                raise TargetUnavailable(Reason(
                    "wrong_target_type",
                    f"the server says it is {reported or 'unknown'}, not PgBouncer; a "
                    "pgbouncer target is PgBouncer's admin console (dbname pgbouncer): "
                    "fix the port, or drop type: pgbouncer for a PostgreSQL server"))
            row = conn.execute("SHOW VERSION").fetchone()
            version, number = _bouncer_version(str(row["version"]) if row else reported)
            return ServerInfo(version_num=number, version=version, in_recovery=False)
        if reported.endswith(_BOUNCER_SUFFIX):
            raise TargetUnavailable(Reason(
                "wrong_target_type",
                f"this is PgBouncer's admin console (PgBouncer "
                f"{reported.removesuffix(_BOUNCER_SUFFIX)}), not PostgreSQL: declare the "
                "target with type: pgbouncer"))
        row = conn.execute(_SERVER_INFO_SQL).fetchone()
        assert row is not None
        return ServerInfo(
            version_num=int(row["version_num"]),
            version=str(row["version"]).split()[0],
            in_recovery=bool(row["in_recovery"]),
            extensions=dict(row["extensions"]),
            database=str(row["database"]),
        )

    def _explain_connect(self, exc: BaseException) -> BaseException:
        """A connection failure with PgBouncer's side of the fix, where it has one."""
        if not isinstance(exc, psycopg.OperationalError) or exc.sqlstate:
            return exc
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hints = _CONSOLE_HINTS if self.kind == PGBOUNCER else (
            (_THROUGH_PGBOUNCER[0], "connection", _THROUGH_PGBOUNCER[1]),)
        for needle, code, fix in hints:
            if needle in text:
                return TargetUnavailable(Reason(code, f"{text}; {fix}"))
        return exc

    def _ensure_connected(self) -> psycopg.Connection[dict[str, Any]]:
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        self._drop()
        now = time.monotonic()
        if now < self._next_attempt and self.last_error is not None:
            raise TargetUnavailable(Reason(
                self.last_error.code,
                f"{self.last_error.text} (next reconnect in {self._next_attempt - now:.1f}s)",
            ))
        conn = None
        try:
            conn = self._connect()
            server = self._server_info(conn)
        except (psycopg.Error, OSError, TargetUnavailable) as exc:
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()
            self._mark_down(self._explain_connect(self._client_timeout(conn, exc)))
            raise TargetUnavailable(self.last_error or classify(exc)) from exc
        self.server = server
        with self._state_lock:
            self._conn = conn
        if self._failures or not self.up:
            log.info("connected", target=self.name, dsn=self.redacted, kind=self.kind,
                     server_version=self.server.version, in_recovery=self.server.in_recovery)
        self._failures = 0
        self.generation += 1
        self.up = True
        self.last_error = None
        return conn

    def _mark_down(self, exc: BaseException) -> None:
        reason = classify(exc)
        self._failures += 1
        ceiling = min(self.settings.backoff_max,
                      self.settings.backoff_initial * 2 ** (self._failures - 1))
        # full jitter between half and all of the ceiling: agents restarted together spread out
        delay = ceiling * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not cryptography
        self._next_attempt = time.monotonic() + delay
        if self.up or self.last_error is None or self.last_error.code != reason.code:
            log.warning("target_down", target=self.name, dsn=self.redacted, reason=reason.code,
                        error=reason.text, retry_in_s=round(delay, 1))
        self.up = False
        self.last_error = reason

    def _drop(self) -> None:
        with self._state_lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    # --- using ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self, timeout: float) -> Iterator[psycopg.Cursor[dict[str, Any]]]:
        """One short read-only transaction with ``statement_timeout`` set to ``timeout``.

        Every round trip to the server in it (each statement, BEGIN, COMMIT, savepoints)
        has a client-side deadline of ``timeout`` plus :data:`CLIENT_GRACE`; the sum of
        a collection's statements is not bounded here (the collector's options are
        validated to fit its schedule). The caller must hold ``self.lock``. A
        connection-level failure closes the connection and marks the target down; the
        next call reconnects (with backoff after repeated failures). Query errors
        propagate unchanged.

        On a pgbouncer target it is a console session instead: no transaction and no
        statement_timeout (the console has neither), the client-side deadline of
        ``timeout`` plus :data:`CLIENT_GRACE` on each command, a :class:`_ConsoleCursor`.
        """
        conn = self._ensure_connected()
        watched = conn if isinstance(conn, _WatchedConnection) else None
        session_deadline = watched.deadline if watched is not None else None
        if watched is not None:
            watched.deadline = timeout + CLIENT_GRACE
        try:
            if self.kind == PGBOUNCER:
                with conn.cursor() as cur:
                    yield cur
            else:
                with conn.transaction(), conn.cursor() as cur:
                    cur.execute("SELECT pg_catalog.set_config('statement_timeout', %s, true)",
                                [str(_ms(timeout))])
                    yield cur
        except psycopg.Error as exc:
            if conn.broken or conn.closed:  # the connection is gone, not just this query
                self._drop()
                failure = self._client_timeout(conn, exc)
                self._mark_down(failure)
                # a connection that worked until now gets one immediate retry
                if self._failures == 1:
                    self._next_attempt = 0.0
                if failure is not exc:
                    raise failure from exc
            raise
        finally:
            if watched is not None:
                watched.deadline = session_deadline

    def clock(self, cur: psycopg.Cursor[dict[str, Any]]) -> float:
        """The server's clock in seconds since the epoch, read in the collection's
        transaction (ages are computed on it); PgBouncer has none, so the agent's.

        The same statement re-reads whether the server is in recovery: a standby promoted
        (or a primary demoted) while the agent stays connected gets a new role in
        ``server``, and the plans made for the old role are made again."""
        if self.kind == PGBOUNCER:
            return time.time()
        cur.execute(_CLOCK_SQL)
        row = cur.fetchone()
        assert row is not None
        server = self.server
        if server is not None and bool(row["in_recovery"]) != server.in_recovery:
            self.server = dataclasses.replace(server, in_recovery=bool(row["in_recovery"]))
            self.generation += 1
            log.info("role_changed", target=self.name, in_recovery=self.server.in_recovery)
        return float(row["now"])

    @staticmethod
    def probe(cur: psycopg.Cursor[dict[str, Any]], query: SQLText,
              params: Mapping[str, Any] | Sequence[Any], timeout: float
              ) -> tuple[str, dict[str, Any] | None]:
        """Run one bounded, optional query inside the current transaction: in its own
        savepoint, under its own ``statement_timeout``, its failure contained.

        Returns (outcome, first row): outcome ``ok``, ``timeout`` (statement timeout),
        ``locked`` (lock timeout) or ``error`` (anything else the server refused, e.g. the
        relation was dropped meanwhile; the row is then its ``sqlstate``). A lost
        connection still raises.
        """
        try:
            with cur.connection.transaction():
                cur.execute("SELECT pg_catalog.set_config('statement_timeout', %s, true)",
                            [str(_ms(timeout))])
                cur.execute(query, params)
                row = cur.fetchone()
        except pgerrors.QueryCanceled:
            return "timeout", None
        except pgerrors.LockNotAvailable:
            return "locked", None
        except psycopg.Error as exc:
            if cur.connection.broken or cur.connection.closed:
                raise
            return "error", {"sqlstate": exc.sqlstate}  # e.g. 42501: permission denied
        return "ok", dict(row) if row is not None else None

    def _client_timeout(self, conn: psycopg.Connection[Any] | None, exc: BaseException
                        ) -> BaseException:
        """The failure to record: ``client_timeout`` when the watchdog closed ``conn``."""
        if conn is None or self._aborted is not conn:
            return exc
        return TargetUnavailable(Reason(
            "client_timeout",
            f"no answer from the server within {self._aborted_after:g}s for one statement "
            "(network stall?); closed the connection"))

    def _abort(self, conn: psycopg.Connection[Any], deadline: float) -> None:
        """Client-side deadline passed: shut the socket down so the blocked read returns."""
        self._aborted, self._aborted_after = conn, deadline
        log.warning("client_timeout", target=self.name, deadline_s=deadline)
        with contextlib.suppress(OSError, psycopg.Error):
            fd = conn.fileno()
            with socket.fromfd(fd, socket.AF_INET, socket.SOCK_STREAM) as duplicate:
                duplicate.shutdown(socket.SHUT_RDWR)

    def cancel(self) -> None:
        """Cancel the query in flight, if any (used at shutdown); safe from any thread."""
        with self._state_lock:
            conn = self._conn
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.cancel_safe(timeout=2.0)
        for other in list(self.databases.values()):
            other.cancel()

    def release(self) -> None:
        """Close the connection (and disarm its deadline) without marking the target
        down: a database's target between its collections."""
        self._drop()
        self._watchdog.close()

    def close(self) -> None:
        self._drop()
        self._watchdog.close()
        self.up = False
        for other in list(self.databases.values()):
            other.close()
