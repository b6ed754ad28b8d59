"""errors.py: classification of failures and ConfigError formatting."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import errors as pgerr

from hiw_monitor.errors import ConfigError, Reason, TargetUnavailable, classify


@pytest.mark.parametrize(("exc_type", "code"), [
    (pgerr.QueryCanceled, "timeout"),
    (pgerr.LockNotAvailable, "lock_timeout"),
    (pgerr.InsufficientPrivilege, "permission_denied"),
    (pgerr.InvalidPassword, "auth_failed"),
    (pgerr.InvalidAuthorizationSpecification, "auth_failed"),
    (pgerr.UndefinedTable, "undefined_table"),
    (pgerr.UndefinedFunction, "undefined_function"),
    (pgerr.UndefinedColumn, "undefined_column"),
    (pgerr.ObjectNotInPrerequisiteState, "not_ready"),
    (pgerr.TooManyConnections, "too_many_connections"),
    (pgerr.CannotConnectNow, "starting_up"),
    (pgerr.AdminShutdown, "connection"),
    (pgerr.InvalidCatalogName, "unknown_database"),
])
def test_classify_by_sqlstate_class(exc_type, code):
    reason = classify(exc_type("first line of the server message\nDETAIL: more"))
    assert reason.code == code
    assert reason.text.startswith("first line of the server message; ")
    assert "DETAIL" not in reason.text
    assert len(reason.text) > len("first line of the server message; ")  # carries a fix


def test_specific_classes_win_over_their_psycopg_base():
    # QueryCanceled and TooManyConnections are OperationalErrors, yet keep their own code.
    assert issubclass(pgerr.QueryCanceled, psycopg.OperationalError)
    assert classify(pgerr.QueryCanceled("x")).code == "timeout"


def test_plain_operational_error_is_a_connection_problem():
    reason = classify(psycopg.OperationalError("connection refused\nIs the server running?"))
    assert reason == Reason("connection", "connection refused")


def test_other_database_errors_use_their_sqlstate():
    reason = classify(pgerr.DivisionByZero("division by zero"))
    assert reason.code == "sqlstate_" + pgerr.DivisionByZero.sqlstate.lower()
    assert reason.text == "division by zero"
    assert classify(psycopg.DatabaseError("odd")).code == "sqlstate_unknown"


def test_sqlstate_code_is_lower_case():
    # 55P03-like codes contain letters: the label value is normalised to lower case.
    class Custom(psycopg.DatabaseError):
        sqlstate = "XX00A"

    assert classify(Custom("boom")).code == "sqlstate_xx00a"


def test_target_unavailable_keeps_its_reason():
    reason = Reason("backoff", "waiting 4s before reconnecting")
    exc = TargetUnavailable(reason)
    assert classify(exc) is reason
    assert str(exc) == reason.text


def test_anything_else_is_internal_and_names_the_type():
    reason = classify(RuntimeError("bad state\ntraceback-ish detail"))
    assert reason.code == "internal"
    assert reason.text == "RuntimeError: bad state"
    assert classify(KeyError()).text == "KeyError: KeyError"


def test_config_error_message_with_and_without_fix():
    with_fix = ConfigError("targets[0].port", "'x' is not a port number", "write a number")
    assert with_fix.message == "targets[0].port: 'x' is not a port number (fix: write a number)"
    assert str(with_fix) == with_fix.message
    bare = ConfigError("listen", "is wrong")
    assert bare.message == "listen: is wrong"
    assert "fix" not in bare.message
    pathless = ConfigError("", "something", "do this")
    assert pathless.message == "something (fix: do this)"


def test_combine_keeps_every_problem_in_order():
    problems = [ConfigError("a", "one", "fix a"), ConfigError("b.c", "two"),
                ConfigError("d", "three", "fix d")]
    combined = ConfigError.combine(problems)
    assert (combined.path, combined.problem, combined.fix) == ("a", "one", "fix a")
    assert [p.path for p in combined.also] == ["b.c", "d"]
    assert str(combined).splitlines() == [p.line for p in problems]


def test_combine_of_one_is_that_problem():
    combined = ConfigError.combine([ConfigError("x", "bad", "good")])
    assert combined.also == ()
    assert str(combined) == "x: bad (fix: good)"


@pytest.mark.parametrize(("message", "code"), [
    ('connection to server at "db" (10.0.0.1), port 5432 failed: FATAL:  password '
     'authentication failed for user "mon"', "auth_failed"),
    ('connection to server at "db" failed: FATAL:  no pg_hba.conf entry for host "10.0.0.2"',
     "auth_failed"),
    ('connection to server at "db" failed: FATAL:  database "nope" does not exist',
     "unknown_database"),
    ('connection to server at "db" failed: FATAL:  sorry, too many clients already',
     "too_many_connections"),
    ('connection to server at "db" failed: FATAL:  remaining connection slots are reserved '
     'for roles with the SUPERUSER attribute', "too_many_connections"),
    ('connection to server at "db" failed: FATAL:  the database system is starting up',
     "starting_up"),
    ('connection to server at "db" failed: FATAL:  the database system is shutting down',
     "starting_up"),
    ('connection to server at "db" failed: timeout expired', "connection"),
    ('connection to server at "db" failed: Connection refused', "connection"),
])
def test_connect_failures_without_sqlstate(message, code):
    # libpq gives no SQLSTATE while connecting: the reason comes from the FATAL text.
    exc = psycopg.OperationalError(message + "\n\tIs the server running on that host?")
    assert exc.sqlstate is None
    reason = classify(exc)
    assert reason.code == code
    assert reason.text.startswith(message)
    assert "Is the server running" not in reason.text


def test_password_failure_names_the_md5_under_scram_cause_with_its_fix():
    # The server sends the same text for a wrong password and for a right one stored as an
    # md5 hash under a scram-sha-256 pg_hba.conf line (PostgreSQL 13's default): the hint
    # names both, and the second with the statements that fix it for this role.
    message = ('connection to server at "127.0.0.1", port 5432 failed: FATAL:  password '
               'authentication failed for user "hiw_monitor"')
    reason = classify(psycopg.OperationalError(message))
    assert reason.code == "auth_failed"
    assert reason.text.startswith(message + "; check the password")
    assert "md5" in reason.text
    assert "scram-sha-256" in reason.text
    assert "does not have a valid SCRAM secret" in reason.text
    assert ("SET password_encryption = 'scram-sha-256'; "
            "ALTER ROLE hiw_monitor PASSWORD '...';") in reason.text


@pytest.mark.parametrize(("user", "quoted"), [
    ("mon", "mon"),
    ("Mon", '"Mon"'),
    ('odd "name', '"odd ""name"'),
    ("with space", '"with space"'),
])
def test_the_fix_quotes_the_role_name_as_sql_needs(user, quoted):
    # the server writes the name unescaped between double quotes
    message = f'FATAL:  password authentication failed for user "{user}"'
    reason = classify(psycopg.OperationalError(message))
    assert f"ALTER ROLE {quoted} PASSWORD '...';" in reason.text


def test_other_auth_failures_do_not_mention_md5():
    reason = classify(psycopg.OperationalError(
        'FATAL:  no pg_hba.conf entry for host "10.0.0.2", user "mon"'))
    assert reason.code == "auth_failed"
    assert "md5" not in reason.text
