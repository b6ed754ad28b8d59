"""Errors the agent expects, and how a database error maps to a reason and its fix."""

from __future__ import annotations

import re
from dataclasses import dataclass

import psycopg
from psycopg import errors as pgerr


class HiwError(Exception):
    """Base of every error the agent expects and reports without a traceback."""


class ConfigError(HiwError):
    """A configuration problem: where it is, what is wrong, how to fix it. Exit code 2.

    Validation reports every problem it finds at once: ``also`` holds the others.
    """

    def __init__(
        self, path: str, problem: str, fix: str = "", also: tuple[ConfigError, ...] = ()
    ) -> None:
        self.path = path
        self.problem = problem
        self.fix = fix
        self.also = also
        self.source = ""  # the config file the problems are in, when there is one
        super().__init__(self.message)

    @property
    def line(self) -> str:
        where = f"{self.path}: " if self.path else ""
        return f"{where}{self.problem}" + (f" (fix: {self.fix})" if self.fix else "")

    @property
    def message(self) -> str:
        return "\n".join([self.line, *(other.line for other in self.also)])

    @classmethod
    def combine(cls, problems: list[ConfigError]) -> ConfigError:
        first, *rest = problems
        return cls(first.path, first.problem, first.fix, tuple(rest))


class ReasonedError(HiwError):
    """A failure that already knows its reason code and the fix to show."""

    def __init__(self, reason: Reason) -> None:
        self.reason = reason
        super().__init__(reason.text)


class TargetUnavailable(ReasonedError):  # noqa: N818 - a state, not a bug
    """The target has no usable connection right now (down, or waiting out a backoff)."""


@dataclass(frozen=True, slots=True)
class Reason:
    """Why a collection failed: a short stable code (a label value) and a human text."""

    code: str
    text: str


_BY_CLASS: tuple[tuple[type[psycopg.Error], str, str], ...] = (
    (pgerr.QueryCanceled, "timeout",
     "the query hit statement_timeout; raise the collector's timeout"),
    (pgerr.LockNotAvailable, "lock_timeout", "a lock was not granted within lock_timeout"),
    (pgerr.InsufficientPrivilege, "permission_denied",
     "grant pg_monitor and SELECT on the app tables to the monitoring role (see README)"),
    (pgerr.InvalidPassword, "auth_failed", "check the password (password_env / password_file)"),
    (pgerr.InvalidAuthorizationSpecification, "auth_failed",
     "check the user name and pg_hba.conf for this client"),
    (pgerr.UndefinedTable, "undefined_table", "the table or view is missing on this server"),
    (pgerr.UndefinedFunction, "undefined_function",
     "the function is missing; is the extension installed in this database?"),
    (pgerr.UndefinedColumn, "undefined_column", "a column is missing on this server version"),
    (pgerr.ObjectNotInPrerequisiteState, "not_ready",
     "a prerequisite is missing: for pg_stat_statements, add it to "
     "shared_preload_libraries and restart PostgreSQL"),
    (pgerr.TooManyConnections, "too_many_connections",
     "the server has no free connection slot; raise max_connections or free a slot"),
    (pgerr.CannotConnectNow, "starting_up", "the server is starting up or shutting down"),
    (pgerr.AdminShutdown, "connection", "the server terminated the connection"),
    (pgerr.InvalidCatalogName, "unknown_database", "the database does not exist; check dbname"),
    (pgerr.ReadOnlySqlTransaction, "read_only",
     "the statement writes or locks rows, and the agent's transactions are read-only: a "
     "collector's SQL may only read"),
    (pgerr.SyntaxError, "syntax_error", "fix the collector's SQL"),
)


# Data exceptions (SQLSTATE class 22) whose message never quotes a value.
_DATA_SAFE = (pgerr.DivisionByZero, pgerr.StringDataRightTruncation, pgerr.NullValueNotAllowed)


def classify(exc: BaseException) -> Reason:
    """Map an exception to a stable reason code and a one-line, secret-free explanation.

    Classification uses psycopg's SQLSTATE classes, never the message text.
    """
    for cls, code, fix in _BY_CLASS:
        if isinstance(exc, cls):
            return Reason(code, f"{_first_line(exc)}; {fix}")
    if isinstance(exc, ReasonedError):
        return exc.reason
    if isinstance(exc, psycopg.OperationalError):
        return _connect_failure(exc)
    if isinstance(exc, psycopg.DataError) and not isinstance(exc, _DATA_SAFE):
        # SQLSTATE class 22: "invalid input syntax for type integer: ...", "value ... is
        # out of range": the message may quote a row's value, kept out of logs and pages
        return Reason(f"sqlstate_{exc.sqlstate or 'unknown'}".lower(),
                      f"{type(exc).__name__} in the query (the server's message is not "
                      "shown: it may quote row values); check the query's casts")
    if isinstance(exc, psycopg.Error):
        sqlstate = getattr(exc, "sqlstate", None) or "unknown"
        return Reason(f"sqlstate_{sqlstate}".lower(), _first_line(exc))
    return Reason("internal", f"{type(exc).__name__}: {_first_line(exc)}")


# libpq reports no SQLSTATE for errors raised while connecting (psycopg's sqlstate is None),
# so these are told apart by the server's (English, libpq-prefixed) FATAL text. This is
# the one place that reads message text, and only to pick a hint: anything unmatched is
# still a plain "connection" failure with the full first line.
_CONNECT_HINTS: tuple[tuple[str, str, str], ...] = (
    ("password authentication failed", "auth_failed",
     "check the password (password_env / password_file) and the role name"),
    ("no pg_hba.conf entry", "auth_failed", "allow this client in pg_hba.conf"),
    ("does not exist", "unknown_database", "check dbname and user"),
    ("too many clients already", "too_many_connections",
     "the server has no free connection slot; raise max_connections or free a slot"),
    ("remaining connection slots are reserved", "too_many_connections",
     "the server has no free non-reserved slot; raise max_connections or free a slot"),
    ("the database system is starting up", "starting_up", "the server is starting; retrying"),
    ("the database system is shutting down", "starting_up", "the server is shutting down"),
    ("timeout expired", "connection", "no answer within connect_timeout; check network/host"),
)


def _connect_failure(exc: psycopg.OperationalError) -> Reason:
    text = _first_line(exc)
    for needle, code, fix in _CONNECT_HINTS:
        if needle in text:
            if needle == "password authentication failed":
                fix += _md5_under_scram(text)
            return Reason(code, f"{text}; {fix}")
    return Reason("connection", text)


_ROLE = re.compile(r'for user "(.*)"')  # the server writes the name unescaped


def _md5_under_scram(text: str) -> str:
    """The other cause of "password authentication failed" when the password is right.

    A role whose password is stored as an md5 hash cannot log in through a
    ``scram-sha-256`` line of pg_hba.conf. The server tells the client only that the
    password failed (the reason, "User ... does not have a valid SCRAM secret", goes to the
    server log alone), so the hint names it, with its fix. PostgreSQL 13 stores md5 by
    default (``password_encryption = md5``), and so does a role whose password was set
    before an upgrade or copied from an older server.
    """
    found = _ROLE.search(text)
    name = found.group(1) if found else "<role>"
    role = name if re.fullmatch(r"[a-z_][a-z0-9_$]*", name) else \
        '"' + name.replace('"', '""') + '"'
    return ("; if they are right, the role's password is stored as an md5 hash and "
            "pg_hba.conf asks for scram-sha-256 (md5 is PostgreSQL 13's default "
            "password_encryption; the server log says 'does not have a valid SCRAM secret'): "
            "as a superuser run SET password_encryption = 'scram-sha-256'; ALTER ROLE "
            f"{role} PASSWORD '...'; (or the role's VALID UNTIL has passed)")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
